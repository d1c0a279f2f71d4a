package hooks_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/comfygate/comfygate/hooks"
	"github.com/comfygate/comfygate/internal/redistest"
	"github.com/comfygate/comfygate/internal/webhooktest"
	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/state/memory"
	"github.com/comfygate/comfygate/state/redisstore"
)

// waitTimeout bounds every wait of these tests for something to happen; it
// is a deadline for a failure, never a time the tests count on passing.
const waitTimeout = 15 * time.Second

// notifier wakes waiters whenever something they may be waiting for
// happened: a receiver got a request, a delivery was written.
type notifier struct {
	mu sync.Mutex
	ch chan struct{}
}

func newNotifier() *notifier { return &notifier{ch: make(chan struct{})} }

func (n *notifier) signal() {
	n.mu.Lock()
	defer n.mu.Unlock()
	close(n.ch)
	n.ch = make(chan struct{})
}

func (n *notifier) changed() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.ch
}

// waitUntil returns once cond holds, checking it again after every signal
// of n; it fails the test when cond does not hold within waitTimeout.
func waitUntil(t *testing.T, n *notifier, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for {
		ch := n.changed() // before the check, so no signal falls in between
		if cond() {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// watchedOutbox is a real outbox that signals every delivery written and
// every lease released.
type watchedOutbox struct {
	state.Outbox
	n *notifier
}

func (w watchedOutbox) PutDelivery(ctx context.Context, requestID string, d *state.Delivery, ttl time.Duration) error {
	defer w.n.signal()
	return w.Outbox.PutDelivery(ctx, requestID, d, ttl)
}

func (w watchedOutbox) ReleaseOutbox(ctx context.Context, requestID, owner string) error {
	defer w.n.signal()
	return w.Outbox.ReleaseOutbox(ctx, requestID, owner)
}

// hit is one request a receiver got, and the status it answered.
type hit struct {
	path   string
	header http.Header
	body   []byte
	at     time.Time
	status int
}

func (h hit) id() string { return h.header.Get(hooks.HeaderID) }

// answerFunc decides a receiver's answer to a request: tries counts the
// requests with this webhook-id on this path, this one included.
type answerFunc func(h hit, tries int) (status int, header http.Header)

func always(status int) answerFunc {
	return func(hit, int) (int, http.Header) { return status, nil }
}

// receiver is a tenant's webhook receiver on a real listener.
type receiver struct {
	srv    *httptest.Server
	n      *notifier
	answer answerFunc
	mu     sync.Mutex
	hits   []hit
}

func newReceiver(t *testing.T, n *notifier, answer answerFunc) *receiver {
	t.Helper()
	r := &receiver{n: n, answer: answer}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	h := hit{path: req.URL.Path, header: req.Header.Clone(), body: body, at: time.Now()}
	r.mu.Lock()
	tries := 1
	for _, o := range r.hits {
		if o.path == h.path && o.id() == h.id() {
			tries++
		}
	}
	r.mu.Unlock()
	status, header := r.answer(h, tries)
	h.status = status
	r.mu.Lock()
	r.hits = append(r.hits, h)
	r.mu.Unlock()
	defer r.n.signal()
	for k, vs := range header {
		for _, v := range vs {
			w.Header().Add(k, v)
		}
	}
	w.WriteHeader(status)
}

func (r *receiver) url(path string) string { return r.srv.URL + path }

// got returns the hits so far on path ("" for all).
func (r *receiver) got(path string) []hit {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []hit
	for _, h := range r.hits {
		if path == "" || h.path == path {
			out = append(out, h)
		}
	}
	return out
}

func ids(hs []hit) []string {
	out := make([]string, len(hs))
	for i, h := range hs {
		out[i] = h.id()
	}
	return out
}

// secretBook holds the tenants' active secrets; tests change them while
// deliverers run.
type secretBook struct {
	mu sync.Mutex
	m  map[string][]hooks.Secret
}

func (b *secretBook) set(tenant string, secrets ...hooks.Secret) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m == nil {
		b.m = make(map[string][]hooks.Secret)
	}
	b.m[tenant] = secrets
}

func (b *secretBook) get(tenant string) []hooks.Secret {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.m[tenant])
}

func render(ev *state.Event) ([]byte, error) { return json.Marshal(ev) }

const tenant = "team-a"

// harness is an outbox, the tenants' secrets and a guarded client allowed to
// reach loopback receivers; start runs deliverers on them.
type harness struct {
	t       *testing.T
	store   state.Outbox // the outbox itself, for the test's own calls
	box     watchedOutbox
	n       *notifier
	client  *http.Client
	secrets *secretBook
}

func newHarness(t *testing.T, store state.Outbox) *harness {
	t.Helper()
	client, err := hooks.NewGuardedClient(hooks.GuardConfig{AllowPrivate: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(client.CloseIdleConnections)
	n := newNotifier()
	h := &harness{t: t, store: store, box: watchedOutbox{Outbox: store, n: n}, n: n, client: client, secrets: &secretBook{}}
	h.secrets.set(tenant, mustNew(t))
	return h
}

func newMemoryHarness(t *testing.T) *harness {
	t.Helper()
	return newHarness(t, memory.New(time.Now))
}

// config is the tests' deliverer config: quick retries, a short horizon's
// worth of nothing (24h), logs in the test's output.
func (h *harness) config(consumer string) hooks.Config {
	return hooks.Config{
		Outbox: h.box, Client: h.client, Secrets: h.secrets.get, Render: render, Consumer: consumer,
		Timeout: 2 * time.Second, RetryMin: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(h.t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

// start runs a deliverer until the test ends; the test's cleanup waits for
// Run to return, so no goroutine of it outlives the test.
func (h *harness) start(cfg hooks.Config) *hooks.Deliverer {
	h.t.Helper()
	d, err := hooks.New(cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	h.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			h.t.Errorf("Run = %v, want nil after cancel", err)
		}
	})
	return d
}

// saveEvents records n changes of request rid whose webhooks go to
// targets, each queueing an event, and returns the events in order.
func saveEvents(t *testing.T, store state.Outbox, rid string, targets []string, n int) []*state.Event {
	t.Helper()
	var hooksTo []state.WebhookTarget
	for _, u := range targets {
		hooksTo = append(hooksTo, state.WebhookTarget{URL: u, Kinds: state.KindQueued | state.KindRunning | state.KindOutput | state.KindTerminal})
	}
	var prev *state.Record
	var evs []*state.Event
	for i := 1; i <= n; i++ {
		rec := &state.Record{
			RequestID: rid, DeploymentID: "dep-1", Owner: tenant, State: runcomfy.StateQueued,
			Epoch: 1, Seq: int64(i), UpdatedAt: time.Now(), Webhooks: hooksTo,
		}
		if i > 1 {
			rec.State = runcomfy.StateRunning
			rec.Outputs = json.RawMessage(fmt.Sprintf(`{"step":%d}`, i))
		}
		ev := saveNext(t, store, prev, rec)
		evs = append(evs, ev)
		prev = rec
	}
	return evs
}

// saveNext saves rec, the change after prev, with its event.
func saveNext(t *testing.T, store state.Outbox, prev, rec *state.Record) *state.Event {
	t.Helper()
	ev := state.EventFor(prev, rec)
	if ev == nil {
		t.Fatalf("no event for seq %d", rec.Seq)
	}
	if err := store.SaveWithEvent(context.Background(), rec, time.Hour, time.Time{}, false, ev); err != nil {
		t.Fatal(err)
	}
	return ev
}

func list(t *testing.T, d *hooks.Deliverer, rid string) []*state.Delivery {
	t.Helper()
	ds, err := d.List(context.Background(), rid)
	if err != nil {
		t.Fatal(err)
	}
	return ds
}

// settled reports whether every delivery of rid is delivered, failed or
// gone, and there are want of them.
func settled(t *testing.T, d *hooks.Deliverer, rid string, want int) bool {
	ds := list(t, d, rid)
	if len(ds) != want {
		return false
	}
	for _, del := range ds {
		if del.State == state.DeliveryPending {
			return false
		}
	}
	return true
}

func TestDeliveredSigned(t *testing.T) {
	t.Parallel()
	h := newMemoryHarness(t)
	oldSecret, newSecret, stranger := mustNew(t), mustNew(t), mustNew(t)
	h.secrets.set(tenant, oldSecret, newSecret) // a rotation: both active
	r := newReceiver(t, h.n, always(http.StatusNoContent))
	before := time.Now().Truncate(time.Second)
	ev := saveEvents(t, h.store, "req-signed", []string{r.url("/hook?token=abc")}, 1)[0]
	d := h.start(h.config("c1"))

	waitUntil(t, h.n, "the delivery", func() bool { return settled(t, d, "req-signed", 1) })
	after := time.Now()
	hits := r.got("/hook")
	if len(hits) != 1 {
		t.Fatalf("receiver got %d requests, want 1", len(hits))
	}
	got := hits[0]
	for k, want := range map[string]string{"Content-Type": "application/json", "User-Agent": "comfygate-webhooks", "webhook-id": ev.ID} {
		if v := got.header.Get(k); v != want {
			t.Errorf("%s = %q, want %q", k, v, want)
		}
	}
	ts, err := strconv.ParseInt(got.header.Get("webhook-timestamp"), 10, 64)
	if err != nil || ts < before.Unix() || ts > after.Unix() {
		t.Errorf("webhook-timestamp = %q, want the attempt's time", got.header.Get("webhook-timestamp"))
	}
	if want, _ := render(ev); string(got.body) != string(want) {
		t.Errorf("body = %s, want the rendered event %s", got.body, want)
	}
	if n := len(strings.Fields(got.header.Get("webhook-signature"))); n != 2 {
		t.Errorf("webhook-signature has %d entries, want one per active secret", n)
	}
	for name, s := range map[string]hooks.Secret{"old": oldSecret, "new": newSecret} {
		if webhooktest.Verify(s.String(), got.header, got.body, time.Now()) != nil {
			t.Errorf("no signature verifies with the %s secret", name)
		}
	}
	if webhooktest.Verify(stranger.String(), got.header, got.body, time.Now()) == nil {
		t.Error("a signature verifies with a secret the tenant does not have")
	}

	del := list(t, d, "req-signed")[0]
	if del.State != state.DeliveryDelivered || del.EventID != ev.ID || del.AttemptCount != 1 || len(del.Attempts) != 1 ||
		del.Attempts[0].HTTPStatus != http.StatusNoContent || del.Attempts[0].Error != "" || del.FirstAttempt.IsZero() || del.CreatedAt.IsZero() || !del.NextAt.IsZero() {
		t.Errorf("delivery = %+v", del)
	}
}

func TestOrderPerEndpoint(t *testing.T) {
	t.Parallel()
	h := newMemoryHarness(t)
	// Every event fails twice before it is accepted.
	r := newReceiver(t, h.n, func(_ hit, tries int) (int, http.Header) {
		if tries <= 2 {
			return http.StatusInternalServerError, nil
		}
		return http.StatusOK, nil
	})
	const n = 4
	evs := saveEvents(t, h.store, "req-order", []string{r.url("/hook")}, n)
	d := h.start(h.config("c1"))

	waitUntil(t, h.n, "every event delivered", func() bool { return settled(t, d, "req-order", n) })
	var want []string
	for _, ev := range evs {
		want = append(want, ev.ID, ev.ID, ev.ID) // the same webhook-id on every retry
	}
	if got := ids(r.got("/hook")); !slices.Equal(got, want) {
		t.Fatalf("webhook-ids in arrival order:\n got %q\nwant %q", got, want)
	}
	for _, del := range list(t, d, "req-order") {
		if del.State != state.DeliveryDelivered || del.AttemptCount != 3 || del.Attempts[0].HTTPStatus != 500 || del.Attempts[0].Error == "" {
			t.Errorf("delivery %d = %+v", del.Seq, del)
		}
	}
}

func TestGoneStopsTheEndpoint(t *testing.T) {
	t.Parallel()
	h := newMemoryHarness(t)
	r := newReceiver(t, h.n, func(hi hit, _ int) (int, http.Header) {
		if hi.path == "/gone" {
			return http.StatusGone, nil
		}
		return http.StatusOK, nil
	})
	gone, live := r.url("/gone"), r.url("/live")
	evs := saveEvents(t, h.store, "req-gone", []string{gone, live}, 3)
	d := h.start(h.config("c1"))
	waitUntil(t, h.n, "every delivery settled", func() bool { return settled(t, d, "req-gone", 6) })

	// An event that comes after the 410 is not sent to that endpoint either.
	last := evs[len(evs)-1].Record
	next := last.Clone()
	next.Seq, next.State, next.UpdatedAt = last.Seq+1, runcomfy.StateSucceeded, time.Now()
	evs = append(evs, saveNext(t, h.store, last, next))
	waitUntil(t, h.n, "the new event settled", func() bool { return settled(t, d, "req-gone", 8) })

	if got := ids(r.got("/gone")); !slices.Equal(got, []string{evs[0].ID}) {
		t.Errorf("gone endpoint got %q, want the first event alone", got)
	}
	var want []string
	for _, ev := range evs {
		want = append(want, ev.ID)
	}
	if got := ids(r.got("/live")); !slices.Equal(got, want) {
		t.Errorf("live endpoint got %q, want %q", got, want)
	}
	for _, del := range list(t, d, "req-gone") {
		switch {
		case del.Endpoint == live && del.State != state.DeliveryDelivered:
			t.Errorf("live delivery %d = %s, want delivered", del.Seq, del.State)
		case del.Endpoint == gone && del.State != state.DeliveryGone:
			t.Errorf("gone delivery %d = %s, want gone", del.Seq, del.State)
		case del.Endpoint == gone && del.Seq == 1 && (del.AttemptCount != 1 || del.Attempts[0].HTTPStatus != http.StatusGone):
			t.Errorf("the delivery answered 410 = %+v", del)
		case del.Endpoint == gone && del.Seq > 1 && del.AttemptCount != 0:
			t.Errorf("delivery %d after the 410 was attempted: %+v", del.Seq, del)
		}
	}
}

func TestRetryAfterHonoured(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name       string
		status     int
		retryAfter func() string
	}{
		{"429 seconds", http.StatusTooManyRequests, func() string { return "1" }},
		// An HTTP date has whole seconds: two seconds ahead is at least one.
		{"503 date", http.StatusServiceUnavailable, func() string { return time.Now().Add(2 * time.Second).UTC().Format(http.TimeFormat) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newMemoryHarness(t)
			r := newReceiver(t, h.n, func(_ hit, tries int) (int, http.Header) {
				if tries == 1 {
					return tc.status, http.Header{"Retry-After": {tc.retryAfter()}}
				}
				return http.StatusOK, nil
			})
			saveEvents(t, h.store, "req-ra", []string{r.url("/hook")}, 1)
			d := h.start(h.config("c1")) // RetryMin 20ms: only Retry-After makes it wait
			waitUntil(t, h.n, "the delivery", func() bool { return settled(t, d, "req-ra", 1) })
			hits := r.got("/hook")
			if len(hits) != 2 {
				t.Fatalf("receiver got %d requests, want 2", len(hits))
			}
			if gap := hits[1].at.Sub(hits[0].at); gap < time.Second {
				t.Errorf("second attempt %s after the first, want at least the 1s Retry-After asked", gap)
			}
		})
	}
}

// counterValue is the value of the series of metric name with label
// name=value in reg.
func counterValue(t *testing.T, reg *prometheus.Registry, metric, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != metric {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no %s{%s=%q}", metric, label, value)
	return 0
}

func TestHorizonFails(t *testing.T) {
	t.Parallel()
	h := newMemoryHarness(t)
	r := newReceiver(t, h.n, always(http.StatusBadGateway))
	saveEvents(t, h.store, "req-horizon", []string{r.url("/hook")}, 1)
	reg := prometheus.NewRegistry()
	cfg := h.config("c1")
	cfg.Horizon, cfg.Registry = 100*time.Millisecond, reg
	d := h.start(cfg)

	waitUntil(t, h.n, "the delivery to fail", func() bool { return settled(t, d, "req-horizon", 1) })
	del := list(t, d, "req-horizon")[0]
	if del.State != state.DeliveryFailed || del.AttemptCount < 2 || !del.NextAt.IsZero() {
		t.Fatalf("delivery = %+v, want failed after several attempts", del)
	}
	if last := del.Attempts[len(del.Attempts)-1]; last.At.Add(last.Duration).Sub(del.FirstAttempt) < cfg.Horizon {
		t.Errorf("failed before the horizon: first attempt %s, last %s", del.FirstAttempt, last.At)
	}
	for _, c := range []struct {
		metric, label, value string
		want                 float64
	}{
		{"comfygate_webhook_deliveries_total", "outcome", "failed", 1},
		{"comfygate_webhook_deliveries_total", "outcome", "delivered", 0},
		{"comfygate_webhook_attempts_total", "result", "5xx", float64(del.AttemptCount)},
		{"comfygate_webhook_attempts_total", "result", "2xx", 0},
	} {
		if got := counterValue(t, reg, c.metric, c.label, c.value); got != c.want {
			t.Errorf("%s{%s=%q} = %v, want %v", c.metric, c.label, c.value, got, c.want)
		}
	}
	if got := len(r.got("")); got != del.AttemptCount {
		t.Errorf("receiver got %d requests, the delivery counts %d attempts", got, del.AttemptCount)
	}
}

func TestNoSecretNeverSendsUnsigned(t *testing.T) {
	t.Parallel()
	h := newMemoryHarness(t)
	h.secrets.set(tenant) // none
	r := newReceiver(t, h.n, always(http.StatusOK))
	saveEvents(t, h.store, "req-nosecret", []string{r.url("/hook")}, 1)
	d := h.start(h.config("c1"))

	waitUntil(t, h.n, "attempts without a secret", func() bool {
		ds := list(t, d, "req-nosecret")
		return len(ds) == 1 && ds[0].AttemptCount >= 2
	})
	del := list(t, d, "req-nosecret")[0]
	if del.State != state.DeliveryPending || del.Attempts[0].Error != "no signing secret for the tenant" || del.Attempts[0].HTTPStatus != 0 {
		t.Errorf("delivery = %+v, want pending with the missing secret recorded", del)
	}
	if n := len(r.got("")); n != 0 {
		t.Fatalf("receiver got %d unsigned requests", n)
	}

	s := mustNew(t)
	h.secrets.set(tenant, s) // the operator restores it
	waitUntil(t, h.n, "the delivery", func() bool { return settled(t, d, "req-nosecret", 1) })
	hits := r.got("")
	if len(hits) != 1 || webhooktest.Verify(s.String(), hits[0].header, hits[0].body, time.Now()) != nil {
		t.Fatalf("receiver got %d requests, want 1 signed with the restored secret", len(hits))
	}
}

func TestRedeliver(t *testing.T) {
	t.Parallel()
	h := newMemoryHarness(t)
	r := newReceiver(t, h.n, always(http.StatusOK))
	ev := saveEvents(t, h.store, "req-again", []string{r.url("/hook")}, 1)[0]
	d := h.start(h.config("c1"))
	ctx := context.Background()
	waitUntil(t, h.n, "the first delivery", func() bool { return settled(t, d, "req-again", 1) })

	t.Run("SendsAgainWithTheSameID", func(t *testing.T) {
		got, err := d.Redeliver(ctx, "req-again", ev.ID)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[0].State != state.DeliveryPending || got[0].AttemptCount != 1 || !got[0].FirstAttempt.IsZero() || !got[0].NextAt.IsZero() {
			t.Fatalf("Redeliver = %+v, want the delivery pending with its history", got)
		}
		waitUntil(t, h.n, "the redelivery", func() bool {
			ds := list(t, d, "req-again")
			return len(ds) == 1 && ds[0].State == state.DeliveryDelivered && ds[0].AttemptCount == 2
		})
		if got := ids(r.got("")); !slices.Equal(got, []string{ev.ID, ev.ID}) {
			t.Errorf("receiver got %q, want the event twice with its webhook-id", got)
		}
	})
	t.Run("UnknownEvent", func(t *testing.T) {
		for _, c := range []struct{ rid, eid string }{{"req-again", "msg_nope"}, {"req-unknown", ev.ID}} {
			if _, err := d.Redeliver(ctx, c.rid, c.eid); !errors.Is(err, state.ErrNoEvent) {
				t.Errorf("Redeliver(%s, %s) = %v, want ErrNoEvent", c.rid, c.eid, err)
			}
		}
	})
	t.Run("BusyWhileAnotherHoldsTheLease", func(t *testing.T) {
		// Once the deliverer let go of it (it may be finishing the redelivery).
		waitUntil(t, h.n, "the lease", func() bool {
			ok, err := h.store.LeaseOutbox(ctx, "req-again", "someone-else", time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			return ok
		})
		defer func() { _ = h.store.ReleaseOutbox(ctx, "req-again", "someone-else") }()
		if _, err := d.Redeliver(ctx, "req-again", ev.ID); !errors.Is(err, hooks.ErrBusy) {
			t.Fatalf("Redeliver = %v, want ErrBusy", err)
		}
		if del := list(t, d, "req-again")[0]; del.State != state.DeliveryDelivered {
			t.Errorf("a refused redelivery changed the delivery: %+v", del)
		}
	})
}

func TestListShowsEventsNotTriedYet(t *testing.T) {
	t.Parallel()
	h := newMemoryHarness(t)
	evs := saveEvents(t, h.store, "req-list", []string{"https://b.example/hook", "https://a.example/hook"}, 2)
	d, err := hooks.New(h.config("c1")) // not running: nothing is tried
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, del := range list(t, d, "req-list") {
		if del.State != state.DeliveryPending || del.AttemptCount != 0 || del.Type == "" {
			t.Errorf("placeholder = %+v", del)
		}
		got = append(got, fmt.Sprintf("%d %s %s", del.Seq, del.Endpoint, del.EventID))
	}
	want := []string{
		"1 https://a.example/hook " + evs[0].ID, "1 https://b.example/hook " + evs[0].ID,
		"2 https://a.example/hook " + evs[1].ID, "2 https://b.example/hook " + evs[1].ID,
	}
	if !slices.Equal(got, want) {
		t.Errorf("List:\n got %q\nwant %q", got, want)
	}
	if ds := list(t, d, "req-none"); len(ds) != 0 {
		t.Errorf("List of an unknown request = %v", ds)
	}
}

// newRedisOutbox is a Redis outbox under a prefix of its own, on the Redis
// redistest finds (a private server unless one is named).
func newRedisOutbox(t *testing.T) state.Outbox {
	t.Helper()
	srv, err := redistest.Find()
	if err != nil {
		t.Skipf("no Redis: %v", err)
	}
	t.Cleanup(srv.Stop)
	b, err := redisstore.New(srv.Client(t), redisstore.Options{
		Prefix: redistest.Prefix(t), Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = b.Run(ctx, func(context.Context, []string) error { return nil })
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return b
}

// outboxBackend makes an outbox for a test.
type outboxBackend struct {
	name string
	new  func(t *testing.T) state.Outbox
}

// outboxBackends are the outboxes the deliverer runs on: in the process,
// and in Redis.
func outboxBackends() []outboxBackend {
	return []outboxBackend{
		{"memory", func(*testing.T) state.Outbox { return memory.New(time.Now) }},
		{"redis", newRedisOutbox},
	}
}

func TestTwoDeliverersDeliverOnce(t *testing.T) {
	t.Parallel()
	for _, bk := range outboxBackends() {
		t.Run(bk.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, bk.new(t))
			// About half the events fail once, so retries and jobs from
			// both deliverers interleave.
			r := newReceiver(t, h.n, func(hi hit, tries int) (int, http.Header) {
				if tries == 1 && hi.id()[len(hi.id())-1]%2 == 0 {
					return http.StatusServiceUnavailable, nil
				}
				return http.StatusOK, nil
			})
			var ds []*hooks.Deliverer
			for _, name := range []string{"a", "b"} {
				cfg := h.config(name)
				cfg.Workers = 4
				ds = append(ds, h.start(cfg))
			}
			const requests, events = 20, 3
			want := map[string][]string{} // request id -> its event ids in order
			for i := range requests {
				rid := fmt.Sprintf("req-%02d", i)
				for _, ev := range saveEvents(t, h.store, rid, []string{r.url("/" + rid)}, events) {
					want[rid] = append(want[rid], ev.ID)
				}
			}
			waitUntil(t, h.n, "every delivery", func() bool {
				for rid := range want {
					if !settled(t, ds[0], rid, events) {
						return false
					}
				}
				return true
			})
			accepted := map[string]int{}
			for _, hi := range r.got("") {
				if hi.status == http.StatusOK {
					accepted[hi.id()]++
				}
			}
			for rid, evIDs := range want {
				for _, id := range evIDs {
					if accepted[id] != 1 {
						t.Errorf("%s: event %s accepted %d times, want once", rid, id, accepted[id])
					}
				}
				var got []string
				for _, hi := range r.got("/" + rid) {
					if hi.status == http.StatusOK {
						got = append(got, hi.id())
					}
				}
				if !slices.Equal(got, evIDs) {
					t.Errorf("%s: accepted in order %q, want %q", rid, got, evIDs)
				}
			}
		})
	}
}

func TestDeadDelivererJobTakenOver(t *testing.T) {
	t.Parallel()
	h := newMemoryHarness(t)
	r := newReceiver(t, h.n, always(http.StatusOK))
	ev := saveEvents(t, h.store, "req-orphan", []string{r.url("/hook")}, 1)[0]
	// A deliverer takes the job and dies: never done, no lease. (taken is
	// read first: the job is idle from a moment after it.)
	taken := time.Now()
	jobs, err := h.store.Take(context.Background(), "dead", 10, waitTimeout)
	if err != nil || len(jobs) != 1 {
		t.Fatalf("Take = %v, %v; want the job", jobs, err)
	}
	cfg := h.config("alive")
	cfg.Timeout = 200 * time.Millisecond // lease 3×200ms+1s = 1.6s
	d := h.start(cfg)

	waitUntil(t, h.n, "the orphaned delivery", func() bool { return settled(t, d, "req-orphan", 1) })
	hits := r.got("")
	if len(hits) != 1 || hits[0].id() != ev.ID {
		t.Fatalf("receiver got %q, want the event once", ids(hits))
	}
	if wait := hits[0].at.Sub(taken); wait < 1600*time.Millisecond {
		t.Errorf("taken over %s after the dead deliverer took it, want only once idle for a lease (1.6s)", wait)
	}
}

func TestStoppingDelivererHandsItsJobBack(t *testing.T) {
	t.Parallel()
	for _, bk := range outboxBackends() {
		t.Run(bk.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, bk.new(t))
			// The first attempt hangs until its deliverer stops; the next
			// is accepted.
			r := newReceiver(t, h.n, func(hit, int) (int, http.Header) { return http.StatusOK, nil })
			hung := make(chan struct{})
			var once sync.Once
			r.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
				first := false
				once.Do(func() { first = true })
				if first {
					// Read to the end, so that the server notices the
					// client hanging up and ends req's context.
					_, _ = io.Copy(io.Discard, req.Body)
					close(hung)
					<-req.Context().Done()
					return
				}
				r.serve(w, req)
			})
			// A lease (3×timeout+1s) far beyond the test's wait: a job left
			// to be taken over once idle would make it time out.
			cfg := h.config("stopping")
			cfg.Timeout = time.Minute
			d, err := hooks.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			ctx, stop := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- d.Run(ctx) }()
			ev := saveEvents(t, h.store, "req-handed", []string{r.url("/hook")}, 1)[0]
			select {
			case <-hung:
			case <-time.After(waitTimeout):
				t.Fatal("the first attempt never came")
			}
			stop()
			if err := <-done; err != nil {
				t.Fatalf("Run = %v, want nil after the stop", err)
			}

			next := cfg
			next.Consumer = "next"
			d2 := h.start(next)
			waitUntil(t, h.n, "the delivery by the next deliverer", func() bool { return settled(t, d2, "req-handed", 1) })
			if hits := r.got("/hook"); len(hits) != 1 || hits[0].id() != ev.ID || hits[0].status != http.StatusOK {
				t.Fatalf("receiver answered %q, want the event accepted once", ids(hits))
			}
		})
	}
}

func TestNewValidation(t *testing.T) {
	t.Parallel()
	h := newMemoryHarness(t)
	reg := prometheus.NewRegistry()
	cases := []struct {
		name   string
		change func(*hooks.Config)
		want   string // in the error; "" for none
	}{
		{"valid", func(*hooks.Config) {}, ""},
		{"defaults", func(c *hooks.Config) {
			*c = hooks.Config{Outbox: c.Outbox, Client: c.Client, Secrets: c.Secrets, Render: c.Render, Consumer: "c"}
		}, ""},
		{"registered", func(c *hooks.Config) { c.Registry = reg }, ""},
		{"registered twice", func(c *hooks.Config) { c.Registry = reg }, "already registered"},
		{"no outbox", func(c *hooks.Config) { c.Outbox = nil }, "outbox is required"},
		{"no client", func(c *hooks.Config) { c.Client = nil }, "client is required"},
		{"no secrets", func(c *hooks.Config) { c.Secrets = nil }, "secrets function is required"},
		{"no render", func(c *hooks.Config) { c.Render = nil }, "render function is required"},
		{"no consumer", func(c *hooks.Config) { c.Consumer = " " }, "consumer name is required"},
		{"negative timeout", func(c *hooks.Config) { c.Timeout = -time.Second }, "timeout is negative"},
		{"negative horizon", func(c *hooks.Config) { c.Horizon = -time.Second }, "horizon is negative"},
		{"negative retention", func(c *hooks.Config) { c.Retention = -time.Second }, "retention is negative"},
		{"negative workers", func(c *hooks.Config) { c.Workers = -1 }, "workers is negative"},
		{"min above max", func(c *hooks.Config) { c.RetryMin, c.RetryMax = time.Minute, time.Second }, "retry min (1m0s) is above retry max (1s)"},
		{"min above default max", func(c *hooks.Config) { c.RetryMin, c.RetryMax = 2*time.Hour, 0 }, "is above retry max (1h0m0s)"},
		{"every problem at once", func(c *hooks.Config) { c.Outbox, c.Client = nil, nil }, "outbox is required\nclient is required"},
	}
	for _, tc := range cases { // in order: "registered twice" follows "registered"
		t.Run(tc.name, func(t *testing.T) {
			cfg := h.config("c1")
			tc.change(&cfg)
			d, err := hooks.New(cfg)
			switch {
			case tc.want == "" && (err != nil || d == nil):
				t.Fatalf("New = %v, %v; want a deliverer", d, err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("New error = %v, want one saying %q", err, tc.want)
			}
		})
	}
}

func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	cases := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"0", 0},
		{"-5", 0},
		{"7", 7 * time.Second},
		{" 7 ", 7 * time.Second},
		{"99999999999999999", 366 * 24 * time.Hour},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0},
		{"soon", 0},
	}
	for _, c := range cases {
		if got := hooks.ParseRetryAfter(c.in, now); got != c.want {
			t.Errorf("parseRetryAfter(%q) = %s, want %s", c.in, got, c.want)
		}
	}
}

func TestRedactURL(t *testing.T) {
	t.Parallel()
	cases := []struct{ in, want string }{
		{"https://hooks.example/a/b?token=secret", "https://hooks.example/a/b"},
		{"https://user:pass@hooks.example:8443/x", "https://hooks.example:8443/x"},
		{"http://hooks.example", "http://hooks.example"},
		{"://bad", "[invalid URL]"},
	}
	for _, c := range cases {
		if got := hooks.RedactURL(c.in); got != c.want {
			t.Errorf("redactURL(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}
