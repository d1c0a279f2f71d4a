package state

import (
	"slices"
	"time"

	"github.com/comfygate/comfygate/runcomfy"
)

// StorageState is where the copy of a request's outputs to the operator's
// object storage stands.
type StorageState string

// The storage states. Pending moves to Stored or Failed, and those are final.
const (
	StoragePending StorageState = "pending"
	StorageStored  StorageState = "stored"
	StorageFailed  StorageState = "failed"
)

// StoredObject is one output file kept in the object storage.
type StoredObject struct {
	// Node and File name the output in RunComfy's per-node outputs.
	Node string `json:"node"`
	File string `json:"file"`
	// Key is the object's key in the bucket.
	Key         string `json:"key"`
	Size        int64  `json:"size"`
	ContentType string `json:"content_type,omitempty"`
	// SHA256 is the hex digest of the object's bytes.
	SHA256 string `json:"sha256"`
}

// Storage is the copy of a succeeded request's outputs: whether it is done,
// the objects it made, and the last failure, which callers see while it is
// retried.
type Storage struct {
	State   StorageState   `json:"state"`
	Objects []StoredObject `json:"objects,omitempty"`
	// Error is the last attempt's failure; empty once stored.
	Error string `json:"error,omitempty"`
	// Attempts counts the copies tried.
	Attempts int `json:"attempts,omitempty"`
	// FirstAttempt starts the copy's retry horizon.
	FirstAttempt time.Time `json:"first_attempt,omitzero"`
}

// Clone returns a deep copy.
func (s *Storage) Clone() *Storage {
	if s == nil {
		return nil
	}
	c := *s
	c.Objects = slices.Clone(s.Objects)
	return &c
}

// storageChange reports whether u, the copier's report, changes r's
// storage: only on a succeeded request, and only forward: a pending copy
// takes a later attempt's report or its end; an ended one stays.
func storageChange(r *Record, u *Update) bool {
	if u.Source != SourceStorage || u.Storage == nil || r.State != runcomfy.StateSucceeded {
		return false
	}
	cur, next := r.Storage, u.Storage
	switch {
	case cur == nil:
		return true
	case cur.State != StoragePending:
		return false
	case next.State != StoragePending:
		return true
	}
	return next.Attempts > cur.Attempts
}

// storageKinds are the event kinds a storage change makes: its end is
// news to whoever follows the outputs or the request's end (the objects'
// URLs are the ones to keep).
func storageKinds(prev, next *Record) EventKind {
	if next.Storage == nil || next.Storage.State == StoragePending {
		return 0
	}
	if prev != nil && prev.Storage != nil && prev.Storage.State == next.Storage.State {
		return 0
	}
	return KindOutput | KindTerminal
}
