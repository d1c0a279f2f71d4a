package webhook_test

import (
	"net/http"
	"reflect"
	"testing"
	"time"

	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/webhook"
)

// tenantCallback POSTs body as JSON to the genuine callback URL of tenant's
// requests of depID ("" : the URL without a tenant).
func (h *harness) tenantCallback(t *testing.T, tenant string, body []byte) (int, string) {
	t.Helper()
	code, _, b := h.do(t, http.MethodPost, h.urls.CallbackURL(depID, tenant), "application/json", body)
	return code, b
}

// own records rid as submitted by tenant, the way Submit records it.
func (h *harness) own(t *testing.T, rid, tenant string) *state.Record {
	t.Helper()
	rec, outcome, err := h.tracker.Apply(t.Context(), state.Update{
		RequestID: rid, DeploymentID: depID, Source: "submit", State: runcomfy.StateQueued, Owner: tenant,
	})
	if err != nil || outcome != state.Applied {
		t.Fatalf("Apply(submit by %q) = %v, %v; want applied", tenant, outcome, err)
	}
	return rec
}

// TestHandlerTenantCallbacks: the tenant in a callback URL is the owner the
// callback claims. It applies to the tenant's own record, to a record nobody
// owns yet (which it then owns), and to a record lost from the store (which
// it creates again with its owner); it is refused, 403 and nothing changed,
// on another tenant's record. A URL without a tenant (handed out before
// tenants were carried) still applies and claims nothing.
func TestHandlerTenantCallbacks(t *testing.T) {
	t.Parallel()
	const rid = "req-owned"
	tests := []struct {
		name string
		// setup prepares the store.
		setup func(t *testing.T, h *harness)
		// tenant is the callback URL's.
		tenant      string
		wantCode    int
		wantOutcome string // on 200
		wantOwner   string // the record's owner afterwards
	}{
		{
			name:     "the owner's URL",
			setup:    func(t *testing.T, h *harness) { h.own(t, rid, "tenant-a") },
			tenant:   "tenant-a",
			wantCode: http.StatusOK, wantOutcome: "applied", wantOwner: "tenant-a",
		},
		{
			name:     "another tenant's URL",
			setup:    func(t *testing.T, h *harness) { h.own(t, rid, "tenant-a") },
			tenant:   "tenant-b",
			wantCode: http.StatusForbidden, wantOwner: "tenant-a",
		},
		{
			name:     "a URL without a tenant on an owned record",
			setup:    func(t *testing.T, h *harness) { h.own(t, rid, "tenant-a") },
			tenant:   "",
			wantCode: http.StatusOK, wantOutcome: "applied", wantOwner: "tenant-a",
		},
		{
			name:     "a record nobody owns",
			setup:    func(t *testing.T, h *harness) { h.own(t, rid, "") },
			tenant:   "tenant-a",
			wantCode: http.StatusOK, wantOutcome: "applied", wantOwner: "tenant-a",
		},
		{
			name:     "no record",
			setup:    func(*testing.T, *harness) {},
			tenant:   "tenant-a",
			wantCode: http.StatusOK, wantOutcome: "applied", wantOwner: "tenant-a",
		},
		{
			name: "a lost record",
			setup: func(t *testing.T, h *harness) {
				h.own(t, rid, "tenant-a")
				if err := h.backend.Delete(t.Context(), rid); err != nil {
					t.Fatal(err)
				}
				h.assertNotStored(t, rid)
			},
			tenant:   "tenant-a",
			wantCode: http.StatusOK, wantOutcome: "applied", wantOwner: "tenant-a",
		},
		{
			name: "a lost record, by a URL without a tenant",
			setup: func(t *testing.T, h *harness) {
				h.own(t, rid, "tenant-a")
				if err := h.backend.Delete(t.Context(), rid); err != nil {
					t.Fatal(err)
				}
			},
			tenant:   "",
			wantCode: http.StatusOK, wantOutcome: "applied", wantOwner: "",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			tt.setup(t, h)
			var before *state.Record
			if rec, err := h.tracker.Get(t.Context(), rid); err == nil {
				before = rec
			}
			statsBefore := h.handler.Stats()

			code, b := h.tenantCallback(t, tt.tenant, fixture(t, "02_in_progress.json", rid))
			if code != tt.wantCode {
				t.Fatalf("status = %d (%s), want %d", code, b, tt.wantCode)
			}
			after := h.get(t, rid)
			if after.Owner != tt.wantOwner {
				t.Errorf("owner = %q, want %q", after.Owner, tt.wantOwner)
			}
			stats := h.handler.Stats()
			if code != http.StatusOK {
				if !reflect.DeepEqual(after, before) {
					t.Errorf("record changed by a refused callback:\n%+v\nwas\n%+v", after, before)
				}
				if got := outcomeOf(t, b); got != "" {
					t.Errorf("refusal carries outcome %q", got)
				}
				if got := stats.Rejected[webhook.ReasonForeignOwner] - statsBefore.Rejected[webhook.ReasonForeignOwner]; got != 1 {
					t.Errorf("%s rejections moved by %d, want 1", webhook.ReasonForeignOwner, got)
				}
				if !reflect.DeepEqual(stats.Outcomes, statsBefore.Outcomes) {
					t.Errorf("outcomes moved on a refusal: %v, were %v", stats.Outcomes, statsBefore.Outcomes)
				}
				return
			}
			if got := outcomeOf(t, b); got != tt.wantOutcome {
				t.Errorf("outcome = %q, want %q", got, tt.wantOutcome)
			}
			if after.State != runcomfy.StateRunning || after.DeploymentID != depID {
				t.Errorf("record = %+v, want a running request of %s", after, depID)
			}
			if before != nil && after.Epoch != before.Epoch {
				t.Errorf("epoch = %d, want the record's %d", after.Epoch, before.Epoch)
			}
			if got := stats.Outcomes["applied"] - statsBefore.Outcomes["applied"]; got != 1 {
				t.Errorf("applied moved by %d, want 1", got)
			}
		})
	}
}

// TestHandlerForeignCallbackChangesNothing: every kind of callback through
// another tenant's URL, the terminal ones included, is refused with 403, and
// the owner's record, its watchers and its later callbacks are as if it had
// never come.
func TestHandlerForeignCallbackChangesNothing(t *testing.T) {
	t.Parallel()
	const rid = "req-foreign"
	h := newHarness(t)
	h.own(t, rid, "tenant-a")
	before := h.get(t, rid)
	hub, err := state.NewHub(h.backend, 0)
	if err != nil {
		t.Fatal(err)
	}
	w, err := hub.Watch(t.Context(), rid)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	fixtures := []string{"01_in_queue.json", "02_in_progress.json", "03_succeeded.json", "04_failed.json"}
	for _, name := range fixtures {
		code, b := h.tenantCallback(t, "tenant-b", fixture(t, name, rid))
		if code != http.StatusForbidden {
			t.Fatalf("%s through tenant-b's URL: status = %d (%s), want 403", name, code, b)
		}
	}
	if after := h.get(t, rid); !reflect.DeepEqual(after, before) {
		t.Errorf("record changed by another tenant's callbacks:\n%+v\nwas\n%+v", after, before)
	}
	if recs := nextWithin(t, w, 100*time.Millisecond); len(recs) != 0 {
		t.Errorf("watcher received %+v from refused callbacks", recs)
	}
	h.assertStats(t, nil, map[string]int64{webhook.ReasonForeignOwner: int64(len(fixtures))})

	// The owner's own callback still moves the request on, from where it was.
	code, b := h.tenantCallback(t, "tenant-a", fixture(t, "02_in_progress.json", rid))
	if code != http.StatusOK || outcomeOf(t, b) != "applied" {
		t.Fatalf("owner's callback: status = %d (%s), want 200 applied", code, b)
	}
	recs := next(t, w)
	if last := recs[len(recs)-1]; last.Seq != before.Seq+1 || last.State != runcomfy.StateRunning || last.Owner != "tenant-a" {
		t.Errorf("watcher got %+v, want tenant-a's running record at seq %d", last, before.Seq+1)
	}
}

// TestHandlerLostRecordKeepsItsOwner: a record lost from the store comes back
// with its owner at the next callback, under a new epoch, and a callback of
// another tenant after that is refused as before the loss.
func TestHandlerLostRecordKeepsItsOwner(t *testing.T) {
	t.Parallel()
	const rid = "req-lost"
	h := newHarness(t)
	h.own(t, rid, "tenant-b")
	h.mustTenantCallback(t, "tenant-b", fixture(t, "02_in_progress.json", rid))
	lost := h.get(t, rid)
	if err := h.backend.Delete(t.Context(), rid); err != nil {
		t.Fatal(err)
	}
	h.assertNotStored(t, rid)

	// The job finishes meanwhile; its callback recreates the record.
	h.mustTenantCallback(t, "tenant-b", fixture(t, "04_failed.json", rid))
	got := h.get(t, rid)
	if got.Owner != "tenant-b" || got.State != runcomfy.StateFailed || got.DeploymentID != depID {
		t.Errorf("recreated record = %+v, want tenant-b's failed request of %s", got, depID)
	}
	if got.Epoch == lost.Epoch {
		t.Errorf("recreated record has the lost one's epoch %d", got.Epoch)
	}
	code, b := h.tenantCallback(t, "tenant-a", fixture(t, "04_failed.json", rid))
	if code != http.StatusForbidden {
		t.Errorf("tenant-a's callback after the loss: status = %d (%s), want 403", code, b)
	}
	if after := h.get(t, rid); !reflect.DeepEqual(after, got) {
		t.Errorf("record changed by tenant-a's callback:\n%+v\nwas\n%+v", after, got)
	}
}

// mustTenantCallback posts through tenant's URL and insists on 200 applied.
func (h *harness) mustTenantCallback(t *testing.T, tenant string, body []byte) {
	t.Helper()
	code, b := h.tenantCallback(t, tenant, body)
	if code != http.StatusOK || outcomeOf(t, b) != "applied" {
		t.Fatalf("callback through %q's URL: status = %d (%s), want 200 applied", tenant, code, b)
	}
}
