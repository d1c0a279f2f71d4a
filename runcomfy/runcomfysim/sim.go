// Package runcomfysim is an in-process simulator of the RunComfy Serverless API.
//
// The real service cannot be reached from test and CI machines, so everything that
// talks to RunComfy is exercised against this simulator instead: unit and integration
// tests, the gateway's --simulate mode, and the load benchmarks. It therefore speaks
// every response variant documented in RUNCOMFY_API.md (both cancel shapes, both
// spellings of "cancelled", "completed" on /status, errors as objects or arrays, HTTP
// 200 answers carrying an error_code) and can be told, at run time, to misbehave the
// way upstream is known to: slow answers, injected errors, and webhook callbacks that
// are dropped, duplicated, reordered or sent before the submit answer.
//
// Jobs move through in_queue, in_progress and a terminal state on timers owned by one
// scheduler goroutine, or only when Advance is called (Options.Manual) so that tests
// are deterministic. Close stops the scheduler and every callback delivery.
//
// queue_position on /status is 0-based: it counts the queued jobs of the same
// deployment submitted before this one, so 0 means "next to start". Jobs of one
// deployment do not wait for each other to finish (no concurrency limit is
// simulated); each leaves the queue after Options.QueueTime.
//
// Jobs are kept for the life of the Sim (upstream keeps results for 7 days), so a
// very long benchmark grows memory by a few hundred bytes per request.
package runcomfysim

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Endpoint names, as accepted by Calls and used as keys of Faults.Errors.
const (
	EndpointSubmit = "submit"
	EndpointStatus = "status"
	EndpointResult = "result"
	EndpointCancel = "cancel"
	// EndpointMedia counts downloads of output images; it is not part of TotalCalls
	// because RunComfy serves outputs from separate storage, not from the API.
	EndpointMedia = "media"
)

// Sentinel errors returned by the manual-control methods, so tests can tell a typo
// in a request id from a job that already finished.
var (
	// ErrUnknownRequest: no job with this request id was ever submitted.
	ErrUnknownRequest = errors.New("runcomfysim: unknown request")
	// ErrTerminal: the job already reached succeeded, failed or cancelled.
	ErrTerminal = errors.New("runcomfysim: request already finished")
	// ErrClosed: the simulator was closed; jobs no longer move.
	ErrClosed = errors.New("runcomfysim: closed")
)

// Defaults applied by New to zero-valued options that cannot sensibly be zero.
const (
	defaultCallbackRetries = 5
	defaultCallbackBackoff = 50 * time.Millisecond
	defaultCallbackTimeout = 10 * time.Second
	defaultSubmitHistory   = 1000
	// maxBodyBytes bounds one submit body; RunComfy documents no limit, but inline
	// base64 media can be large, so the bound is generous.
	maxBodyBytes = 64 << 20
)

// Options configure a Sim. The zero value is valid: jobs go through every state
// instantly (all durations zero), any non-empty bearer token is accepted, and URLs
// are derived from the incoming request's Host.
type Options struct {
	// Token is the bearer token every API call must carry. Empty accepts any
	// non-empty bearer token, which is what most tests want.
	Token string
	// QueueTime is how long a job stays in_queue before it starts. Zero starts it
	// during the submit call itself.
	QueueTime time.Duration
	// RunTime is how long a job stays in_progress before it finishes. Zero finishes
	// it as soon as it starts.
	RunTime time.Duration
	// CancelDelay is how long a cancel of a running job takes to turn its status to
	// cancelled, since upstream cancels running jobs asynchronously. Zero is instant.
	CancelDelay time.Duration
	// Manual stops every timer: jobs move only when Advance or Finish is called, so
	// tests observe each state deterministically. Durations are then ignored.
	Manual bool
	// PublicURL is the base (scheme://host[:port]) used in status_url, result_url,
	// cancel_url and output image URLs. Empty derives it from the request's Host, which
	// is right for httptest servers and local runs.
	PublicURL string
	// Logger receives debug logs of transitions and callback deliveries. Nil discards.
	Logger *slog.Logger
	// Now is the clock used for the timestamps the API reports (created_at...). Timers
	// still run on real time, so a fake clock only changes what is reported. Nil uses
	// time.Now.
	Now func() time.Time
	// HTTPClient posts webhook callbacks and fetches inputs (FetchInputs). Nil uses
	// a client owned by the Sim, whose idle connections are closed by Close.
	HTTPClient *http.Client
	// CallbackRetries is how many times a callback answered with a non-2xx status (or
	// not answered) is sent again, with exponential backoff. Zero means 5; negative
	// means never retry. Upstream retries for 24 hours; tests need it short.
	CallbackRetries int
	// CallbackBackoff is the wait before the first retry; it doubles each time. Zero
	// means 50ms.
	CallbackBackoff time.Duration
	// CallbackTimeout bounds one callback attempt. Zero means 10s (upstream's
	// documented patience).
	CallbackTimeout time.Duration
	// SubmitHistory is how many SubmitRecords are kept (oldest dropped first), so a
	// long benchmark does not hold every body in memory. Zero means 1000; negative
	// keeps none.
	SubmitHistory int
	// OutputBytes is the size of each output image served under /media. Zero
	// serves a small PNG; a larger size pads that PNG with an ancillary chunk of
	// bytes derived from the request and the file name (the same on every
	// download; WriteOutput writes them), so that copying outputs meets files
	// of a realistic size.
	OutputBytes int
	// FetchInputs makes a submit read its media inputs the way RunComfy does before
	// it queues a job: every string value of the body that is an absolute http(s)
	// URL is downloaded with a GET (30s and 256 MiB at most each), every base64
	// data: URI decoded, and a failure refuses the submit with 422001. Tests then
	// prove the gateway handed over a URL RunComfy can reach, and the right bytes
	// (SubmitRecord.Inputs). The legacy body key "webhook" is not an input. Off by
	// default because most tests submit placeholder URLs that lead nowhere.
	FetchInputs bool
}

// DefaultOptions returns timings that make a job's life visible to a human watching
// a demo (`make run`): one second queued, two seconds running.
func DefaultOptions() Options {
	return Options{
		QueueTime:   time.Second,
		RunTime:     2 * time.Second,
		CancelDelay: 500 * time.Millisecond,
	}
}

// DeploymentState is how the simulator answers for one deployment id. Every id is
// DeploymentActive unless SetDeployment says otherwise, so tests need no setup.
type DeploymentState int

// Deployment states and the upstream error each one produces.
const (
	// DeploymentActive accepts submits.
	DeploymentActive DeploymentState = iota
	// DeploymentDisabled rejects submits with HTTP 403, error_code 10002; requests
	// already submitted stay readable.
	DeploymentDisabled
	// DeploymentDeleted answers every call with HTTP 404, error_code 10003.
	DeploymentDeleted
	// DeploymentNoFunds rejects submits with HTTP 402, error_code 10001; requests
	// already submitted stay readable.
	DeploymentNoFunds
	// DeploymentUnknown answers every call with HTTP 404, error_code 404001.
	DeploymentUnknown
)

// String names the state for logs and test output.
func (d DeploymentState) String() string {
	switch d {
	case DeploymentActive:
		return "active"
	case DeploymentDisabled:
		return "disabled"
	case DeploymentDeleted:
		return "deleted"
	case DeploymentNoFunds:
		return "no_funds"
	case DeploymentUnknown:
		return "unknown"
	default:
		return fmt.Sprintf("DeploymentState(%d)", int(d))
	}
}

// Outcome states accepted in Outcome.State.
const (
	OutcomeSucceeded = "succeeded"
	OutcomeFailed    = "failed"
)

// Outcome decides how a job ends once it has run. It is chosen at submit time by the
// function given to SetOutcome (or given directly to Finish), so a test can make
// particular inputs fail.
type Outcome struct {
	// State is OutcomeSucceeded or OutcomeFailed; empty means succeeded.
	State string
	// Error describes a failure; nil gives a generic one. Ignored on success.
	Error *Failure
	// Images is how many output images a successful job has; zero means one.
	Images int
	// Caption is the text output of the "38:42" node; empty means "a caption".
	Caption string
}

// Failure is the description of a failed job, rendered in the shape chosen by
// Faults.ErrorStyle and Faults.ErrorArray.
type Failure struct {
	Type      string
	Message   string
	DebugInfo string
	Code      int
}

// SubmitRecord is one submit call as the simulator received it, so tests can check
// what the gateway forwarded byte for byte.
type SubmitRecord struct {
	// APIVersion is "v1" or "v2", from the path.
	APIVersion   string
	DeploymentID string
	// Body is the request body exactly as received (legacy webhook keys included).
	Body []byte
	// Query is the parsed query string.
	Query url.Values
	// Webhook and WebhookIntermediateStatus are what the simulator understood, from
	// the query or, failing that, the legacy body keys.
	Webhook                   string
	WebhookIntermediateStatus bool
	// HTTPStatus is the status answered; RequestID is empty unless a job was created.
	HTTPStatus int
	RequestID  string
	// Inputs is what Options.FetchInputs read, in document order; on a submit
	// refused because an input could not be read, those read before it.
	Inputs []FetchedInput
	// At is when the call arrived, on Options.Now.
	At time.Time
}

// CallbackStats counts webhook deliveries, so tests can wait for or assert on them
// without running their own counter.
type CallbackStats struct {
	// Attempts is every POST tried, retries included.
	Attempts int64
	// Delivered is callbacks answered with a 2xx.
	Delivered int64
	// Failed is callbacks given up on after the last retry (or at Close).
	Failed int64
	// Dropped is callbacks not sent because of Faults.DropCallbacks.
	Dropped int64
}

// Sim is a simulated RunComfy Serverless API. Create it with New, serve Handler, and
// Close it when done. All methods are safe for concurrent use.
type Sim struct {
	opts      Options
	log       *slog.Logger
	now       func() time.Time
	client    *http.Client
	transport *http.Transport // non-nil only when the Sim owns the client
	png       []byte
	mux       *http.ServeMux
	calls     map[string]*atomic.Int64 // fixed at New, read without lock

	// ctx is cancelled by Close; it bounds callback deliveries and latency sleeps.
	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup // scheduler and callback deliveries
	wake      chan struct{}  // nudges the scheduler when an earlier event is queued
	closeOnce sync.Once

	attempts, delivered, failed, dropped atomic.Int64

	mu          sync.Mutex
	closed      bool
	faults      Faults
	remaining   map[string]int // calls left for FaultError.Times > 0
	deployments map[string]DeploymentState
	outcome     func(deploymentID string, input []byte) Outcome
	jobs        map[string]*job
	queues      map[string][]*job // queued jobs per deployment, in submit order
	events      eventHeap
	eventSeq    uint64
	queueSeq    uint64
	submits     []SubmitRecord
}

// New returns a running simulator. Its scheduler goroutine runs until Close.
func New(opts Options) *Sim {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.CallbackRetries == 0 {
		opts.CallbackRetries = defaultCallbackRetries
	}
	if opts.CallbackRetries < 0 {
		opts.CallbackRetries = 0
	}
	if opts.CallbackBackoff <= 0 {
		opts.CallbackBackoff = defaultCallbackBackoff
	}
	if opts.CallbackTimeout <= 0 {
		opts.CallbackTimeout = defaultCallbackTimeout
	}
	if opts.SubmitHistory == 0 {
		opts.SubmitHistory = defaultSubmitHistory
	}
	opts.PublicURL = strings.TrimRight(opts.PublicURL, "/")

	ctx, cancel := context.WithCancel(context.Background())
	s := &Sim{
		opts:        opts,
		log:         opts.Logger,
		now:         opts.Now,
		client:      opts.HTTPClient,
		png:         tinyPNG(),
		calls:       make(map[string]*atomic.Int64),
		ctx:         ctx,
		cancel:      cancel,
		wake:        make(chan struct{}, 1),
		remaining:   make(map[string]int),
		deployments: make(map[string]DeploymentState),
		jobs:        make(map[string]*job),
		queues:      make(map[string][]*job),
	}
	if s.client == nil {
		// An owned transport, so Close can close its idle connections and leave no
		// connection goroutines behind.
		s.transport = &http.Transport{
			Proxy:               nil,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     30 * time.Second,
		}
		s.client = &http.Client{Transport: s.transport}
	}
	for _, ep := range []string{EndpointSubmit, EndpointStatus, EndpointResult, EndpointCancel, EndpointMedia} {
		s.calls[ep] = new(atomic.Int64)
	}
	s.mux = s.routes()

	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.schedule()
	}()
	return s
}

// Handler serves the API under /prod/v1 and /prod/v2 and the output images under
// /media.
func (s *Sim) Handler() http.Handler { return s.mux }

// Close stops the scheduler and every callback delivery (callbacks in flight are
// abandoned) and waits for their goroutines to end. Jobs stop moving; API calls are
// answered 503 afterwards. Close is idempotent and safe to call concurrently.
func (s *Sim) Close() {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.events = nil
		s.mu.Unlock()
		s.cancel()
		s.wg.Wait()
		if s.transport != nil {
			s.transport.CloseIdleConnections()
		}
	})
}

// Calls reports how many calls reached the handler of one endpoint (see the Endpoint
// constants), rejected ones included, so tests can assert on retries and caching.
func (s *Sim) Calls(endpoint string) int {
	c, ok := s.calls[endpoint]
	if !ok {
		return 0
	}
	return int(c.Load())
}

// TotalCalls is the sum of Calls over the four API endpoints (media excluded).
func (s *Sim) TotalCalls() int {
	return s.Calls(EndpointSubmit) + s.Calls(EndpointStatus) + s.Calls(EndpointResult) + s.Calls(EndpointCancel)
}

// LastSubmit returns the most recent submit that passed the bearer check, whether it
// was accepted or not.
func (s *Sim) LastSubmit() (SubmitRecord, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.submits) == 0 {
		return SubmitRecord{}, false
	}
	return s.submits[len(s.submits)-1], true
}

// Submits returns the kept submit records, oldest first (see Options.SubmitHistory).
func (s *Sim) Submits() []SubmitRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]SubmitRecord, len(s.submits))
	copy(out, s.submits)
	return out
}

// CallbackStats returns the webhook delivery counters.
func (s *Sim) CallbackStats() CallbackStats {
	return CallbackStats{
		Attempts:  s.attempts.Load(),
		Delivered: s.delivered.Load(),
		Failed:    s.failed.Load(),
		Dropped:   s.dropped.Load(),
	}
}

// SetFaults replaces the whole fault configuration. Counters of FaultError.Times
// restart from the new values. The Errors map is copied, so the caller may reuse it.
func (s *Sim) SetFaults(f Faults) {
	errs := make(map[string]FaultError, len(f.Errors))
	for k, v := range f.Errors {
		errs[k] = v
	}
	f.Errors = errs
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = f
	clear(s.remaining)
	for k, v := range errs {
		s.remaining[k] = v.Times
	}
}

// SetDeployment sets how the simulator answers for one deployment id.
func (s *Sim) SetDeployment(id string, st DeploymentState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st == DeploymentActive {
		delete(s.deployments, id)
		return
	}
	s.deployments[id] = st
}

// SetOutcome installs the function that decides, at submit time, how each job will
// end. Nil restores the default: every job succeeds with one image.
func (s *Sim) SetOutcome(fn func(deploymentID string, input []byte) Outcome) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.outcome = fn
}

// Advance moves one job to its next state now: in_queue to in_progress, in_progress
// to its outcome (or to cancelled when a cancel is pending). Outside Manual mode the
// automatic lifecycle continues from the new state.
func (s *Sim) Advance(requestID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	j, err := s.jobLocked(requestID)
	if err != nil {
		return fmt.Errorf("advance %s: %w", requestID, err)
	}
	switch j.state {
	case stateQueued:
		s.startLocked(j)
	case stateRunning:
		if j.cancelRequested {
			s.cancelLocked(j)
		} else {
			s.finishLocked(j)
		}
	default:
		return fmt.Errorf("advance %s: %w", requestID, ErrTerminal)
	}
	return nil
}

// Finish drives a job straight to the end with the given outcome, passing through
// in_progress (and its callback) if it was still queued. A pending cancel is
// overridden, so tests can pin the "finished before the cancel took effect" race.
func (s *Sim) Finish(requestID string, o Outcome) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	j, err := s.jobLocked(requestID)
	if err != nil {
		return fmt.Errorf("finish %s: %w", requestID, err)
	}
	if j.state.terminal() {
		return fmt.Errorf("finish %s: %w", requestID, ErrTerminal)
	}
	j.outcome = o
	j.cancelRequested = false
	if j.state == stateQueued {
		s.startLocked(j)
	}
	if j.state == stateRunning {
		s.finishLocked(j)
	}
	return nil
}

// JobState returns the canonical status of a job ("in_queue", "in_progress",
// "succeeded", "failed" or "cancelled"), whatever spelling faults are active, so tests
// can wait for a state without going through HTTP.
func (s *Sim) JobState(requestID string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j, ok := s.jobs[requestID]
	if !ok {
		return "", false
	}
	return j.state.String(), true
}

// FinishedAt returns when a job reached its terminal state (on Options.Now),
// and false while it has not, so a soak can measure how long the news took to
// reach the gateway's watchers.
func (s *Sim) FinishedAt(requestID string) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j, ok := s.jobs[requestID]
	if !ok || !j.state.terminal() {
		return time.Time{}, false
	}
	return j.finishedAt, true
}

func (s *Sim) jobLocked(requestID string) (*job, error) {
	if s.closed {
		return nil, ErrClosed
	}
	j, ok := s.jobs[requestID]
	if !ok {
		return nil, ErrUnknownRequest
	}
	return j, nil
}

func (s *Sim) currentFaults() Faults {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.faults
}

func (s *Sim) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// goLocked starts fn on a goroutine owned by the Sim, unless the Sim is closed. The
// caller holds s.mu, which orders wg.Add before Close's wg.Wait.
func (s *Sim) goLocked(fn func()) bool {
	if s.closed {
		return false
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		fn()
	}()
	return true
}

// sleep waits for d, or until ctx or the Sim is done; it reports whether d elapsed.
func (s *Sim) sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-s.ctx.Done():
		return false
	}
}

// authorized checks the bearer token in constant time.
func (s *Sim) authorized(r *http.Request) bool {
	h := r.Header.Get("Authorization")
	const prefix = "bearer "
	if len(h) < len(prefix) || !strings.EqualFold(h[:len(prefix)], prefix) {
		return false
	}
	tok := strings.TrimSpace(h[len(prefix):])
	if tok == "" {
		return false
	}
	if s.opts.Token == "" {
		return true
	}
	return subtle.ConstantTimeCompare([]byte(tok), []byte(s.opts.Token)) == 1
}

// newUUID returns a random version 4 UUID, the shape of RunComfy's request ids.
func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var out [36]byte
	hex.Encode(out[0:8], b[0:4])
	out[8] = '-'
	hex.Encode(out[9:13], b[4:6])
	out[13] = '-'
	hex.Encode(out[14:18], b[6:8])
	out[18] = '-'
	hex.Encode(out[19:23], b[8:10])
	out[23] = '-'
	hex.Encode(out[24:], b[10:])
	return string(out[:])
}
