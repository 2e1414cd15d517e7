package etcd

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sluicehq/sluice/engine/jobs"
)

// JobStore keeps async job records in etcd, one JSON value per job at
// <prefix>/jobs/<id> (the encoding of jobs.MarshalRecord). Each call is
// bounded by its timeout. The record of a finished job is written under a
// lease of its retention (see WithRetention), so that etcd deletes it
// itself when the retention has passed: months of jobs leave no pile of
// keys, and no sweep of deletes is needed.
type JobStore struct {
	c         *clientv3.Client
	prefix    string
	timeout   time.Duration
	retention time.Duration

	mu         sync.Mutex
	lease      clientv3.LeaseID // shared by the finished records of a while
	leaseUntil time.Time        // when a new lease is taken
}

// DefaultJobRetention is how long a finished job's record is kept.
const DefaultJobRetention = 24 * time.Hour

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
	return &JobStore{c: c, prefix: strings.TrimSuffix(prefix, "/") + "/jobs/", timeout: timeout, retention: DefaultJobRetention}
}

// WithRetention sets how long finished jobs' records are kept (default
// DefaultJobRetention; at least 2s, etcd's shortest lease); call it
// before the store is used. A record lives between d and d + d/16: the
// records finished within d/16 of each other share one lease.
func (s *JobStore) WithRetention(d time.Duration) *JobStore {
	s.retention = max(d, 2*time.Second)
	return s
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
	var opts []clientv3.OpOption
	if j.State.Final() {
		lease, err := s.finishedLease(ctx)
		if err != nil {
			return err
		}
		opts = append(opts, clientv3.WithLease(lease))
	}
	if _, err := s.c.Put(ctx, s.Key(j.ID), string(b), opts...); err != nil {
		return fmt.Errorf("etcd: put %s: %w", s.Key(j.ID), err)
	}
	return nil
}

// finishedLease returns the lease finished records are written under now,
// granting a new one once the current one is d/16 old.
func (s *JobStore) finishedLease(ctx context.Context) (clientv3.LeaseID, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if s.lease != 0 && now.Before(s.leaseUntil) {
		return s.lease, nil
	}
	// Records written under it within d/16 of the grant live d to d + d/16.
	ttl := int64(math.Ceil((s.retention + s.retention/16).Seconds()))
	resp, err := s.c.Grant(ctx, ttl)
	if err != nil {
		return 0, fmt.Errorf("etcd: lease for finished job records: %w", err)
	}
	s.lease, s.leaseUntil = resp.ID, now.Add(s.retention/16)
	return s.lease, nil
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
