package etcd

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sluicehq/sluice/engine/jobs"
)

// JobStore keeps async job records in etcd, one JSON value per job at
// <prefix>/jobs/<id> (the encoding of jobs.MarshalRecord). Each call is
// bounded by its timeout.
type JobStore struct {
	c       *clientv3.Client
	prefix  string
	timeout time.Duration
}

var _ jobs.Store = (*JobStore)(nil)

// NewJobStore uses c under prefix (DefaultPrefix when empty); timeout
// bounds each call (default 5s).
func NewJobStore(c *clientv3.Client, prefix string, timeout time.Duration) *JobStore {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	return &JobStore{c: c, prefix: strings.TrimSuffix(prefix, "/") + "/jobs/", timeout: timeout}
}

// Key is the etcd key of job id's record.
func (s *JobStore) Key(id string) string { return s.prefix + id }

// Save writes the job's record.
func (s *JobStore) Save(j jobs.Job) error {
	b, err := jobs.MarshalRecord(j)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	if _, err := s.c.Put(ctx, s.Key(j.ID), string(b)); err != nil {
		return fmt.Errorf("etcd: put %s: %w", s.Key(j.ID), err)
	}
	return nil
}

// Load lists every job record. Records that do not decode are left out and
// named, by key, in the error, which wraps jobs.ErrBadRecord: the others
// are returned all the same.
func (s *JobStore) Load() ([]jobs.Job, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	resp, err := s.c.Get(ctx, s.prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("etcd: list %s: %w", s.prefix, err)
	}
	out := make([]jobs.Job, 0, len(resp.Kvs))
	var bad []error
	for _, kv := range resp.Kvs {
		j, err := jobs.UnmarshalRecord(kv.Value)
		if err != nil {
			bad = append(bad, fmt.Errorf("etcd: %s: %w", kv.Key, err))
			continue
		}
		out = append(out, j)
	}
	return out, errors.Join(bad...)
}

// Delete removes job id's record; a missing one is no error.
func (s *JobStore) Delete(id string) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	if _, err := s.c.Delete(ctx, s.Key(id)); err != nil {
		return fmt.Errorf("etcd: delete %s: %w", s.Key(id), err)
	}
	return nil
}
