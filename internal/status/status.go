// Package status is the one table of request states: each RunComfy state,
// its rank (what keeps a record from going backwards, in the tracker and in
// the Redis save script), the API status it is shown as, and the word the
// CLI prints. Adding a state is adding a row here; the package's test fails
// when a state of runcomfy or a status of the API has no row.
package status

import (
	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/runcomfy"
)

// Info is one row of the table.
type Info struct {
	State runcomfy.State
	Proto comfygatev1.Status
	// Rank orders states: a record only keeps or raises its rank, and the
	// final states share the top rank, so the first final state wins.
	Rank int
	// Word is the state in the CLI's output.
	Word string
}

// rows is the table. It is an array returned by value: the lookups below run
// on every save, and a constant-size copy costs no allocation.
func rows() [6]Info {
	return [6]Info{
		{runcomfy.StateUnknown, comfygatev1.Status_STATUS_UNKNOWN, 0, "unknown"},
		{runcomfy.StateQueued, comfygatev1.Status_STATUS_QUEUED, 1, "queued"},
		{runcomfy.StateRunning, comfygatev1.Status_STATUS_RUNNING, 2, "running"},
		{runcomfy.StateSucceeded, comfygatev1.Status_STATUS_SUCCEEDED, 3, "succeeded"},
		{runcomfy.StateFailed, comfygatev1.Status_STATUS_FAILED, 3, "failed"},
		{runcomfy.StateCancelled, comfygatev1.Status_STATUS_CANCELLED, 3, "cancelled"},
	}
}

// Table returns every row.
func Table() []Info {
	r := rows()
	return r[:]
}

// Of returns s's row; a state with none is unknown.
func Of(s runcomfy.State) Info {
	for _, i := range rows() {
		if i.State == s {
			return i
		}
	}
	return rows()[0]
}

// OfProto returns the row of an API status; one with none is unknown.
func OfProto(p comfygatev1.Status) Info {
	for _, i := range rows() {
		if i.Proto == p {
			return i
		}
	}
	return rows()[0]
}

// OfWord returns the row whose Word is word ("queued"), and whether there is
// one: the word is a user's (the CLI's flags, an SSE id).
func OfWord(word string) (Info, bool) {
	for _, i := range rows() {
		if i.Word == word {
			return i, true
		}
	}
	return Info{}, false
}

// Terminal reports whether no change can follow the row's state.
func (i Info) Terminal() bool { return i.State.Terminal() }
