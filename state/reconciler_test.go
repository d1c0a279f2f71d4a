package state_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/state/memory"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// The reconciler tests run the real simulator behind a real runcomfy.Client
// over HTTP, the memory backend and the real Tracker: nothing upstream is
// faked. They measure time in poll intervals of 50–200ms and assert counts with
// wide margins (a factor of two or more from the value that would mean a bug),
// so that a loaded machine under -race slows them down but does not fail them.

const (
	simToken = "sim-token-reconciler"
	dep      = "dep-1"
	// waitLimit bounds every wait for something that should take a few
	// intervals; it is a hang guard, not the assertion.
	waitLimit = 5 * time.Second
)

// probe sits in front of the simulator and watches status calls as they
// arrive: how many are in flight (overall and per request) and when each began.
type probe struct {
	mu          sync.Mutex
	inFlight    int
	maxInFlight int
	perRequest  map[string]int
	maxPerReq   int
	starts      map[string][]time.Time
}

func newProbe() *probe {
	return &probe{perRequest: make(map[string]int), starts: make(map[string][]time.Time)}
}

// statusRequestID returns the request id of a status call
// (/prod/v1/deployments/{d}/requests/{r}/status).
func statusRequestID(path string) (string, bool) {
	rest, ok := strings.CutSuffix(path, "/status")
	if !ok {
		return "", false
	}
	return rest[strings.LastIndexByte(rest, '/')+1:], true
}

func (p *probe) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rid, ok := statusRequestID(r.URL.Path)
		if !ok {
			h.ServeHTTP(w, r)
			return
		}
		p.mu.Lock()
		p.inFlight++
		p.maxInFlight = max(p.maxInFlight, p.inFlight)
		p.perRequest[rid]++
		p.maxPerReq = max(p.maxPerReq, p.perRequest[rid])
		p.starts[rid] = append(p.starts[rid], time.Now())
		p.mu.Unlock()
		defer func() {
			p.mu.Lock()
			p.inFlight--
			p.perRequest[rid]--
			p.mu.Unlock()
		}()
		h.ServeHTTP(w, r)
	})
}

// span is the time from the first status call of rid to its last.
func (p *probe) span(rid string) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.starts[rid]
	if len(s) < 2 {
		return 0
	}
	return s[len(s)-1].Sub(s[0])
}

// polls counts the status calls of one request so far.
func (p *probe) polls(rid string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.starts[rid])
}

// pollsBetween counts the status calls of rid that began in [from, to).
func (p *probe) pollsBetween(rid string, from, to time.Time) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, s := range p.starts[rid] {
		if !s.Before(from) && s.Before(to) {
			n++
		}
	}
	return n
}

// startsOf returns when each status call of rid began, in order.
func (p *probe) startsOf(rid string) []time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.starts[rid])
}

func (p *probe) maxima() (total, perRequest int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.maxInFlight, p.maxPerReq
}

// upstream is the simulator on a real listener and a client of it.
type upstream struct {
	sim    *runcomfysim.Sim
	client *runcomfy.Client
	probe  *probe
}

// newUpstream starts a simulator. client, when set, adjusts the client's config
// (retries).
func newUpstream(t *testing.T, opts runcomfysim.Options, client func(*runcomfy.Config)) *upstream {
	t.Helper()
	opts.Token = simToken
	sim := runcomfysim.New(opts)
	p := newProbe()
	srv := httptest.NewServer(p.wrap(sim.Handler()))
	t.Cleanup(func() {
		srv.Close()
		sim.Close()
	})
	cfg := runcomfy.Config{
		BaseURL:     srv.URL,
		Token:       simToken,
		MaxRetries:  2,
		BackoffBase: time.Millisecond,
		BackoffMax:  5 * time.Millisecond,
	}
	if client != nil {
		client(&cfg)
	}
	c, err := runcomfy.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &upstream{sim: sim, client: c, probe: p}
}

// statusCalls is what the simulator counted on /status.
func (u *upstream) statusCalls() int { return u.sim.Calls(runcomfysim.EndpointStatus) }

// replica is what one gateway replica holds: its tracker on the shared backend.
type replica struct {
	backend *memory.Backend
	tracker *state.Tracker
}

// newReplica builds a tracker on b that schedules every change for a poll
// pollAfter later; retention is the records' time to live (0: default).
func newReplica(t *testing.T, b *memory.Backend, up *upstream, pollAfter, retention time.Duration) *replica {
	t.Helper()
	tr, err := state.NewTracker(state.TrackerConfig{
		Store: b, Results: up.client, Schedule: b, PollInterval: pollAfter, Retention: retention,
	})
	if err != nil {
		t.Fatal(err)
	}
	return &replica{backend: b, tracker: tr}
}

// start runs a reconciler with cfg, filling what the test left out, until the
// test ends.
func (r *replica) start(t *testing.T, up *upstream, cfg state.ReconcilerConfig) *state.Reconciler {
	t.Helper()
	if cfg.Schedule == nil {
		cfg.Schedule = r.backend
	}
	cfg.Tracker = r.tracker
	cfg.Upstream = up.client
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	if cfg.Owner == "" {
		cfg.Owner = "replica-" + t.Name()
	}
	rec, err := state.NewReconciler(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rec.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return rec
}

// submit starts a job upstream without asking for callbacks, and records it as
// the gateway's Submit does.
func (r *replica) submit(t *testing.T, up *upstream) string {
	t.Helper()
	return r.submitCreated(t, up, time.Now())
}

func (r *replica) submitCreated(t *testing.T, up *upstream, created time.Time) string {
	t.Helper()
	ctx := ctxT(t)
	resp, err := up.client.Submit(ctx, dep, []byte(`{"prompt":"x"}`), runcomfy.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.tracker.Apply(ctx, state.Update{
		RequestID: resp.RequestID, DeploymentID: dep, Source: "submit",
		State: runcomfy.StateQueued, CreatedAt: created,
	}); err != nil {
		t.Fatal(err)
	}
	return resp.RequestID
}

// scheduled reports whether rid is in the poll schedule at all.
func (r *replica) scheduled(t *testing.T, rid string) bool {
	t.Helper()
	ids, err := r.backend.Due(ctxT(t), time.Now().Add(1000*time.Hour), 1000)
	if err != nil {
		t.Fatal(err)
	}
	return slices.Contains(ids, rid)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls cond until it holds or limit passes.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(limit); ; time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, limit)
		}
	}
}

// waitTerminal waits for rid's record to be terminal and returns it.
func (r *replica) waitTerminal(t *testing.T, rid string, limit time.Duration) *state.Record {
	t.Helper()
	var rec *state.Record
	waitFor(t, limit, "request "+rid+" terminal", func() bool {
		got, err := r.tracker.Get(context.Background(), rid)
		if err != nil {
			return false
		}
		rec = got
		return got.Terminal()
	})
	return rec
}

// TestReconcilerFinishesRequestsWithoutCallbacks: no callback ever comes (none
// was asked for), and polling alone takes each request to its end, with the
// outputs of a success and the error of a failure, within a few intervals.
func TestReconcilerFinishesRequestsWithoutCallbacks(t *testing.T) {
	t.Parallel()
	const interval = 50 * time.Millisecond
	tests := []struct {
		name    string
		outcome runcomfysim.Outcome
		check   func(t *testing.T, rec *state.Record)
	}{
		{"succeeded", runcomfysim.Outcome{Images: 2}, func(t *testing.T, rec *state.Record) {
			if rec.State != runcomfy.StateSucceeded {
				t.Fatalf("state = %v, want succeeded", rec.State)
			}
			if len(rec.Outputs) == 0 || len(rec.OutputURLs) != 2 {
				t.Errorf("success without its outputs: outputs %s, urls %v", rec.Outputs, rec.OutputURLs)
			}
			if rec.FinishedAt.IsZero() || rec.StartedAt.IsZero() {
				t.Errorf("times missing: started %v, finished %v", rec.StartedAt, rec.FinishedAt)
			}
		}},
		{"failed", runcomfysim.Outcome{State: runcomfysim.OutcomeFailed, Error: &runcomfysim.Failure{Type: "OOM", Message: "out of memory"}}, func(t *testing.T, rec *state.Record) {
			if rec.State != runcomfy.StateFailed {
				t.Fatalf("state = %v, want failed", rec.State)
			}
			if rec.Error == nil || !strings.Contains(rec.Error.Message, "out of memory") {
				t.Errorf("error = %+v, want the upstream message", rec.Error)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			up := newUpstream(t, runcomfysim.Options{QueueTime: 30 * time.Millisecond, RunTime: 30 * time.Millisecond}, nil)
			up.sim.SetOutcome(func(string, []byte) runcomfysim.Outcome { return tt.outcome })
			r := newReplica(t, memory.New(nil), up, interval, 0)
			r.start(t, up, state.ReconcilerConfig{Interval: interval})
			rid := r.submit(t, up)
			if sub, _ := up.sim.LastSubmit(); sub.Webhook != "" {
				t.Fatalf("submit asked for callbacks at %q", sub.Webhook)
			}
			// The job ends upstream after 60ms; a few intervals later it must
			// have ended here too (waitLimit is only the hang guard).
			start := time.Now()
			rec := r.waitTerminal(t, rid, waitLimit)
			if took := time.Since(start); took > 40*interval {
				t.Errorf("terminal after %v, want within a few intervals of %v", took, interval)
			}
			tt.check(t, rec)
			if r.scheduled(t, rid) {
				t.Error("a finished request is still scheduled")
			}
			// Polling stops at the terminal state.
			calls := up.statusCalls()
			time.Sleep(5 * interval)
			if got := up.statusCalls(); got != calls {
				t.Errorf("%d status polls after the request finished, want 0", got-calls)
			}
		})
	}
}

// TestFreshUpdatesPostponePolls: a request that keeps changing (callbacks
// flowing) is never polled; once the updates stop, polling takes over.
func TestFreshUpdatesPostponePolls(t *testing.T) {
	t.Parallel()
	const (
		interval = 200 * time.Millisecond
		every    = 20 * time.Millisecond // ten updates per interval
		updates  = 50                    // a second of them: five intervals
	)
	up := newUpstream(t, runcomfysim.Options{Manual: true}, nil)
	r := newReplica(t, memory.New(nil), up, interval, 0)
	r.start(t, up, state.ReconcilerConfig{Interval: interval})
	rid := r.submit(t, up)
	ctx := ctxT(t)
	for i := range updates {
		pos := int64(updates - i) // each update a lower queue position: a change
		_, outcome, err := r.tracker.Apply(ctx, state.Update{
			RequestID: rid, DeploymentID: dep, Source: "callback", State: runcomfy.StateQueued, QueuePosition: &pos,
		})
		if err != nil || outcome != state.Applied {
			t.Fatalf("Apply %d: %v, %v", i, outcome, err)
		}
		time.Sleep(every)
	}
	if got := up.statusCalls(); got != 0 {
		t.Fatalf("%d status polls while updates kept coming every %v (interval %v), want 0", got, every, interval)
	}
	waitFor(t, waitLimit, "a poll once the updates stopped", func() bool { return up.statusCalls() > 0 })
}

// TestBackOffForRequestThatStaysQueued: a request that stays queued with nothing
// new is polled less and less often.
func TestBackOffForRequestThatStaysQueued(t *testing.T) {
	t.Parallel()
	const interval = 50 * time.Millisecond
	up := newUpstream(t, runcomfysim.Options{Manual: true}, nil)
	r := newReplica(t, memory.New(nil), up, interval, 0)
	r.start(t, up, state.ReconcilerConfig{Interval: interval}) // MaxInterval: 8 × 50ms
	rid := r.submit(t, up)
	start := time.Now()
	time.Sleep(40 * interval)
	first := up.probe.pollsBetween(rid, start, start.Add(20*interval))
	late := up.probe.pollsBetween(rid, start.Add(20*interval), start.Add(40*interval))
	t.Logf("polls in the first second: %d, in the second: %d", first, late)
	// At the base interval the second second would see 20 polls; backed off to
	// 400ms it sees about 2.5.
	if late >= 8 {
		t.Errorf("%d polls in the second second of an unchanging request, want well below the %d of the base interval", late, 20)
	}
	if late == 0 {
		t.Error("the request was no longer polled at all")
	}
	if first+late >= 20 {
		t.Errorf("%d polls in two seconds, want far fewer than the %d of the base interval", first+late, 40)
	}
}

// TestFailingPollsBackOff: a request whose status reads keep failing (RunComfy
// answering 500) is polled less and less often, as one that stays unchanged
// is, instead of at the base interval for as long as the failure lasts.
func TestFailingPollsBackOff(t *testing.T) {
	t.Parallel()
	const interval = 50 * time.Millisecond
	// No retries inside a poll: each status call is one poll.
	up := newUpstream(t, runcomfysim.Options{Manual: true}, func(c *runcomfy.Config) { c.MaxRetries = -1 })
	r := newReplica(t, memory.New(nil), up, interval, 0)
	rid := r.submit(t, up)
	up.sim.SetFaults(runcomfysim.Faults{Errors: map[string]runcomfysim.FaultError{
		"status": {HTTPStatus: 500, ErrorCode: 500001, Message: "Internal server error"},
	}})
	r.start(t, up, state.ReconcilerConfig{Interval: interval}) // MaxInterval: 8 × 50ms
	start := time.Now()
	time.Sleep(40 * interval)
	first := up.probe.pollsBetween(rid, start, start.Add(20*interval))
	late := up.probe.pollsBetween(rid, start.Add(20*interval), start.Add(40*interval))
	t.Logf("failing polls in the first second: %d, in the second: %d", first, late)
	if late >= 8 {
		t.Errorf("%d failing polls in the second second, want well below the %d of the base interval", late, 20)
	}
	if late == 0 {
		t.Error("the request was no longer polled at all")
	}
	if rec, err := r.tracker.Get(context.Background(), rid); err != nil || rec.Terminal() {
		t.Errorf("after failing reads: %+v, %v; want the request still unfinished", rec, err)
	}
}

// TestWatchedRequestIsPolledMoreOften: while someone watches a request, it is
// polled at half the interval however long it has been unchanged; another
// request, unwatched, backs off.
func TestWatchedRequestIsPolledMoreOften(t *testing.T) {
	t.Parallel()
	const interval = 100 * time.Millisecond
	up := newUpstream(t, runcomfysim.Options{Manual: true}, nil)
	r := newReplica(t, memory.New(nil), up, interval, 0)
	watched := r.submit(t, up)
	other := r.submit(t, up)
	r.start(t, up, state.ReconcilerConfig{
		Interval: interval,
		Watching: func(id string) bool { return id == watched },
	})
	time.Sleep(15 * interval)
	w, o := up.probe.polls(watched), up.probe.polls(other)
	t.Logf("watched polled %d times, unwatched %d", w, o)
	// Half the interval for 1.5s: about 20–30; backing off: about 4–5.
	if w < 8 || w < 2*o {
		t.Errorf("watched request polled %d times, unwatched %d: want the watched one far more often", w, o)
	}
}

// TestWatchedBringsThePollForward: Watched (a new watch) brings a request whose
// next poll is far off forward to half an interval from now.
func TestWatchedBringsThePollForward(t *testing.T) {
	t.Parallel()
	const interval = 200 * time.Millisecond
	up := newUpstream(t, runcomfysim.Options{Manual: true}, nil)
	// Each change schedules the next poll a minute on, as a long poll interval would.
	r := newReplica(t, memory.New(nil), up, time.Minute, 0)
	rid := r.submit(t, up)
	rc := r.start(t, up, state.ReconcilerConfig{Interval: interval})
	time.Sleep(2 * interval)
	if got := up.statusCalls(); got != 0 {
		t.Fatalf("%d polls before the request was due", got)
	}
	rc.Watched(ctxT(t), rid)
	waitFor(t, 20*interval, "a poll after Watched", func() bool { return up.probe.polls(rid) > 0 })
	// Watched on a request that is not scheduled must not schedule it.
	rc.Watched(ctxT(t), "req-unknown")
	if r.scheduled(t, "req-unknown") {
		t.Error("Watched scheduled a request the gateway does not track")
	}
}

// TestRateLimitPausesAllPolling: a 429 with Retry-After stops every poll of the
// replica, not only the one that got it, for as long as RunComfy asked; then
// polling resumes.
func TestRateLimitPausesAllPolling(t *testing.T) {
	t.Parallel()
	const interval = 50 * time.Millisecond
	tests := []struct {
		name        string
		concurrency int
		retries     int // the client's own retries, which honour Retry-After too
		// maxCalls is how many status calls may have been made before the
		// first 429 came back (those in flight at once).
		maxCalls int
	}{
		{"one poll at a time", 1, -1, 1},
		{"polls in parallel", 4, -1, 2},
		{"client retries first", 1, 1, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			up := newUpstream(t, runcomfysim.Options{Manual: true}, func(c *runcomfy.Config) { c.MaxRetries = tt.retries })
			r := newReplica(t, memory.New(nil), up, interval, 0)
			a, b := r.submit(t, up), r.submit(t, up)
			// Both due at the same instant, so that one read of the schedule
			// finds both.
			now := time.Now()
			for _, id := range []string{a, b} {
				if err := r.backend.SetDue(ctxT(t), id, now); err != nil {
					t.Fatal(err)
				}
			}
			up.sim.SetFaults(runcomfysim.Faults{Errors: map[string]runcomfysim.FaultError{
				runcomfysim.EndpointStatus: {HTTPStatus: http.StatusTooManyRequests, RetryAfter: "1"},
			}})
			rc := r.start(t, up, state.ReconcilerConfig{Interval: interval, MaxInterval: time.Minute, Concurrency: tt.concurrency})
			waitFor(t, waitLimit, "a first status poll", func() bool { return up.statusCalls() > 0 })
			first := time.Now()
			time.Sleep(100 * time.Millisecond)
			calls := up.statusCalls()
			if calls > tt.maxCalls {
				t.Errorf("%d status calls right after the first 429, want at most %d", calls, tt.maxCalls)
			}
			// Retry-After: 1 second. Nothing until then (a little before it,
			// for the timers' slack).
			time.Sleep(time.Until(first.Add(800 * time.Millisecond)))
			if got := up.statusCalls(); got != calls {
				t.Errorf("%d status calls during the 1s pause RunComfy asked for, want 0", got-calls)
			}
			// Then polling resumes, and once RunComfy stops refusing, both
			// requests are polled again.
			waitFor(t, waitLimit, "polls after the pause", func() bool { return up.statusCalls() > calls })
			up.sim.SetFaults(runcomfysim.Faults{})
			pa, pb := up.probe.polls(a), up.probe.polls(b)
			waitFor(t, waitLimit, "both requests polled after the 429s stopped", func() bool {
				return up.probe.polls(a) > pa && up.probe.polls(b) > pb
			})
			if rc.Polls() == 0 {
				t.Error("Polls() = 0")
			}
		})
	}
}

// TestRateLimitPauseIsBounded: a Retry-After longer than MaxInterval (an
// hour here) pauses polling for MaxInterval only, so a request without
// callbacks is still polled to its end.
func TestRateLimitPauseIsBounded(t *testing.T) {
	t.Parallel()
	const interval = 50 * time.Millisecond
	up := newUpstream(t, runcomfysim.Options{Manual: true}, func(c *runcomfy.Config) { c.MaxRetries = -1 })
	r := newReplica(t, memory.New(nil), up, interval, 0)
	id := r.submit(t, up)
	up.sim.SetFaults(runcomfysim.Faults{Errors: map[string]runcomfysim.FaultError{
		runcomfysim.EndpointStatus: {HTTPStatus: http.StatusTooManyRequests, RetryAfter: "3600", Times: 1},
	}})
	r.start(t, up, state.ReconcilerConfig{Interval: interval, MaxInterval: 4 * interval})
	waitFor(t, waitLimit, "the 429", func() bool { return up.statusCalls() > 0 })
	if err := up.sim.Finish(id, runcomfysim.Outcome{Images: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, waitLimit, "the request polled to its end after the pause", func() bool {
		rec, err := r.backend.Get(ctxT(t), id)
		return err == nil && rec.State == runcomfy.StateSucceeded
	})
}

// TestConcurrencyBound: however many requests are due, no more than
// Concurrency status polls are in flight at once.
func TestConcurrencyBound(t *testing.T) {
	t.Parallel()
	const (
		interval    = 50 * time.Millisecond
		concurrency = 3
		requests    = 20
		latency     = 200 * time.Millisecond
	)
	up := newUpstream(t, runcomfysim.Options{Manual: true}, nil)
	r := newReplica(t, memory.New(nil), up, interval, 0)
	for range requests {
		r.submit(t, up)
	}
	up.sim.SetFaults(runcomfysim.Faults{Latency: latency}) // after the submits, which it would slow too
	r.start(t, up, state.ReconcilerConfig{Interval: interval, Concurrency: concurrency})
	waitFor(t, waitLimit, "two rounds of polls", func() bool { return up.statusCalls() >= 2*concurrency })
	time.Sleep(4 * latency)
	total, _ := up.probe.maxima()
	if total > concurrency {
		t.Errorf("%d status polls in flight at once, want at most %d", total, concurrency)
	}
	if total < 2 {
		t.Errorf("at most %d status poll in flight with %d due: polls were serialised", total, requests)
	}
}

// TestOldRequestsAreDropped: a request older than the retention period is
// forgotten, not polled; a young one beside it is polled.
func TestOldRequestsAreDropped(t *testing.T) {
	t.Parallel()
	const interval = 50 * time.Millisecond
	up := newUpstream(t, runcomfysim.Options{Manual: true}, nil)
	r := newReplica(t, memory.New(nil), up, interval, 0)
	old := r.submitCreated(t, up, time.Now().Add(-2*time.Hour))
	young := r.submit(t, up)
	r.start(t, up, state.ReconcilerConfig{Interval: interval, Retention: time.Hour})
	waitFor(t, waitLimit, "the old request forgotten", func() bool { return !r.scheduled(t, old) })
	waitFor(t, waitLimit, "the young request polled", func() bool { return up.probe.polls(young) > 0 })
	time.Sleep(4 * interval)
	if got := up.probe.polls(old); got != 0 {
		t.Errorf("request older than the retention polled %d times, want 0", got)
	}
	if !r.scheduled(t, young) {
		t.Error("the young request was dropped")
	}
}

// TestExpiredRecordsAreForgotten: a scheduled request whose record has expired
// (Get: not found) is forgotten without a poll.
func TestExpiredRecordsAreForgotten(t *testing.T) {
	t.Parallel()
	const interval = 50 * time.Millisecond
	up := newUpstream(t, runcomfysim.Options{Manual: true}, nil)
	// Records live 100ms; each change schedules a poll 300ms on, after expiry.
	r := newReplica(t, memory.New(nil), up, 300*time.Millisecond, 100*time.Millisecond)
	rid := r.submit(t, up)
	// And one that never had a record at all.
	if err := r.backend.SetDue(ctxT(t), "req-no-record", time.Now()); err != nil {
		t.Fatal(err)
	}
	r.start(t, up, state.ReconcilerConfig{Interval: interval})
	waitFor(t, waitLimit, "the expired request forgotten", func() bool { return !r.scheduled(t, rid) })
	waitFor(t, waitLimit, "the request without record forgotten", func() bool { return !r.scheduled(t, "req-no-record") })
	if got := up.statusCalls(); got != 0 {
		t.Errorf("%d status polls of requests without a record, want 0", got)
	}
}

// TestTwoReplicasShareThePolling: two reconcilers (two replicas, owners of their
// own) on one backend never poll one request at the same time, never poll it
// again before the poll before it has set its next due time and that time has
// come, set that time half an interval on, and together poll each request
// about as often as one would, not twice as often.
func TestTwoReplicasShareThePolling(t *testing.T) {
	t.Parallel()
	const (
		interval = 200 * time.Millisecond
		requests = 8
		latency  = 20 * time.Millisecond
		// The polls are watched for at least window, and until each request
		// has had rounds of them.
		window = 10 * interval
		rounds = 10
	)
	up := newUpstream(t, runcomfysim.Options{Manual: true}, nil)
	// Every reschedule of a request, by the trackers or the reconcilers, is
	// noted in log.
	b, log := memory.New(nil), newRescheduleLog()
	r1 := newLoggedReplica(t, b, log, up, interval)
	r2 := newLoggedReplica(t, b, log, up, interval)
	var ids []string
	for range requests {
		ids = append(ids, r1.submit(t, up))
	}
	up.sim.SetFaults(runcomfysim.Faults{Latency: latency})
	// Everything watched: each request is due every half interval (±10%),
	// without back-off, so the expected rate is known. Concurrency below the
	// number of requests, so that due requests wait for a slot.
	watching := func(string) bool { return true }
	polled := &loggedSchedule{Backend: b, log: log, byPoller: true}
	started := time.Now()
	c1 := r1.start(t, up, state.ReconcilerConfig{Schedule: polled, Interval: interval, Concurrency: 2, Owner: "replica-1", Watching: watching})
	c2 := r2.start(t, up, state.ReconcilerConfig{Schedule: polled, Interval: interval, Concurrency: 2, Owner: "replica-2", Watching: watching})
	// However long a loaded machine takes to make them (the limit is a hang
	// guard).
	waitFor(t, 20*window, fmt.Sprintf("%v of polls, %d of every request", window, rounds), func() bool {
		if time.Since(started) < window {
			return false
		}
		for _, id := range ids {
			if up.probe.polls(id) < rounds {
				return false
			}
		}
		return true
	})
	// The calls first, then the reschedules: every reschedule made before a
	// call that was seen is seen too.
	starts := make(map[string][]time.Time, len(ids))
	for _, id := range ids {
		starts[id] = up.probe.startsOf(id)
	}
	watched := time.Since(started)
	_, perRequest := up.probe.maxima()
	if perRequest > 1 {
		t.Errorf("%d status polls of one request in flight at once, want 1", perRequest)
	}
	t.Logf("polls by replica-1: %d, by replica-2: %d in %v", c1.Polls(), c2.Polls(), watched)
	// One poll per half interval: about 20 each in the window (more if
	// the watch lasted longer); twice that would mean both replicas polled
	// each one.
	perHalf := int(watched / (interval / 2))
	for _, id := range ids {
		n := len(starts[id])
		if n > perHalf*3/2 {
			t.Errorf("request %s polled %d times in %v, want about %d (one replica at a time)", id, n, watched, perHalf)
		}
		// The gaps between the calls themselves prove nothing on a loaded
		// machine: a poll that took longer than half an interval from its
		// start leaves the request due at once, and the next call may
		// rightly follow within milliseconds. What holds at any speed is
		// read from the schedule instead.
		for _, bad := range log.offSchedule(id, starts[id], interval/2*9/10) {
			t.Errorf("request %s: %s", id, bad)
		}
	}
}

// rescheduleLog notes, for each request, every reschedule: when it was made
// and the due time it set (Forget: none).
type rescheduleLog struct {
	mu   sync.Mutex
	sets map[string][]reschedule
}

type reschedule struct {
	made, due time.Time
	forgot    bool
	// byPoller: made by a reconciler after its poll, as opposed to a
	// tracker saving a change.
	byPoller bool
}

func newRescheduleLog() *rescheduleLog {
	return &rescheduleLog{sets: make(map[string][]reschedule)}
}

func (l *rescheduleLog) note(id string, r reschedule) {
	l.mu.Lock()
	l.sets[id] = append(l.sets[id], r)
	l.mu.Unlock()
}

// loggedSchedule is a memory backend's schedule whose reschedules are noted
// in log, each before it takes effect, so that any read of the schedule
// that sees it comes after the time noted.
type loggedSchedule struct {
	*memory.Backend
	log      *rescheduleLog
	byPoller bool
}

func (s *loggedSchedule) SetDue(ctx context.Context, requestID string, at time.Time) error {
	s.log.note(requestID, reschedule{made: time.Now(), due: at, byPoller: s.byPoller})
	return s.Backend.SetDue(ctx, requestID, at)
}

func (s *loggedSchedule) Forget(ctx context.Context, requestID string) error {
	s.log.note(requestID, reschedule{made: time.Now(), forgot: true, byPoller: s.byPoller})
	return s.Backend.Forget(ctx, requestID)
}

// offSchedule describes what, in the status calls of id begun at starts and
// the reschedules noted, breaks the schedule:
//   - a call with no reschedule between it and the call before it: the
//     earlier poll left the request due, or another replica polled it on a
//     read of the schedule from before that poll's reschedule;
//   - a call begun before the due time last set, or after the request left
//     the schedule;
//   - a reconciler's reschedule less than pace after the due time the poll
//     before it was made at. A poll begins at or after that due time (it was
//     read as due), and is due again its pace from its beginning, however
//     long it took, so this holds at any speed.
func (l *rescheduleLog) offSchedule(id string, starts []time.Time, pace time.Duration) []string {
	l.mu.Lock()
	sets := slices.Clone(l.sets[id])
	l.mu.Unlock()
	var bad []string
	for i, at := range starts {
		// The reschedules made before the call began: the last one is
		// what made it due.
		j := -1
		for k, r := range sets {
			if r.made.Before(at) {
				j = k
			}
		}
		switch {
		case j < 0:
			bad = append(bad, fmt.Sprintf("status call %d made before the request was scheduled", i+1))
			continue
		case i > 0 && !sets[j].made.After(starts[i-1]):
			bad = append(bad, fmt.Sprintf("status call %d made %v after call %d with no reschedule between them", i+1, at.Sub(starts[i-1]), i))
		case sets[j].forgot:
			bad = append(bad, fmt.Sprintf("status call %d made after the request left the schedule", i+1))
			continue
		case at.Before(sets[j].due):
			bad = append(bad, fmt.Sprintf("status call %d made %v before the due time the last reschedule set", i+1, sets[j].due.Sub(at)))
		}
		// The reconciler's reschedules after this call, until the next.
		for _, r := range sets[j+1:] {
			if i+1 < len(starts) && !r.made.Before(starts[i+1]) {
				break
			}
			if r.byPoller && !r.forgot && r.due.Sub(sets[j].due) < pace {
				bad = append(bad, fmt.Sprintf("poll %d set the next due time %v after the one it was made at, want at least %v", i+1, r.due.Sub(sets[j].due), pace))
			}
		}
	}
	return bad
}

// newLoggedReplica builds a tracker on b that schedules each change a poll
// pollAfter later, its reschedules noted in log.
func newLoggedReplica(t *testing.T, b *memory.Backend, log *rescheduleLog, up *upstream, pollAfter time.Duration) *replica {
	t.Helper()
	tr, err := state.NewTracker(state.TrackerConfig{
		Store: b, Results: up.client, Schedule: &loggedSchedule{Backend: b, log: log}, PollInterval: pollAfter,
	})
	if err != nil {
		t.Fatal(err)
	}
	return &replica{backend: b, tracker: tr}
}

// TestDeadReplicaIsReplaced: a replica died holding a request's lease (taken,
// never released); once the lease expires, another replica polls the request to
// its end.
func TestDeadReplicaIsReplaced(t *testing.T) {
	t.Parallel()
	const (
		interval = 50 * time.Millisecond
		leaseTTL = 500 * time.Millisecond
	)
	up := newUpstream(t, runcomfysim.Options{QueueTime: 20 * time.Millisecond, RunTime: 20 * time.Millisecond}, nil)
	r := newReplica(t, memory.New(nil), up, interval, 0)
	rid := r.submit(t, up)
	taken := time.Now()
	if ok, err := r.backend.Lease(ctxT(t), rid, "replica-dead", leaseTTL); err != nil || !ok {
		t.Fatalf("Lease = %v, %v", ok, err)
	}
	r.start(t, up, state.ReconcilerConfig{Interval: interval, Owner: "replica-alive"})
	time.Sleep(time.Until(taken.Add(leaseTTL - 100*time.Millisecond)))
	if got := up.statusCalls(); got != 0 {
		t.Fatalf("%d status polls while the dead replica's lease held", got)
	}
	rec := r.waitTerminal(t, rid, waitLimit)
	if rec.State != runcomfy.StateSucceeded || len(rec.OutputURLs) == 0 {
		t.Errorf("record = %v with %d outputs, want succeeded with outputs", rec.State, len(rec.OutputURLs))
	}
}

// TestNewReconcilerRefusesMissingDependencies pins the constructor's checks.
func TestNewReconcilerRefusesMissingDependencies(t *testing.T) {
	up := newUpstream(t, runcomfysim.Options{Manual: true}, nil)
	r := newReplica(t, memory.New(nil), up, time.Second, 0)
	full := func() state.ReconcilerConfig {
		return state.ReconcilerConfig{
			Schedule: r.backend, Tracker: r.tracker, Upstream: up.client,
			Logger: slog.New(slog.DiscardHandler), Owner: "replica-1",
		}
	}
	tests := []struct {
		name string
		edit func(*state.ReconcilerConfig)
	}{
		{"schedule", func(c *state.ReconcilerConfig) { c.Schedule = nil }},
		{"tracker", func(c *state.ReconcilerConfig) { c.Tracker = nil }},
		{"upstream", func(c *state.ReconcilerConfig) { c.Upstream = nil }},
		{"logger", func(c *state.ReconcilerConfig) { c.Logger = nil }},
		{"owner", func(c *state.ReconcilerConfig) { c.Owner = "" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := full()
			tt.edit(&cfg)
			if _, err := state.NewReconciler(cfg); err == nil {
				t.Errorf("NewReconciler without %s: no error", tt.name)
			}
		})
	}
	if _, err := state.NewReconciler(full()); err != nil {
		t.Errorf("NewReconciler with everything: %v", err)
	}
}

// TestRequestLostUpstreamEnds: a request RunComfy answers "not found" for,
// at polls at least an interval apart, ends FAILED with
// ErrorTypeUpstreamLost instead of staying unfinished (and watched) forever;
// a single such answer does not end it.
func TestRequestLostUpstreamEnds(t *testing.T) {
	t.Parallel()
	const interval = 50 * time.Millisecond
	up := newUpstream(t, runcomfysim.Options{Manual: true}, nil)
	r := newReplica(t, memory.New(nil), up, interval, 0)
	r.start(t, up, state.ReconcilerConfig{Interval: interval})
	rid := r.submit(t, up)
	up.sim.SetFaults(runcomfysim.Faults{Errors: map[string]runcomfysim.FaultError{
		"status": {HTTPStatus: 404, ErrorCode: 404001, Message: "Request not found"},
	}})
	start := time.Now()
	rec := r.waitTerminal(t, rid, waitLimit)
	took := time.Since(start)
	if rec.State != runcomfy.StateFailed || rec.Error == nil || rec.Error.Type != state.ErrorTypeUpstreamLost {
		t.Fatalf("record %+v (error %+v), want failed with %q", rec, rec.Error, state.ErrorTypeUpstreamLost)
	}
	if n := up.probe.polls(rid); n < 2 {
		t.Errorf("ended after %d status calls, want at least two (one answer may be a glitch)", n)
	}
	if span := up.probe.span(rid); span < interval {
		t.Errorf("ended on answers %v apart, want at least an interval (%v)", span, interval)
	}
	t.Logf("ended after %v and %d status calls", took, up.probe.polls(rid))
	if r.scheduled(t, rid) {
		t.Error("an ended request is still scheduled")
	}
}
