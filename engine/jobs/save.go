package jobs

import (
	"encoding/json"
	"fmt"
	"log/slog"

	"github.com/sluicehq/sluice/engine/clock"
)

// Records reach the Store off the jobs' goroutines: a change queues the
// record as it is now (queueSave) and one writer goroutine per record
// writes the latest queued version, so that changes made while a write is
// in flight are coalesced into the next, and a record's writes (and its
// deletion) happen in order. A failed write is retried with backoff until
// it succeeds, something newer replaces it, or Close gives up. A job's run
// function, and so the GPU slot it holds, never waits for the Store.

// queueSave queues a write of the record as it is now. m.mu is held.
func (m *Manager) queueSave(r *record) {
	if r.evicted || (m.cfg.Store == nil && !r.journaled) {
		return
	}
	j := strip(r.job)
	r.pending = &j
	m.startWriter(r)
}

// queueForget queues the deletion of an evicted record, its result and its
// journal entry. m.mu is held.
func (m *Manager) queueForget(r *record) {
	if m.cfg.Store == nil && m.cfg.Results == nil && !r.journaled {
		return
	}
	r.pending, r.deleting = nil, true
	m.startWriter(r)
}

// startWriter starts the record's writer unless it runs. m.mu is held.
func (m *Manager) startWriter(r *record) {
	if r.writing {
		return
	}
	r.writing = true
	if m.writers == 0 {
		m.idle = make(chan struct{})
	}
	m.writers++
	go m.write(r)
}

// write is a record's writer: it writes what is queued until nothing is.
func (m *Manager) write(r *record) {
	wait := m.cfg.SaveRetry
	for {
		m.mu.Lock()
		j, del := r.pending, r.deleting
		if j == nil && !del {
			m.writerDone(r)
			m.mu.Unlock()
			return
		}
		r.pending, r.deleting = nil, false
		resultKey, journaled := r.job.resultKey, r.journaled
		m.mu.Unlock()

		err := m.writeOnce(r.id(), j, del, resultKey, journaled)
		if err == nil {
			wait = m.cfg.SaveRetry
			continue
		}
		m.mu.Lock()
		switch {
		case del:
			r.deleting = true
		case r.pending == nil && !r.deleting:
			r.pending = j // nothing newer: write this again
		}
		stop := m.stopWrites
		m.mu.Unlock()
		m.cfg.Logger.Warn("jobs: writing a job record failed; retrying (the job goes on)",
			slog.String("job", r.id()), slog.Duration("retry_in", wait), slog.Any("error", err))
		timer, cancel := clock.NewTimer(m.cfg.Clock, wait)
		select {
		case <-timer:
		case <-stop:
			cancel()
			m.mu.Lock()
			m.writerDone(r)
			m.mu.Unlock()
			return
		}
		wait = min(2*wait, m.cfg.SaveRetryMax)
	}
}

// writerDone marks the record's writer stopped. m.mu is held.
func (m *Manager) writerDone(r *record) {
	r.writing = false
	m.writers--
	if m.writers == 0 {
		close(m.idle)
	}
}

// writeOnce saves j, or deletes the stored record, its result and its
// journal entry. Once a final record is in the Store, the journal entry
// has served: it is deleted. Only the Store's error is returned (and
// retried); the others are logged.
func (m *Manager) writeOnce(id string, j *Job, del bool, resultKey string, journaled bool) error {
	if del {
		if m.cfg.Store != nil {
			if err := m.cfg.Store.Delete(id); err != nil {
				return fmt.Errorf("jobs: delete record %s: %w", id, err)
			}
		}
		if m.cfg.Results != nil && resultKey != "" {
			if err := m.cfg.Results.Delete(resultKey); err != nil {
				m.cfg.Logger.Error("jobs: deleting a result failed", slog.String("job", id), slog.Any("error", err))
			}
		}
		if journaled {
			m.dropJournal(id)
		}
		return nil
	}
	if m.cfg.Store != nil {
		if err := m.cfg.Store.Save(*j); err != nil {
			return fmt.Errorf("jobs: save record %s: %w", id, err)
		}
	}
	if journaled && j.State.Final() {
		m.dropJournal(id)
	}
	return nil
}

// dropJournal deletes job id's journal entry.
func (m *Manager) dropJournal(id string) {
	if err := m.cfg.Journal.DeleteInput(id); err != nil {
		m.cfg.Logger.Error("jobs: deleting a journal entry failed", slog.String("job", id), slog.Any("error", err))
	}
}

// journalEntry is a job's entry in the Journal: its record when it was
// submitted, and its input.
type journalEntry struct {
	Record json.RawMessage `json:"record"`
	Input  []byte          `json:"input,omitempty"`
}

// journal writes job j's entry.
func (m *Manager) journal(j Job, input []byte) error {
	rec, err := MarshalRecord(j)
	if err != nil {
		return fmt.Errorf("jobs: journal %s: %w", j.ID, err)
	}
	b, err := json.Marshal(journalEntry{Record: rec, Input: input})
	if err != nil {
		return fmt.Errorf("jobs: journal %s: %w", j.ID, err)
	}
	if err := m.cfg.Journal.PutInput(j.ID, b); err != nil {
		return fmt.Errorf("jobs: journal %s: %w", j.ID, err)
	}
	return nil
}

// readEntry decodes a journal entry.
func readEntry(b []byte) (Job, []byte, error) {
	var e journalEntry
	if err := json.Unmarshal(b, &e); err != nil {
		return Job{}, nil, fmt.Errorf("jobs: %w: journal entry: %w", ErrBadRecord, err)
	}
	j, err := UnmarshalRecord(e.Record)
	return j, e.Input, err
}
