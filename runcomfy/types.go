// Package runcomfy is a typed client for the RunComfy Serverless API.
//
// It knows HTTP and RunComfy's JSON, and nothing of gRPC: callers decide what an
// upstream failure means for their own clients by matching the sentinel errors in
// errors.go with errors.Is. Every response variant that RunComfy is known to send is
// accepted (see RUNCOMFY_API.md in the design notes): both cancel shapes, both
// spellings of "cancelled", "completed" as success, errors as objects or arrays, and
// HTTP 200 answers that carry an error_code.
package runcomfy

import (
	"encoding/json"
	"strings"
	"time"
)

// State is the normalised lifecycle state of a request. Upstream sends free-form
// strings; State is what the rest of the gateway reasons about, while the raw string
// is kept beside it so nothing RunComfy said is lost.
type State int

// States in lifecycle order. The numeric order is the rank used to keep state
// monotonic: a request never moves from a higher rank to a lower one, and the three
// terminal states share the highest rank.
const (
	StateUnknown State = iota
	StateQueued
	StateRunning
	StateSucceeded
	StateFailed
	StateCancelled
)

// String returns a stable lower-case name, used in logs and test output.
func (s State) String() string {
	switch s {
	case StateQueued:
		return "queued"
	case StateRunning:
		return "running"
	case StateSucceeded:
		return "succeeded"
	case StateFailed:
		return "failed"
	case StateCancelled:
		return "cancelled"
	default:
		return "unknown"
	}
}

// Terminal reports whether no further change can follow this state.
func (s State) Terminal() bool {
	return s == StateSucceeded || s == StateFailed || s == StateCancelled
}

// ParseState maps an upstream status string to a State. Matching is
// case-insensitive and tolerant of surrounding space because upstream has used more
// than one spelling for the same state over time; unknown strings give StateUnknown
// rather than an error so a new upstream state never breaks a caller.
func ParseState(raw string) State {
	switch strings.ToLower(strings.TrimSpace(raw)) {
	case "in_queue", "queued", "pending":
		return StateQueued
	case "in_progress", "running":
		return StateRunning
	case "succeeded", "completed", "success":
		return StateSucceeded
	case "failed", "error":
		return StateFailed
	case "cancelled", "canceled":
		return StateCancelled
	default:
		return StateUnknown
	}
}

// SubmitOptions are the per-submit settings that travel in the query string.
type SubmitOptions struct {
	// WebhookURL, when set, asks RunComfy to POST status callbacks there.
	WebhookURL string
	// IntermediateStatus asks for queue and progress callbacks, not only the final one.
	IntermediateStatus bool
}

// SubmitResponse is RunComfy's answer to a submit.
type SubmitResponse struct {
	RequestID string
	StatusURL string
	ResultURL string
	CancelURL string
}

// StatusResponse is RunComfy's answer to a status query.
type StatusResponse struct {
	RequestID string
	// Status is the upstream string exactly as sent.
	Status string
	State  State
	// QueuePosition is nil when upstream did not send one (it does not once running).
	QueuePosition *int64
	InstanceID    string
	StatusURL     string
	ResultURL     string
}

// ResultResponse is RunComfy's answer to a result query.
type ResultResponse struct {
	RequestID string
	Status    string
	State     State
	// Outputs is the per-node structure as sent: {"<node id>": {"<channel>": [...]}}.
	// It is kept as raw JSON so node ids and channels that the gateway does not know
	// survive untouched. Nil when upstream sent none.
	Outputs json.RawMessage
	// OutputURLs is every "url" found anywhere in Outputs (or every string that is an
	// http(s) URL in a channel list), in document order.
	OutputURLs []string
	// Error is set when the job failed and upstream described why.
	Error      *JobError
	InstanceID string
	CreatedAt  time.Time
	StartedAt  time.Time
	FinishedAt time.Time
}

// JobError describes why a job failed, normalised from the several shapes upstream
// uses (type/message, or error/details/debugInfo/errorCode, alone or in an array).
type JobError struct {
	Type    string
	Message string
	// Code is the upstream error code as text, since it has been seen as a number and
	// as a string.
	Code string
}

// CancelOutcome is the normalised result of a cancel call.
type CancelOutcome int

// Cancel outcomes. Upstream has answered with "outcome", with "status", or with both.
const (
	CancelUnknown CancelOutcome = iota
	// CancelDone: the request is cancelled now (it was still queued).
	CancelDone
	// CancelRequested: cancellation was accepted and completes asynchronously; the
	// status turns cancelled later.
	CancelRequested
	// CancelNotCancellable: the request already finished or cannot be stopped.
	CancelNotCancellable
)

// CancelResponse is RunComfy's answer to a cancel.
type CancelResponse struct {
	RequestID string
	// Raw is the upstream outcome or status string exactly as sent.
	Raw     string
	Outcome CancelOutcome
}
