package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/comfygate/comfygate/state/redisstore"
)

// ---- the upstream proxy ----

// upstream is the proxy between the replicas and the simulator. It counts
// submits (into cluster.submits) and records every status and result call:
// which replica made it, for which request, who held the request's lease, when
// it arrived and when and how it was answered. It can slow those calls down
// and answer status calls 429 for a while.
type upstream struct {
	target  *url.URL
	submits *atomic.Int64
	proxy   *httputil.ReverseProxy
	tr      *http.Transport
	srvs    []*httptest.Server

	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every change below
	// statusDelay and resultDelay hold every status (result) call this long
	// before it goes on.
	statusDelay, resultDelay time.Duration
	// throttle: once armed, status calls are answered 429 with Retry-After
	// for throttleFor from the first one so answered.
	throttleArmed bool
	throttleFrom  time.Time
	throttleFor   time.Duration
	retryAfter    string
	calls         []*statusCall
	submitQueries []url.Values
	// holderOf names the replica holding a request's poll lease in Redis
	// ("" for none); pids maps the replicas' pids to their names for it.
	holderOf func(requestID string) string
	pids     map[int]string
	// mediaHeld, when set, holds every output download (GET /media/...)
	// until it is closed; mediaCalls counts the downloads that arrived.
	mediaHeld  chan struct{}
	mediaCalls int
	// cancels lists, by request, the replicas whose cancel calls reached
	// RunComfy.
	cancels map[string][]string
}

// cancelsOf names the replicas whose cancels of requestID reached RunComfy,
// one entry per call.
func (u *upstream) cancelsOf(requestID string) []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.cancels[requestID])
}

// holdMedia holds output downloads until the returned function is called.
func (u *upstream) holdMedia() (release func()) {
	ch := make(chan struct{})
	u.mu.Lock()
	u.mediaHeld = ch
	u.mu.Unlock()
	return sync.OnceFunc(func() { close(ch) })
}

// media returns how many output downloads arrived.
func (u *upstream) media() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.mediaCalls
}

// statusCall is one GET .../status (or .../result) as the proxy saw it.
type statusCall struct {
	Kind      string // "status" or "result"
	Replica   string
	RequestID string
	At        time.Time // arrival
	Done      time.Time // answer sent (or the caller gone); zero while in flight
	Code      int       // the answer's HTTP status; 0 if none was sent
	// Holder is the replica that held the request's poll lease when the call
	// arrived: "" for nobody, "pid N" for a process that is no replica.
	Holder string
}

func newUpstream(target *url.URL, submits *atomic.Int64) *upstream {
	u := &upstream{target: target, submits: submits, tr: &http.Transport{}, changed: make(chan struct{}), pids: map[int]string{}}
	u.proxy = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			r.Out.Host = r.In.Host // the simulator writes result URLs from Host
		},
		Transport: u.tr,
	}
	return u
}

// listen starts a listener for one replica and returns its URL.
func (u *upstream) listen(replica string) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.serve(replica, w, r)
	}))
	u.mu.Lock()
	u.srvs = append(u.srvs, srv)
	u.mu.Unlock()
	return srv.URL
}

func (u *upstream) close() {
	u.mu.Lock()
	srvs := u.srvs
	u.mu.Unlock()
	for _, s := range srvs {
		s.Close()
	}
	u.tr.CloseIdleConnections()
}

func (u *upstream) notifyLocked() {
	close(u.changed)
	u.changed = make(chan struct{})
}

// readCall returns the kind ("status" or "result") and request id of a
// GET /prod/{version}/deployments/{d}/requests/{r}/{kind}.
func readCall(r *http.Request) (kind, requestID string, ok bool) {
	if r.Method != http.MethodGet {
		return "", "", false
	}
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if len(parts) != 7 || parts[0] != "prod" || parts[2] != "deployments" || parts[4] != "requests" ||
		(parts[6] != "status" && parts[6] != "result") {
		return "", "", false
	}
	return parts[6], parts[5], true
}

func (u *upstream) serve(replica string, w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/inference") {
		u.submits.Add(1)
		u.mu.Lock()
		u.submitQueries = append(u.submitQueries, r.URL.Query())
		u.mu.Unlock()
	}
	if rid, ok := strings.CutSuffix(r.URL.Path, "/cancel"); ok && r.Method == http.MethodPost {
		rid = rid[strings.LastIndexByte(rid, '/')+1:]
		u.mu.Lock()
		if u.cancels == nil {
			u.cancels = map[string][]string{}
		}
		u.cancels[rid] = append(u.cancels[rid], replica)
		u.mu.Unlock()
	}
	if strings.HasPrefix(r.URL.Path, "/media/") {
		u.mu.Lock()
		u.mediaCalls++
		held := u.mediaHeld
		u.notifyLocked()
		u.mu.Unlock()
		if held != nil {
			select {
			case <-held:
			case <-r.Context().Done():
				return
			}
		}
	}
	kind, rid, ok := readCall(r)
	if !ok {
		u.proxy.ServeHTTP(w, r)
		return
	}
	call := &statusCall{Kind: kind, Replica: replica, RequestID: rid, At: time.Now()}
	u.mu.Lock()
	holderOf := u.holderOf
	u.mu.Unlock()
	if holderOf != nil {
		call.Holder = holderOf(rid)
	}
	u.mu.Lock()
	u.calls = append(u.calls, call)
	delay, throttled := u.statusDelay, false
	if kind == "result" {
		delay = u.resultDelay
	}
	if kind == "status" && u.throttleArmed {
		if u.throttleFrom.IsZero() {
			u.throttleFrom = call.At
		}
		throttled = call.At.Sub(u.throttleFrom) < u.throttleFor
	}
	retryAfter := u.retryAfter
	u.notifyLocked()
	u.mu.Unlock()

	rec := &codeRecorder{ResponseWriter: w}
	func() {
		if delay > 0 {
			t := time.NewTimer(delay)
			defer t.Stop()
			select {
			case <-t.C:
			case <-r.Context().Done():
				return // the replica gave up (or was killed)
			}
		}
		if throttled {
			rec.Header().Set("Retry-After", retryAfter)
			rec.Header().Set("Content-Type", "application/json")
			rec.WriteHeader(http.StatusTooManyRequests)
			_, _ = io.WriteString(rec, `{"detail":"Too Many Requests"}`)
			return
		}
		u.proxy.ServeHTTP(rec, r)
	}()

	u.mu.Lock()
	call.Done, call.Code = time.Now(), rec.code
	u.notifyLocked()
	u.mu.Unlock()
}

// codeRecorder remembers the status code written through it.
type codeRecorder struct {
	http.ResponseWriter
	code int
}

func (c *codeRecorder) WriteHeader(code int) {
	if c.code == 0 {
		c.code = code
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *codeRecorder) Write(b []byte) (int, error) {
	if c.code == 0 {
		c.code = http.StatusOK
	}
	return c.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController (the reverse proxy's flushes) reach
// the real writer.
func (c *codeRecorder) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// Flush keeps the reverse proxy's flushing working through the recorder.
func (c *codeRecorder) Flush() {
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// replicaPID names the replica running as pid.
func (u *upstream) replicaPID(pid int, replica string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.pids[pid] = replica
}

// replicaOf returns the name of the replica running as pid, or "pid N".
func (u *upstream) replicaOf(pid int) string {
	u.mu.Lock()
	defer u.mu.Unlock()
	if name, ok := u.pids[pid]; ok {
		return name
	}
	return "pid " + strconv.Itoa(pid)
}

// setStatusDelay holds every later status call d before it goes on.
func (u *upstream) setStatusDelay(d time.Duration) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.statusDelay = d
}

// setResultDelay holds every later result call d before it goes on.
func (u *upstream) setResultDelay(d time.Duration) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.resultDelay = d
}

// throttle answers status calls 429 with Retry-After: retryAfter, for d from
// the next status call on.
func (u *upstream) throttle(d time.Duration, retryAfter string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.throttleArmed, u.throttleFrom, u.throttleFor, u.retryAfter = true, time.Time{}, d, retryAfter
}

// statusCalls returns a copy of every status call so far, in arrival order.
func (u *upstream) statusCalls() []statusCall { return kindOf(u.readCalls(), "status") }

// readCalls returns a copy of every status and result call so far, in
// arrival order.
func (u *upstream) readCalls() []statusCall {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := make([]statusCall, len(u.calls))
	for i, c := range u.calls {
		out[i] = *c
	}
	return out
}

// submitted returns the query of every submit so far.
func (u *upstream) submitted() []url.Values {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]url.Values(nil), u.submitQueries...)
}

// await waits until cond, given every status and result call so far, holds.
func (u *upstream) await(ctx context.Context, t *testing.T, what string, cond func([]statusCall) bool) {
	t.Helper()
	for {
		u.mu.Lock()
		ch := u.changed
		u.mu.Unlock()
		if cond(u.readCalls()) {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-ch:
		}
	}
}

// kindOf keeps the calls of one kind ("status" or "result").
func kindOf(calls []statusCall, kind string) []statusCall {
	var out []statusCall
	for _, c := range calls {
		if c.Kind == kind {
			out = append(out, c)
		}
	}
	return out
}

// callsOf keeps the calls for one request.
func callsOf(calls []statusCall, requestID string) []statusCall {
	var out []statusCall
	for _, c := range calls {
		if c.RequestID == requestID {
			out = append(out, c)
		}
	}
	return out
}

// maxOverlap is the most of calls in flight at the same instant (a call
// still in flight counts until now).
func maxOverlap(calls []statusCall) int {
	type edge struct {
		at time.Time
		d  int
	}
	var edges []edge
	now := time.Now()
	for _, c := range calls {
		end := c.Done
		if end.IsZero() {
			end = now
		}
		edges = append(edges, edge{c.At, +1}, edge{end, -1})
	}
	// Ends before starts at the same instant: back to back is not overlap.
	slices.SortFunc(edges, func(a, b edge) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		return a.d - b.d
	})
	n, most := 0, 0
	for _, e := range edges {
		n += e.d
		most = max(most, n)
	}
	return most
}

// describeCalls renders calls relative to t0 for failure messages.
func describeCalls(calls []statusCall, t0 time.Time) string {
	var b strings.Builder
	for _, c := range calls {
		end := "in flight"
		if !c.Done.IsZero() {
			end = fmt.Sprintf("%v %d", c.Done.Sub(t0).Round(time.Millisecond), c.Code)
		}
		fmt.Fprintf(&b, "\n  %s %s %s… at %v → %s", c.Replica, c.Kind, c.RequestID[:min(8, len(c.RequestID))], c.At.Sub(t0).Round(time.Millisecond), end)
	}
	return b.String()
}

// ---- Redis views (the key layout of state/redisstore) ----

// rank reads the record's rank (1 queued, 2 running, 3 finished), 0 without a
// record.
func (c *cluster) rank(ctx context.Context, t *testing.T, requestID string) int {
	t.Helper()
	r, err := c.rdb.HGet(ctx, redisstore.RecordKey(c.prefix, requestID), "rank").Int()
	if errors.Is(err, redis.Nil) {
		return 0
	}
	if err != nil {
		t.Fatalf("read the rank of %s from Redis: %v", requestID, err)
	}
	return r
}

// scheduled reports whether the request is in the poll schedule.
func (c *cluster) scheduled(ctx context.Context, t *testing.T, requestID string) bool {
	t.Helper()
	_, err := c.rdb.ZScore(ctx, redisstore.PendingKey(c.prefix), requestID).Result()
	if errors.Is(err, redis.Nil) {
		return false
	}
	if err != nil {
		t.Fatalf("ZSCORE: %v", err)
	}
	return true
}

// lease returns the owner of the request's poll lease and its remaining time
// to live; "" when nobody holds it.
func (c *cluster) lease(ctx context.Context, t *testing.T, requestID string) (string, time.Duration) {
	t.Helper()
	key := redisstore.LeaseKey(c.prefix, requestID)
	owner, err := c.rdb.Get(ctx, key).Result()
	if errors.Is(err, redis.Nil) {
		return "", 0
	}
	if err != nil {
		t.Fatalf("GET %s: %v", key, err)
	}
	ttl, err := c.rdb.PTTL(ctx, key).Result()
	if err != nil {
		t.Fatalf("PTTL %s: %v", key, err)
	}
	return owner, ttl
}

// leasePID extracts the pid from a lease owner, which cmd/comfygate names
// "<host>-<pid>-<8 random hex digits>" (the host may hold dashes).
func leasePID(owner string) (int, bool) {
	i := strings.LastIndexByte(owner, '-')
	if i < 0 {
		return 0, false
	}
	rest := owner[:i]
	j := strings.LastIndexByte(rest, '-')
	if j < 0 {
		return 0, false
	}
	pid, err := strconv.Atoi(rest[j+1:])
	return pid, err == nil
}

// ---- RunComfy, directly ----

// submitDirect starts a job on the simulator without any gateway, as another
// tool on the same RunComfy account would, and returns its id.
func (c *cluster) submitDirect(ctx context.Context, t *testing.T) string {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost,
		c.simURL+"/prod/v1/deployments/"+deployment+"/inference",
		strings.NewReader(`{"overrides": {"3": {"inputs": {"seed": 7}}}}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+simToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.httpc.Do(req)
	if err != nil {
		t.Fatalf("submit to the simulator: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var out struct {
		RequestID string `json:"request_id"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &out) != nil || out.RequestID == "" {
		t.Fatalf("submit to the simulator: %d %s", resp.StatusCode, body)
	}
	return out.RequestID
}

// ---- REST ----

// restState is a RequestState as the REST gateway writes it.
type restState struct {
	RequestID  string   `json:"request_id"`
	Status     string   `json:"status"`
	Seq        int64    `json:"seq,string"`
	OutputURLs []string `json:"output_urls"`
}

func (s restState) pair() string {
	return fmt.Sprintf("%d:%s", s.Seq, strings.TrimPrefix(s.Status, "STATUS_"))
}

// restGetStatus calls GET /v1/deployments/{d}/requests/{r} on g.
func (c *cluster) restGetStatus(ctx context.Context, t *testing.T, g *gateway, requestID string) (int, restState) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet,
		"http://"+g.httpAddr+"/v1/deployments/"+deployment+"/requests/"+requestID, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.httpc.Do(req)
	if err != nil {
		t.Fatalf("REST GetStatus on %s: %v", g.name, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var out struct {
		Request restState `json:"request"`
	}
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(body, &out); err != nil {
			t.Fatalf("REST GetStatus on %s: %v in %s", g.name, err, body)
		}
	}
	return resp.StatusCode, out.Request
}

// restWatcher is a REST watch (NDJSON) read in the background.
type restWatcher struct {
	name string
	done chan struct{}

	mu     sync.Mutex
	events []restState
	errMsg string // an error line, or why reading failed
	code   int    // the HTTP status of the answer
}

// restWatch opens GET /v1/deployments/{d}/requests/{r}:watch on g.
func (c *cluster) restWatch(ctx context.Context, t *testing.T, name string, g *gateway, requestID string) *restWatcher {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet,
		"http://"+g.httpAddr+"/v1/deployments/"+deployment+"/requests/"+requestID+":watch", nil)
	if err != nil {
		t.Fatal(err)
	}
	// No client timeout: the stream lasts as long as the request runs; ctx
	// bounds it.
	hc := &http.Client{Transport: c.httpc.Transport}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s: REST watch on %s: %v", name, g.name, err)
	}
	w := &restWatcher{name: name, done: make(chan struct{}), code: resp.StatusCode}
	go func() {
		defer close(w.done)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var line struct {
				Result *struct {
					Request restState `json:"request"`
				} `json:"result"`
				Error json.RawMessage `json:"error"`
			}
			w.mu.Lock()
			switch err := json.Unmarshal(sc.Bytes(), &line); {
			case err != nil:
				w.errMsg = fmt.Sprintf("line %q: %v", sc.Text(), err)
			case len(line.Error) > 0 && !bytes.Equal(line.Error, []byte("null")):
				w.errMsg = "error line: " + string(line.Error)
			case line.Result == nil:
				w.errMsg = fmt.Sprintf("line %q carries neither result nor error", sc.Text())
			default:
				w.events = append(w.events, line.Result.Request)
			}
			w.mu.Unlock()
		}
		if err := sc.Err(); err != nil {
			w.mu.Lock()
			if w.errMsg == "" {
				w.errMsg = "read: " + err.Error()
			}
			w.mu.Unlock()
		}
	}()
	return w
}

// waitOK waits for the stream to end, which must be cleanly after a success
// with outputs, seqs increasing; it returns the events as "seq:STATUS".
func (w *restWatcher) waitOK(ctx context.Context, t *testing.T) []string {
	t.Helper()
	select {
	case <-w.done:
	case <-ctx.Done():
		t.Fatalf("%s: stream still open at the deadline", w.name)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	var got []string
	for _, e := range w.events {
		got = append(got, e.pair())
	}
	if w.code != http.StatusOK || w.errMsg != "" {
		t.Fatalf("%s: HTTP %d, %s; got %v", w.name, w.code, w.errMsg, got)
	}
	if len(w.events) == 0 {
		t.Fatalf("%s: no events", w.name)
	}
	for i := 1; i < len(w.events); i++ {
		if w.events[i].Seq <= w.events[i-1].Seq {
			t.Errorf("%s: seq %d after %d; got %v", w.name, w.events[i].Seq, w.events[i-1].Seq, got)
		}
	}
	last := w.events[len(w.events)-1]
	if last.Status != "STATUS_SUCCEEDED" || len(last.OutputURLs) == 0 {
		t.Errorf("%s: last event %v with %d output URLs, want a success with outputs; got %v", w.name, last.Status, len(last.OutputURLs), got)
	}
	return got
}
