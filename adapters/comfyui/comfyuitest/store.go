package comfyuitest

import (
	"bytes"
	"path"
	"slices"
	"strings"
	"sync"
	"time"
)

// files is the fake's input, output and temp folders, in memory. Each folder
// keeps at most maxFolderBytes; the oldest files go first.
type files struct {
	mu      sync.Mutex
	byKey   map[string]*file // "type/subfolder/name"
	order   []string
	size    map[string]int // bytes per folder type
	counter map[string]int // SaveImage counters by "type/subfolder/prefix"
}

type file struct {
	data    []byte
	modTime time.Time
}

const maxFolderBytes = 256 << 20

var folderTypes = []string{"input", "output", "temp"}

func newFiles() *files {
	return &files{byKey: map[string]*file{}, size: map[string]int{}, counter: map[string]int{}}
}

// key joins a folder type and a relative path; ok is false when the path
// leaves the folder.
func key(typ, rel string) (string, bool) {
	if !slices.Contains(folderTypes, typ) || strings.HasPrefix(rel, "/") || strings.Contains(rel, "\\") {
		return "", false
	}
	clean := path.Clean(rel)
	if clean == "." || !within(clean) {
		return "", false
	}
	return typ + "/" + clean, true
}

// within reports whether subfolder stays inside its folder (os.path.commonpath
// in ComfyUI).
func within(subfolder string) bool {
	if strings.HasPrefix(subfolder, "/") {
		return false
	}
	c := path.Clean(subfolder)
	return c != ".." && !strings.HasPrefix(c, "../")
}

func (f *files) get(typ, rel string) ([]byte, bool) {
	k, ok := key(typ, rel)
	if !ok {
		return nil, false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	fl, ok := f.byKey[k]
	if !ok {
		return nil, false
	}
	return fl.data, true
}

func (f *files) exists(typ, rel string) bool {
	_, ok := f.get(typ, rel)
	return ok
}

func (f *files) put(typ, rel string, data []byte) {
	k, ok := key(typ, rel)
	if !ok {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if old, ok := f.byKey[k]; ok {
		f.size[typ] -= len(old.data)
		f.order = slices.DeleteFunc(f.order, func(s string) bool { return s == k })
	}
	f.byKey[k] = &file{data: data, modTime: time.Now()}
	f.order = append(f.order, k)
	f.size[typ] += len(data)
	for f.size[typ] > maxFolderBytes {
		i := slices.IndexFunc(f.order, func(s string) bool { return strings.HasPrefix(s, typ+"/") })
		if i < 0 || f.order[i] == k {
			break
		}
		f.size[typ] -= len(f.byKey[f.order[i]].data)
		delete(f.byKey, f.order[i])
		f.order = slices.Delete(f.order, i, i+1)
	}
}

// list returns the paths in folder typ, oldest write first.
func (f *files) list(typ string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, k := range f.order {
		if rel, ok := strings.CutPrefix(k, typ+"/"); ok {
			out = append(out, rel)
		}
	}
	return out
}

// same reports whether the file holds exactly data.
func (f *files) same(typ, rel string, data []byte) bool {
	old, ok := f.get(typ, rel)
	return ok && bytes.Equal(old, data)
}

// next returns SaveImage's next counter for a prefix.
func (f *files) next(typ, subfolder, prefix string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := typ + "/" + subfolder + "/" + prefix
	f.counter[k]++
	return f.counter[k]
}

// lookupAnnotated finds a file as LoadImage names it: "subfolder/name",
// optionally annotated " [output]" or " [temp]" (default input).
func (f *files) lookupAnnotated(name string) ([]byte, bool) {
	rel, typ := annotated(name)
	if rel == "" || typ == "" {
		return nil, false
	}
	return f.get(typ, rel)
}

// annotated splits ComfyUI's "name [type]" annotation; typ is "input" when
// there is none.
func annotated(name string) (rel, typ string) {
	rel, typ = splitAnnotation(name)
	if typ == "" {
		typ = "input"
	}
	return rel, typ
}

// splitAnnotation splits "name [type]"; typ is empty when there is none.
func splitAnnotation(name string) (rel, typ string) {
	for _, t := range folderTypes {
		if s, ok := strings.CutSuffix(name, " ["+t+"]"); ok {
			return s, t
		}
	}
	return name, ""
}
