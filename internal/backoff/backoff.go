// Package backoff is the one doubling delay every retry loop of the project
// waits by: RunComfy calls, the simulator's callbacks, a submit waiting for
// the one before it with the same idempotency key, the CLI reconnecting.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Exponential doubles from Base with each attempt, up to Max (none when
// zero). With Jitter, each delay is drawn at random from (0, delay]: many
// clients retrying at once then spread out instead of arriving in lockstep.
type Exponential struct {
	Base, Max time.Duration
	Jitter    bool
}

// Delay is the wait before retry attempt (0 for the first retry).
func (e Exponential) Delay(attempt int) time.Duration {
	d := e.Base << min(max(attempt, 0), 30)
	if d <= 0 || (e.Max > 0 && d > e.Max) {
		// Past Max, or so large that the shift overflowed.
		d = e.Max
		if d <= 0 {
			d = e.Base << 30
		}
	}
	if e.Jitter && d > 0 {
		return time.Duration(rand.Int64N(int64(d)) + 1)
	}
	return d
}
