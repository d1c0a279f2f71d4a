package webhook_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/state/memory"
	"github.com/comfygate/comfygate/webhook"
)

// countingStore is the memory backend counting the writes it accepted, so the
// fuzz target can tell whether a refused callback stored anything.
type countingStore struct {
	*memory.Backend
	saved atomic.Int64
}

func (s *countingStore) Save(ctx context.Context, rec *state.Record, ttl time.Duration) error {
	err := s.Backend.Save(ctx, rec, ttl)
	if err == nil {
		s.saved.Add(1)
	}
	return err
}

func statsTotal(s webhook.Stats) int64 {
	var n int64
	for _, v := range s.Outcomes {
		n += v
	}
	for _, v := range s.Rejected {
		n += v
	}
	return n
}

// FuzzHandler posts arbitrary bodies with a valid token through the real handler,
// tracker and simulator-backed result fetcher. Whatever the body: no panic, an
// answer of 200 (taken), 400 (refused as malformed) or 503 (could not be
// recorded: the success of a job upstream does not know), nothing stored unless
// the answer is 200 with outcome "applied", and exactly one counter moved.
func FuzzHandler(f *testing.F) {
	var store *countingStore
	h := newHarness(f, withStore(func(b *memory.Backend) state.Store {
		store = &countingStore{Backend: b}
		return store
	}))
	for _, name := range []string{"01_in_queue.json", "02_in_progress.json", "03_succeeded.json", "04_failed.json"} {
		tmpl := readFixture(f, name)
		f.Add(fill(tmpl, "req-fuzz", depID))
		f.Add([]byte(tmpl)) // placeholders left in: an illegal request id
	}
	for _, s := range []string{
		`{"request_id":"req-fuzz","status":"succeeded","outputs":{"9":{"images":[{"url":"https://x.example/a.png"}]},"38:42":{"text":[["c"]]}}}`,
		`{"request_id":"req-fuzz","status":"succeeded"}`,
		`{"request_id":"req-fuzz","outcome":"canceled","queue_position":"7"}`,
		`{"request_id":"req-fuzz","status":"failed","error":[{"type":"a"},"b",3,null]}`,
		`{"request_id":"req-fuzz","status":"exploded"}`,
		`{"request_id":"req-fuzz","queue_position":1e30}`,
		`{"request_id":"req-fuzz","created_at":"1700000000.5","status":"IN_QUEUE"}`,
		`{"request_id":"../x"}`,
		`{"request_id":"req-fuzz"}}`,
		`[]`,
		``,
	} {
		f.Add([]byte(s))
	}
	target := webhook.PathPrefix + depID + "/" + h.signer.Token(depID)

	f.Fuzz(func(t *testing.T, body []byte) {
		if len(body) > webhook.MaxBodyBytes {
			t.Skip("larger than the body limit: 413 is tested elsewhere")
		}
		savedBefore := store.saved.Load()
		statsBefore := h.handler.Stats()

		req := httptest.NewRequestWithContext(t.Context(), http.MethodPost, target, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.handler.ServeHTTP(rec, req)

		saved := store.saved.Load() - savedBefore
		var answer map[string]string
		if err := json.Unmarshal(rec.Body.Bytes(), &answer); err != nil {
			t.Fatalf("answer %q is not a JSON object of strings: %v", rec.Body.String(), err)
		}
		switch rec.Code {
		case http.StatusOK:
			switch outcome := answer["outcome"]; outcome {
			case "applied":
				if saved != 1 {
					t.Fatalf("applied with %d writes, want 1", saved)
				}
				cb, err := runcomfy.ParseCallback(body)
				if err != nil {
					t.Fatalf("applied a body ParseCallback refuses: %v", err)
				}
				got, err := h.tracker.Get(t.Context(), cb.RequestID)
				if err != nil {
					t.Fatalf("applied but Get(%q): %v", cb.RequestID, err)
				}
				if got.DeploymentID != depID {
					t.Fatalf("record deployment = %q, want the URL's %q", got.DeploymentID, depID)
				}
			case "duplicate", "stale", "unknown":
				if saved != 0 {
					t.Fatalf("outcome %s with %d writes, want 0", outcome, saved)
				}
			default:
				t.Fatalf("200 with outcome %q", outcome)
			}
		case http.StatusBadRequest, http.StatusServiceUnavailable:
			if saved != 0 {
				t.Fatalf("status %d with %d writes, want 0", rec.Code, saved)
			}
			if answer["error"] == "" {
				t.Fatalf("status %d without an error message: %q", rec.Code, rec.Body.String())
			}
		default:
			t.Fatalf("status = %d (%s), want 200, 400 or 503", rec.Code, rec.Body.String())
		}
		if moved := statsTotal(h.handler.Stats()) - statsTotal(statsBefore); moved != 1 {
			t.Fatalf("%d counters moved, want exactly 1", moved)
		}
	})
}
