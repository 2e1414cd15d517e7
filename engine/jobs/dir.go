package jobs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/uuid"
)

// DirResults is a ResultStore and a Journal on a folder: one file per
// job, named by its ID (a UUID; anything else is refused), with the
// content type in a second file beside it, and the journal entry of each
// unfinished job in a third (ID.input). Each file is written to a temporary file and
// renamed into place, so a reader never sees half a result.
type DirResults struct{ dir string }

var (
	_ ResultStore = (*DirResults)(nil)
	_ Journal     = (*DirResults)(nil)
)

// inputSuffix ends the names of journal entries (see Journal): a job's
// input and first record, kept beside the results until the job ends.
const inputSuffix = ".input"

// NewDirResults makes dir if need be and returns a store on it.
func NewDirResults(dir string) (*DirResults, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("jobs: results folder: %w", err)
	}
	return &DirResults{dir: dir}, nil
}

func (d *DirResults) paths(id string) (data, ctype string, err error) {
	u, err := uuid.Parse(id)
	if err != nil || u.String() != id {
		return "", "", fmt.Errorf("jobs: result id %q: not a UUID", id)
	}
	p := filepath.Join(d.dir, id)
	return p, p + ".type", nil
}

// Put writes the result of job id, replacing any.
func (d *DirResults) Put(id string, data []byte, contentType string) error {
	dp, tp, err := d.paths(id)
	if err != nil {
		return err
	}
	if err := writeAtomic(tp, []byte(contentType)); err != nil {
		return err
	}
	return writeAtomic(dp, data)
}

// Get reads the result of job id; a missing one wraps ErrNotFound.
func (d *DirResults) Get(id string) ([]byte, string, error) {
	dp, tp, err := d.paths(id)
	if err != nil {
		return nil, "", err
	}
	data, err := os.ReadFile(dp)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, "", fmt.Errorf("%w: result of %s", ErrNotFound, id)
	}
	if err != nil {
		return nil, "", fmt.Errorf("jobs: result: %w", err)
	}
	ct, err := os.ReadFile(tp)
	if err != nil {
		return nil, "", fmt.Errorf("jobs: result type: %w", err)
	}
	return data, string(ct), nil
}

// Delete removes the result of job id; a missing one is no error.
func (d *DirResults) Delete(id string) error {
	dp, tp, err := d.paths(id)
	if err != nil {
		return err
	}
	for _, p := range []string{dp, tp} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("jobs: result: %w", err)
		}
	}
	return nil
}

// PutInput writes job id's journal entry, synced to disk before it
// returns.
func (d *DirResults) PutInput(id string, entry []byte) error {
	dp, _, err := d.paths(id)
	if err != nil {
		return err
	}
	return writeAtomic(dp+inputSuffix, entry)
}

// Inputs reads every journal entry, by job ID.
func (d *DirResults) Inputs() (map[string][]byte, error) {
	names, err := filepath.Glob(filepath.Join(d.dir, "*"+inputSuffix))
	if err != nil {
		return nil, fmt.Errorf("jobs: journal: %w", err)
	}
	out := make(map[string][]byte, len(names))
	for _, p := range names {
		id := strings.TrimSuffix(filepath.Base(p), inputSuffix)
		if _, _, err := d.paths(id); err != nil {
			continue // not ours
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("jobs: journal: %w", err)
		}
		out[id] = b
	}
	return out, nil
}

// DeleteInput removes job id's journal entry; a missing one is no error.
func (d *DirResults) DeleteInput(id string) error {
	dp, _, err := d.paths(id)
	if err != nil {
		return err
	}
	if err := os.Remove(dp + inputSuffix); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("jobs: journal: %w", err)
	}
	return nil
}

// writeAtomic writes data to a temporary file in path's folder, syncs it,
// and renames it to path.
func writeAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return fmt.Errorf("jobs: result: %w", err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("jobs: result: %w", err)
	}
	return nil
}
