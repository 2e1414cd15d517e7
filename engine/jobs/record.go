package jobs

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/sluicehq/sluice/engine/tenant"
)

// storedJob is a job's record as a Store keeps it: everything but the
// result bytes, which the ResultStore keeps under ResultKey.
type storedJob struct {
	ID          string    `json:"id"`
	Tenant      string    `json:"tenant"`
	Origin      string    `json:"origin,omitempty"`
	Tier        string    `json:"tier,omitempty"`
	Resource    string    `json:"resource"`
	Params      Params    `json:"params"`
	Webhook     string    `json:"webhook,omitempty"`
	Backend     string    `json:"backend,omitempty"`
	PromptID    string    `json:"prompt_id,omitempty"`
	State       State     `json:"state"`
	Created     time.Time `json:"created"`
	Started     time.Time `json:"started,omitzero"`
	Finished    time.Time `json:"finished,omitzero"`
	Progress    Progress  `json:"progress"`
	Error       string    `json:"error,omitempty"`
	ContentType string    `json:"content_type,omitempty"`
	ResultKey   string    `json:"result_key,omitempty"`
	// Ticket is the job's quota charge, refunded if it fails.
	Ticket *tenant.Ticket `json:"ticket,omitempty"`
}

// MarshalRecord encodes a job's record for a Store, as JSON: all of it
// but its result bytes, with where the ResultStore keeps them.
func MarshalRecord(j Job) ([]byte, error) {
	var ticket *tenant.Ticket
	if j.Ticket.Units > 0 {
		ticket = &j.Ticket
	}
	return json.Marshal(storedJob{
		ID: j.ID, Tenant: j.Tenant, Origin: j.Origin, Tier: j.Tier, Ticket: ticket, Resource: j.Resource, Params: j.Params, Webhook: j.Webhook,
		Backend: j.Backend, PromptID: j.PromptID, State: j.State,
		Created: j.Created, Started: j.Started, Finished: j.Finished, Progress: j.Progress,
		Error: j.Error, ContentType: j.ContentType, ResultKey: j.resultKey,
	})
}

// ErrBadRecord is wrapped by the errors of records that cannot be read.
// A Store's Load that meets some returns the others with an error wrapping
// it, and Restore logs that error and restores the others.
var ErrBadRecord = errors.New("unreadable job record")

// UnmarshalRecord decodes what MarshalRecord encoded; its errors wrap
// ErrBadRecord.
func UnmarshalRecord(b []byte) (Job, error) {
	var s storedJob
	if err := json.Unmarshal(b, &s); err != nil {
		return Job{}, fmt.Errorf("jobs: %w: %w", ErrBadRecord, err)
	}
	if s.ID == "" {
		return Job{}, fmt.Errorf("jobs: %w: no id", ErrBadRecord)
	}
	switch s.State {
	case Queued, Submitted, Running, Succeeded, Failed, Cancelled:
	default:
		return Job{}, fmt.Errorf("jobs: %w %s: unknown state %q", ErrBadRecord, s.ID, s.State)
	}
	var ticket tenant.Ticket
	if s.Ticket != nil {
		ticket = *s.Ticket
	}
	return Job{
		ID: s.ID, Tenant: s.Tenant, Origin: s.Origin, Tier: s.Tier, Ticket: ticket, Resource: s.Resource, Params: s.Params, Webhook: s.Webhook,
		Backend: s.Backend, PromptID: s.PromptID, State: s.State,
		Created: s.Created, Started: s.Started, Finished: s.Finished, Progress: s.Progress,
		Error: s.Error, ContentType: s.ContentType, resultKey: s.ResultKey,
	}, nil
}
