package runcomfysim

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"time"

	"github.com/comfygate/comfygate/internal/backoff"
)

// callback is one webhook POST waiting to be delivered.
type callback struct {
	url       string
	body      []byte
	delay     time.Duration
	requestID string
	status    string
}

// emitLocked queues the callback for the job's current state, applying the callback
// faults active at this moment. Intermediate states are sent only when asked for.
func (s *Sim) emitLocked(j *job, terminal bool) {
	if j.webhook == "" || (!terminal && !j.intermediate) {
		return
	}
	f := &s.faults
	if f.DropCallbacks {
		s.dropped.Add(1)
		return
	}
	body, err := json.Marshal(s.callbackBodyLocked(j))
	if err != nil {
		// Only maps of strings and numbers are marshalled: this cannot happen.
		s.log.Error("runcomfysim: encode callback", "request_id", j.id, "err", err)
		return
	}
	cb := callback{
		url:       j.webhook,
		body:      body,
		delay:     f.CallbackDelay,
		requestID: j.id,
		status:    j.state.String(),
	}
	copies := 1 + max(f.DuplicateCallbacks, 0)
	if f.ReorderCallbacks {
		for range copies {
			j.held = append(j.held, cb)
		}
		if !terminal {
			return
		}
		slices.Reverse(j.held)
		j.outbox = append(j.outbox, j.held...)
		j.held = nil
	} else {
		// Callbacks held while reordering was on still go out, in order, first.
		j.outbox = append(j.outbox, j.held...)
		j.held = nil
		for range copies {
			j.outbox = append(j.outbox, cb)
		}
	}
	if !j.delivering {
		j.delivering = s.goLocked(func() { s.drain(j) })
	}
}

// drain delivers a job's callbacks one at a time, in queue order, until none is left.
// One drainer per job keeps deliveries of a job ordered (unless faults reorder them)
// and lets the goroutine exit as soon as the job has nothing to send.
func (s *Sim) drain(j *job) {
	for {
		s.mu.Lock()
		if len(j.outbox) == 0 || s.closed {
			j.outbox = nil
			j.delivering = false
			s.mu.Unlock()
			return
		}
		cb := j.outbox[0]
		j.outbox = j.outbox[1:]
		s.mu.Unlock()
		s.deliver(cb)
	}
}

// deliver posts one callback, retrying non-2xx answers with exponential backoff.
func (s *Sim) deliver(cb callback) {
	if !s.sleep(s.ctx, cb.delay) {
		s.failed.Add(1)
		return
	}
	pace := backoff.Exponential{Base: s.opts.CallbackBackoff}
	for attempt := 0; ; attempt++ {
		err := s.post(cb)
		if err == nil {
			s.delivered.Add(1)
			s.log.Debug("runcomfysim: callback delivered", "request_id", cb.requestID, "status", cb.status)
			return
		}
		if attempt >= s.opts.CallbackRetries || !s.sleep(s.ctx, pace.Delay(attempt)) {
			s.failed.Add(1)
			s.log.Debug("runcomfysim: callback abandoned", "request_id", cb.requestID, "status", cb.status, "err", err)
			return
		}
	}
}

// post makes one delivery attempt; any non-2xx answer is an error.
func (s *Sim) post(cb callback) error {
	s.attempts.Add(1)
	ctx, cancel := context.WithTimeout(s.ctx, s.opts.CallbackTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, cb.url, bytes.NewReader(cb.body))
	if err != nil {
		return fmt.Errorf("build callback request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "runcomfysim")
	resp, err := s.client.Do(req)
	if err != nil {
		return fmt.Errorf("post callback: %w", err)
	}
	// Drain a bounded amount so the connection can be reused.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("post callback: http %d", resp.StatusCode)
	}
	return nil
}
