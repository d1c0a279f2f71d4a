// Package statetest is the conformance suite every state backend runs: the
// Store and Bus contract of package state, then the invariants of the design
// notes (monotonic state, seq numbers, no gap and no duplicate for a watcher,
// bounded watchers, ref-counted subscriptions) exercised through state.Tracker
// and state.Hub on top of the backend.
//
// The suite treats the backend as a black box that may be asynchronous (Redis
// delivers on its own connection) and may round-trip records through JSON: times
// are compared with time.Time.Equal, raw JSON after compacting. It asserts that
// something was not delivered with a barrier rather than a sleep: a later write
// to the same request, which the bus delivers in publish order, so anything
// wrongly published before it would have arrived first.
package statetest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
)

// Backend is what a state backend provides.
type Backend interface {
	state.Store
	state.Bus
}

// waitTimeout bounds every wait for a delivery or a goroutine. It is a safety
// net against a hang, not a latency assertion: a conforming backend delivers in
// microseconds (memory) or milliseconds (Redis), even under -race.
const waitTimeout = 10 * time.Second

// longTTL is the time to live of records that must outlive the test.
const longTTL = time.Hour

// shortTTL and expiryDeadline drive the expiry tests in real time, because Redis
// expires keys by its own clock.
const (
	shortTTL       = 100 * time.Millisecond
	expiryDeadline = 3 * time.Second
)

// deployment is the deployment id of every record and update in the suite.
const deployment = "dep-conformance"

// testCase is one subtest; it gets a fresh backend of its own.
type testCase struct {
	name string
	run  func(t *testing.T, b Backend)
}

// Run runs the conformance suite. newBackend returns a fresh, isolated backend
// for each subtest (and registers its own cleanup with t.Cleanup).
//
// Subtests run in parallel, so newBackend is called concurrently and the
// backends it returns must not see each other's records or events (for Redis:
// a key and channel prefix of their own). The suite never holds two Bus
// subscriptions to one request on one backend at the same time, as the Hub
// never does.
func Run(t *testing.T, newBackend func(t *testing.T) Backend) {
	t.Helper()
	groups := []struct {
		name  string
		cases []testCase
	}{
		{"Store", storeCases()},
		{"Bus", busCases()},
		{"Tracker", trackerCases()},
		{"Hub", hubCases()},
		{"Epoch", epochCases()},
	}
	for _, g := range groups {
		t.Run(g.name, func(t *testing.T) {
			for _, tc := range g.cases {
				t.Run(tc.name, func(t *testing.T) {
					// Subtests share nothing but the backend constructor, so they
					// run in parallel; this keeps the real-time TTL waits and the
					// churn test from adding up.
					t.Parallel()
					tc.run(t, newBackend(t))
				})
			}
		})
	}
}

// The cases of each contract are in a file of their own: store.go, bus.go,
// tracker.go, hub.go, epoch.go; the schedule's in schedule.go and the
// idempotency keys' in idempotency.go. What follows is shared by them.

// testContext bounds a test's calls; the deadline is a hang guard only.
func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

// sampleOutputs is an outputs document as upstream sends it: spaced, and with
// characters (&) that a JSON encoder may escape on the way through a store.
const sampleOutputs = `{
  "9": {"images": [{"url": "https://cdn.example/out/a.png?sig=x&exp=1", "filename": "a.png", "type": "output"}]},
  "12": {"text": ["caf\u00e9"], "gifs": []}
}`

var sampleURLs = []string{"https://cdn.example/out/a.png?sig=x&exp=1"}

// fullRecord returns a record with every field set to a value a careless
// encoding would lose: a zone other than UTC, nanoseconds, raw JSON.
func fullRecord(id string, seq int64) *state.Record {
	zone := time.FixedZone("IST", 5*3600+1800)
	base := time.Date(2026, 3, 14, 15, 9, 26, 535897932, zone)
	pos := int64(7)
	return &state.Record{
		RequestID:      id,
		DeploymentID:   deployment,
		Owner:          "tenant-a",
		State:          runcomfy.StateFailed,
		UpstreamStatus: "failed",
		QueuePosition:  &pos,
		InstanceID:     "inst-1",
		Outputs:        json.RawMessage(sampleOutputs),
		OutputURLs:     slices.Clone(sampleURLs),
		Error:          &runcomfy.JobError{Type: "oom", Message: "CUDA out of memory", Code: "500"},
		CreatedAt:      base,
		StartedAt:      base.Add(1500 * time.Millisecond),
		FinishedAt:     base.Add(time.Minute),
		UpdatedAt:      base.Add(time.Minute + time.Microsecond),
		Seq:            seq,
	}
}

// mutateAll changes every field of r in place, including the contents of its
// slices and pointers, so that any sharing with a stored record shows.
func mutateAll(r *state.Record) {
	r.DeploymentID, r.Owner, r.UpstreamStatus, r.InstanceID = "x", "x", "x", "x"
	r.State = runcomfy.StateCancelled
	for i := range r.Outputs {
		r.Outputs[i] = ' '
	}
	for i := range r.OutputURLs {
		r.OutputURLs[i] = "mutated"
	}
	if r.QueuePosition != nil {
		*r.QueuePosition = 99
	}
	if r.Error != nil {
		r.Error.Message = "mutated"
	}
	r.CreatedAt = r.CreatedAt.Add(time.Hour)
	r.Seq = 99
}

func queued(id string, pos int64) state.Update {
	return state.Update{RequestID: id, DeploymentID: deployment, Source: "poll", State: runcomfy.StateQueued, UpstreamStatus: "in_queue", QueuePosition: &pos}
}

func running(id, instance string) state.Update {
	return state.Update{RequestID: id, DeploymentID: deployment, Source: "callback", State: runcomfy.StateRunning, UpstreamStatus: "in_progress", InstanceID: instance}
}

func succeeded(id string) state.Update {
	u := succeededBare(id)
	u.Outputs = json.RawMessage(sampleOutputs)
	u.OutputURLs = slices.Clone(sampleURLs)
	return u
}

// succeededBare is a success that lacks its outputs, like a bare callback.
func succeededBare(id string) state.Update {
	return state.Update{RequestID: id, DeploymentID: deployment, Source: "callback", State: runcomfy.StateSucceeded, UpstreamStatus: "succeeded"}
}

func failed(id string) state.Update {
	return state.Update{
		RequestID: id, DeploymentID: deployment, Source: "callback", State: runcomfy.StateFailed, UpstreamStatus: "failed",
		Error: &runcomfy.JobError{Type: "oom", Message: "CUDA out of memory"},
	}
}

func cancelled(id string) state.Update {
	return state.Update{RequestID: id, DeploymentID: deployment, Source: "cancel", State: runcomfy.StateCancelled, UpstreamStatus: "cancelled"}
}

// progression returns n >= 3 updates that each move the request forward: queued
// with falling positions, then running, then succeeded with outputs. Applied in
// order they produce seqs 1..n.
func progression(id string, n int) []state.Update {
	ups := make([]state.Update, 0, n)
	for pos := int64(n - 2); pos >= 1; pos-- {
		ups = append(ups, queued(id, pos))
	}
	return append(ups, running(id, "inst-1"), succeeded(id))
}

func seqRange(from, to int64) []int64 {
	var s []int64
	for i := from; i <= to; i++ {
		s = append(s, i)
	}
	return s
}

func seqs(recs []*state.Record) []int64 {
	s := make([]int64, len(recs))
	for i, r := range recs {
		s[i] = r.Seq
	}
	return s
}

// ids names each record as request#seq.
func ids(recs []*state.Record) []string {
	s := make([]string, len(recs))
	for i, r := range recs {
		s[i] = fmt.Sprintf("%s#%d", r.RequestID, r.Seq)
	}
	return s
}

func mustSave(t *testing.T, b Backend, rec *state.Record, ttl time.Duration) {
	t.Helper()
	if err := b.Save(testContext(t), rec, ttl); err != nil {
		t.Fatalf("Save(%s seq %d): %v", rec.RequestID, rec.Seq, err)
	}
}

func mustGet(t *testing.T, b Backend, id string) *state.Record {
	t.Helper()
	rec, err := b.Get(testContext(t), id)
	if err != nil {
		t.Fatalf("Get(%s): %v", id, err)
	}
	return rec
}

// waitNotFound polls until the record has expired.
func waitNotFound(t *testing.T, b Backend, id string) {
	t.Helper()
	deadline := time.Now().Add(expiryDeadline)
	for {
		_, err := b.Get(testContext(t), id)
		if errors.Is(err, state.ErrNotFound) {
			return
		}
		if err != nil {
			t.Fatalf("Get(%s) while waiting for expiry: %v", id, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("record %s still there %v after it should have expired", id, expiryDeadline)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// expectPublished checks that exactly the records with wantSeqs were delivered
// to rec since it subscribed. It writes a barrier record (the stored record
// with the next seq) and waits for it: the bus delivers a request's records in
// publish order, so anything published before the barrier has arrived by then.
// It returns the records delivered before the barrier.
func expectPublished(t *testing.T, b Backend, rec *recorder, id string, wantSeqs ...int64) []*state.Record {
	t.Helper()
	cur := mustGet(t, b, id)
	barrier := cur.Clone()
	barrier.Seq++
	barrier.InstanceID = "barrier"
	mustSave(t, b, barrier, longTTL)
	got := rec.waitFor(t, func(recs []*state.Record) bool {
		return len(recs) > 0 && recs[len(recs)-1].Seq >= barrier.Seq
	})
	want := append(slices.Clone(wantSeqs), barrier.Seq)
	if s := seqs(got); !slices.Equal(s, want) {
		t.Errorf("published seqs = %v, want %v (the last is a barrier)", s, want)
	}
	return got[:len(got)-1]
}

// recorder collects what the bus delivers to one subscription.
type recorder struct {
	mu     sync.Mutex
	recs   []*state.Record
	notify chan struct{}
}

func subscribe(t *testing.T, b Backend, id string) *recorder {
	t.Helper()
	r := &recorder{notify: make(chan struct{}, 1)}
	if err := b.Subscribe(testContext(t), id, r.deliver); err != nil {
		t.Fatalf("Subscribe(%s): %v", id, err)
	}
	return r
}

// deliver must not block: the bus may call it with its own locks held.
func (r *recorder) deliver(rec *state.Record) {
	r.mu.Lock()
	r.recs = append(r.recs, rec)
	r.mu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

func (r *recorder) all() []*state.Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.recs)
}

func (r *recorder) waitLen(t *testing.T, n int) []*state.Record {
	t.Helper()
	return r.waitFor(t, func(recs []*state.Record) bool { return len(recs) >= n })
}

func (r *recorder) waitFor(t *testing.T, done func([]*state.Record) bool) []*state.Record {
	t.Helper()
	timeout := time.NewTimer(waitTimeout)
	defer timeout.Stop()
	for {
		if recs := r.all(); done(recs) {
			return recs
		}
		select {
		case <-r.notify:
		case <-timeout.C:
			t.Fatalf("delivery did not arrive within %v; got seqs %v", waitTimeout, seqs(r.all()))
		}
	}
}

// fakeResults is the upstream /result endpoint: it answers with res (its
// RequestID set to the one asked for) or err, and counts calls.
type fakeResults struct {
	res *runcomfy.ResultResponse
	err error

	mu               sync.Mutex
	calls            int
	lastDep, lastReq string
}

func (f *fakeResults) Result(_ context.Context, deploymentID, requestID string) (*runcomfy.ResultResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	f.lastDep, f.lastReq = deploymentID, requestID
	if f.err != nil {
		return nil, f.err
	}
	if f.res == nil {
		return nil, errors.New("fakeResults: no result configured")
	}
	r := *f.res
	r.RequestID = requestID
	r.Outputs = slices.Clone(f.res.Outputs)
	r.OutputURLs = slices.Clone(f.res.OutputURLs)
	return &r, nil
}

func (f *fakeResults) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func (f *fakeResults) lastCall() (dep, req string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastDep, f.lastReq
}

func newTracker(t *testing.T, b Backend, results *fakeResults) *state.Tracker {
	t.Helper()
	tr, err := state.NewTracker(state.TrackerConfig{Store: b, Results: results})
	if err != nil {
		t.Fatalf("NewTracker: %v", err)
	}
	return tr
}

func mustApply(t *testing.T, tr *state.Tracker, u state.Update) *state.Record {
	t.Helper()
	rec, outcome, err := tr.Apply(testContext(t), u)
	if err != nil {
		t.Fatalf("Apply(%s %v): %v", u.RequestID, u.State, err)
	}
	if outcome != state.Applied {
		t.Fatalf("Apply(%s %v) = %v, want Applied", u.RequestID, u.State, outcome)
	}
	return rec
}

func newHub(t *testing.T, bus state.Bus, buffer int) *state.Hub {
	t.Helper()
	h, err := state.NewHub(bus, buffer)
	if err != nil {
		t.Fatalf("NewHub: %v", err)
	}
	return h
}

// watch opens a watcher that the test closes at cleanup (Close is idempotent,
// so tests may close it earlier).
func watch(t *testing.T, h *state.Hub, id string) *state.Watcher {
	t.Helper()
	w, err := h.Watch(testContext(t), id)
	if err != nil {
		t.Fatalf("Watch(%s): %v", id, err)
	}
	t.Cleanup(w.Close)
	return w
}

// nextRecords waits for the watcher's next batch.
func nextRecords(t *testing.T, w *state.Watcher) []*state.Record {
	t.Helper()
	recs, err := w.Next(testContext(t))
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	return recs
}

// pending returns what the watcher holds right now, without waiting.
func pending(w *state.Watcher) []*state.Record {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	recs, _ := w.Next(ctx)
	return recs
}

func readUntilTerminal(ctx context.Context, w *state.Watcher) ([]*state.Record, error) {
	var all []*state.Record
	for {
		recs, err := w.Next(ctx)
		if err != nil {
			return all, err
		}
		all = append(all, recs...)
		if len(recs) > 0 && recs[len(recs)-1].Terminal() {
			return all, nil
		}
	}
}

// countingBus wraps the backend's Bus to observe the hub's use of it: how many
// subscriptions it made and removed, whether one is active, and how many
// records reached the hub through them. It reports a second subscription to a
// request that already has one, and an Unsubscribe without a subscription.
type countingBus struct {
	state.Bus
	t         *testing.T
	delivered atomic.Int64

	mu           sync.Mutex
	subscribes   int
	unsubscribes int
	subscribed   map[string]bool
	failNext     error
}

func newCountingBus(t *testing.T, b state.Bus) *countingBus {
	return &countingBus{Bus: b, t: t, subscribed: make(map[string]bool)}
}

func (c *countingBus) Subscribe(ctx context.Context, requestID string, deliver func(*state.Record)) error {
	c.mu.Lock()
	if c.subscribed[requestID] {
		c.t.Errorf("second bus subscription to %s while one is active", requestID)
	}
	fail := c.failNext
	c.failNext = nil
	c.mu.Unlock()
	if fail != nil {
		return fail
	}
	// A real bus takes a round trip here; yielding lets racing Watch and
	// Close calls run meanwhile, as they would against Redis.
	runtime.Gosched()
	err := c.Bus.Subscribe(ctx, requestID, func(rec *state.Record) {
		c.delivered.Add(1)
		deliver(rec)
	})
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.subscribes++
	c.subscribed[requestID] = true
	c.mu.Unlock()
	return nil
}

func (c *countingBus) Unsubscribe(ctx context.Context, requestID string) error {
	c.mu.Lock()
	if !c.subscribed[requestID] {
		c.t.Errorf("Unsubscribe(%s) without an active subscription", requestID)
	}
	// Marked inactive before the call: from here on no watcher may rely on it.
	c.subscribed[requestID] = false
	c.unsubscribes++
	c.mu.Unlock()
	runtime.Gosched() // a round trip, as in Subscribe
	return c.Bus.Unsubscribe(ctx, requestID)
}

func (c *countingBus) counts() (subscribes, unsubscribes int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.subscribes, c.unsubscribes
}

func (c *countingBus) active(requestID string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.subscribed[requestID]
}

func (c *countingBus) failNextSubscribe(err error) {
	c.mu.Lock()
	c.failNext = err
	c.mu.Unlock()
}

// diffRecord lists the fields in which got differs from want, or "". Times are
// compared with Equal and raw JSON after normalising, since a store may
// round-trip records through JSON.
func diffRecord(got, want *state.Record) string {
	if got == nil || want == nil {
		if got == want {
			return ""
		}
		return fmt.Sprintf("  record = %v, want %v", got, want)
	}
	var d []string
	field := func(name string, differs bool, g, w any) {
		if differs {
			d = append(d, fmt.Sprintf("  %s = %v, want %v", name, g, w))
		}
	}
	field("RequestID", got.RequestID != want.RequestID, got.RequestID, want.RequestID)
	field("DeploymentID", got.DeploymentID != want.DeploymentID, got.DeploymentID, want.DeploymentID)
	field("Owner", got.Owner != want.Owner, got.Owner, want.Owner)
	field("State", got.State != want.State, got.State, want.State)
	field("UpstreamStatus", got.UpstreamStatus != want.UpstreamStatus, got.UpstreamStatus, want.UpstreamStatus)
	field("QueuePosition", ptrString(got.QueuePosition) != ptrString(want.QueuePosition), ptrString(got.QueuePosition), ptrString(want.QueuePosition))
	field("InstanceID", got.InstanceID != want.InstanceID, got.InstanceID, want.InstanceID)
	field("Outputs", normJSON(got.Outputs) != normJSON(want.Outputs), string(got.Outputs), string(want.Outputs))
	field("OutputURLs", !slices.Equal(got.OutputURLs, want.OutputURLs), got.OutputURLs, want.OutputURLs)
	field("Error", errString(got.Error) != errString(want.Error), errString(got.Error), errString(want.Error))
	field("CreatedAt", !got.CreatedAt.Equal(want.CreatedAt), got.CreatedAt, want.CreatedAt)
	field("StartedAt", !got.StartedAt.Equal(want.StartedAt), got.StartedAt, want.StartedAt)
	field("FinishedAt", !got.FinishedAt.Equal(want.FinishedAt), got.FinishedAt, want.FinishedAt)
	field("UpdatedAt", !got.UpdatedAt.Equal(want.UpdatedAt), got.UpdatedAt, want.UpdatedAt)
	field("Seq", got.Seq != want.Seq, got.Seq, want.Seq)
	return strings.Join(d, "\n")
}

func strictlyIncreasing(s []int64) bool {
	for i := 1; i < len(s); i++ {
		if s[i] <= s[i-1] {
			return false
		}
	}
	return true
}

func ptrString(p *int64) string {
	if p == nil {
		return "<nil>"
	}
	return fmt.Sprint(*p)
}

func errString(e *runcomfy.JobError) string {
	if e == nil {
		return "<nil>"
	}
	return fmt.Sprintf("%+v", *e)
}

// normJSON compacts raw JSON and escapes HTML characters the way
// encoding/json.Marshal does, so that a document and its round trip through a
// JSON store compare equal. Empty is "" and invalid JSON is marked as such.
func normJSON(raw json.RawMessage) string {
	if len(raw) == 0 {
		return ""
	}
	var compact, escaped bytes.Buffer
	if err := json.Compact(&compact, raw); err != nil {
		return fmt.Sprintf("invalid JSON %q: %v", raw, err)
	}
	json.HTMLEscape(&escaped, compact.Bytes())
	return escaped.String()
}
