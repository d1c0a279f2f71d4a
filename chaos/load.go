package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	reqstatus "github.com/comfygate/comfygate/internal/status"
)

// submitPatience is how long a submit is retried, with its idempotency key,
// before the load gives up on it: longer than a claim left by an attempt
// that never learned it had claimed the key (its lease, 2 minutes) holds.
const submitPatience = 3 * time.Minute

// The ways a watcher follows a request.
const (
	viaGRPC   = "gRPC"
	viaNDJSON = "NDJSON"
	viaSSE    = "SSE"
)

// request is one submit of the load and what became of it.
type request struct {
	key      string // idempotency key
	tenant   tenant
	dep      string
	fail     bool
	rid      string        // empty until a submit was answered
	answerIn time.Duration // from the first attempt to the answer
	attempts int
	lastErr  error // of the last failed submit attempt
	// unanswered: refused for good because the key's first submit may have
	// started a job whose answer was lost.
	unanswered bool
	firstAt    time.Time // the first submit attempt
	watchers   []*watcher
}

// watcher follows one request to its end, resuming after every broken
// stream with the last (epoch, seq) it saw, and records what it was sent.
type watcher struct {
	via      string
	epoch    int64
	seq      int64
	final    comfygatev1.Status // the final state it ended with, once it did
	finalAt  time.Time
	events   int
	resumes  int
	dups     int // an (epoch, seq) sent twice
	backward int // a seq at or below the last one in the same epoch, not a repeat
	// last is the status of the last event, and seen the highest rank of
	// the events so far; regressed counts events of a lower rank than
	// seen (an earlier state, as after a record was rebuilt behind it).
	last      comfygatev1.Status
	seen      int
	regressed int
	// withoutFinal: a stream ended as complete (OK, end event, clean EOF)
	// without a final state; the watcher believes it and stops.
	withoutFinal bool
	epochs       int // epoch changes seen (records rebuilt)
	lastErr      string
}

// loader runs the load: submits at a steady rate, each followed by one to
// five watchers over the three protocols on random replicas, some of which
// disconnect on purpose and resume.
type loader struct {
	sys  *system
	rate float64
	rng  *rand.Rand
	http *http.Client

	mu       sync.Mutex
	requests []*request
	wg       sync.WaitGroup
	// submitErrs counts failed submit attempts by gRPC code (retried).
	submitErrs map[codes.Code]int
	gaveUp     atomic.Int64 // submits abandoned after their retries
}

func newLoader(sys *system, rate float64, seed int64) *loader {
	return &loader{
		sys: sys, rate: rate, rng: rand.New(rand.NewPCG(uint64(seed), 0x10ad)),
		http:       &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}},
		submitErrs: map[codes.Code]int{},
	}
}

// run submits until ctx ends; the requests' watchers run on under watchCtx.
func (l *loader) run(ctx, watchCtx context.Context) {
	tick := time.NewTicker(time.Duration(float64(time.Second) / l.rate))
	defer tick.Stop()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		l.mu.Lock()
		r := &request{
			key:    fmt.Sprintf("chaos-%d-%s", n, randomHex(4)),
			tenant: l.sys.tenants[l.rng.IntN(len(l.sys.tenants))],
			dep:    fmt.Sprintf("dep-%d", l.rng.IntN(4)),
			fail:   l.rng.IntN(10) == 0,
		}
		nw := 1 + l.rng.IntN(5)
		for range nw {
			via := []string{viaGRPC, viaNDJSON, viaSSE}[l.rng.IntN(3)]
			r.watchers = append(r.watchers, &watcher{via: via})
		}
		l.requests = append(l.requests, r)
		seed := l.rng.Uint64()
		l.mu.Unlock()
		l.wg.Go(func() { l.follow(ctx, watchCtx, r, seed) })
	}
}

// wait waits for every submit and watcher to end.
func (l *loader) wait() { l.wg.Wait() }

func (l *loader) snapshot() []*request {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*request(nil), l.requests...)
}

func (l *loader) authed(ctx context.Context, t tenant) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+t.key)
}

// follow submits r, retrying with the same idempotency key on any error
// for as long as the load runs and a while after, then starts its watchers.
func (l *loader) follow(ctx, watchCtx context.Context, r *request, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 1))
	start := time.Now()
	r.firstAt = start
	deadline := start.Add(submitPatience)
	for {
		r.attempts++
		rid, err := l.submit(watchCtx, r, rng)
		if err == nil {
			r.rid, r.answerIn = rid, time.Since(start)
			break
		}
		r.lastErr = err
		l.mu.Lock()
		l.submitErrs[status.Code(err)]++
		l.mu.Unlock()
		if status.Code(err) == codes.FailedPrecondition {
			// The key's first submit reached RunComfy and its answer was
			// lost (its replica died meanwhile): a job may exist, and a
			// retry is refused for good. A final answer, not an outage.
			r.unanswered = true
			return
		}
		if time.Now().After(deadline) || watchCtx.Err() != nil {
			l.gaveUp.Add(1)
			return
		}
		select {
		case <-watchCtx.Done():
			l.gaveUp.Add(1)
			return
		case <-time.After(time.Duration(100+rng.IntN(400)) * time.Millisecond):
		}
	}
	for _, w := range r.watchers {
		wseed := rng.Uint64()
		l.wg.Go(func() { l.watch(watchCtx, r, w, wseed) })
	}
}

func (l *loader) submit(ctx context.Context, r *request, rng *rand.Rand) (string, error) {
	g := l.sys.replicas[rng.IntN(len(l.sys.replicas))]
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	resp, err := g.api.Submit(l.authed(ctx, r.tenant), &comfygatev1.SubmitRequest{
		DeploymentId: r.dep, InputJson: inputJSON(r.key, r.fail), IdempotencyKey: r.key,
	})
	if err != nil {
		return "", err
	}
	return resp.GetRequest().GetRequestId(), nil
}

// watch follows r until its final state or ctx's end. A third of the
// watchers start late; a third hang up on purpose after an event and resume.
func (l *loader) watch(ctx context.Context, r *request, w *watcher, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 2))
	if rng.IntN(3) == 0 {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Duration(rng.IntN(2000)) * time.Millisecond):
		}
	}
	hangUps := 0
	if rng.IntN(3) == 0 {
		hangUps = 1 + rng.IntN(2)
	}
	for ctx.Err() == nil {
		g := l.sys.replicas[rng.IntN(len(l.sys.replicas))]
		sctx, cancel := context.WithCancel(ctx)
		hangUp := hangUps > 0
		seen := 0
		onEvent := func(st *comfygatev1.RequestState) bool {
			w.record(st)
			seen++
			if w.final != 0 {
				return true
			}
			if hangUp && seen == 1 {
				cancel()
				return true
			}
			return false
		}
		var done bool
		var err error
		switch w.via {
		case viaGRPC:
			done, err = l.watchGRPC(sctx, g, r, w, onEvent)
		case viaNDJSON:
			done, err = l.watchNDJSON(sctx, g, r, w, onEvent)
		default:
			done, err = l.watchSSE(sctx, g, r, w, onEvent)
		}
		cancel()
		if w.final != 0 {
			return
		}
		if done {
			// The stream said it was complete without a final state.
			w.withoutFinal = true
			return
		}
		if hangUp && seen > 0 {
			hangUps--
		} else if err != nil {
			w.lastErr = err.Error()
		}
		w.resumes++
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Duration(50+rng.IntN(250)) * time.Millisecond):
		}
	}
}

// record checks an event against the last one and keeps its position.
func (w *watcher) record(st *comfygatev1.RequestState) {
	w.events++
	switch {
	case w.epoch != 0 && st.GetEpoch() != w.epoch:
		w.epochs++
	case w.epoch != 0 && st.GetSeq() == w.seq:
		w.dups++
	case w.epoch != 0 && st.GetSeq() < w.seq:
		w.backward++
	}
	w.epoch, w.seq, w.last = st.GetEpoch(), st.GetSeq(), st.GetStatus()
	if rank := reqstatus.OfProto(st.GetStatus()).Rank; rank < w.seen {
		w.regressed++
	} else {
		w.seen = rank
	}
	switch st.GetStatus() {
	case comfygatev1.Status_STATUS_SUCCEEDED, comfygatev1.Status_STATUS_FAILED, comfygatev1.Status_STATUS_CANCELLED:
		w.final, w.finalAt = st.GetStatus(), time.Now()
	}
}

// watchGRPC is one stream; done reports a stream that ended OK.
func (l *loader) watchGRPC(ctx context.Context, g *replica, r *request, w *watcher, onEvent func(*comfygatev1.RequestState) bool) (bool, error) {
	stream, err := g.api.WatchRequest(l.authed(ctx, r.tenant), &comfygatev1.WatchRequestRequest{
		DeploymentId: r.dep, RequestId: r.rid, AfterEpoch: w.epoch, AfterSeq: w.seq, AfterStatus: w.last,
	})
	if err != nil {
		return false, err
	}
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
		if onEvent(msg.GetRequest()) {
			return false, nil
		}
	}
}

func (l *loader) get(ctx context.Context, g *replica, r *request, path string, q url.Values) (*http.Response, error) {
	u := "http://" + g.httpAddr + "/v1/deployments/" + r.dep + "/requests/" + r.rid + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+r.tenant.key)
	resp, err := l.http.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		return nil, fmt.Errorf("GET %s: HTTP %d %s", path, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return resp, nil
}

func (l *loader) watchNDJSON(ctx context.Context, g *replica, r *request, w *watcher, onEvent func(*comfygatev1.RequestState) bool) (bool, error) {
	q := url.Values{}
	if w.epoch != 0 {
		q.Set("after_epoch", strconv.FormatInt(w.epoch, 10))
		q.Set("after_seq", strconv.FormatInt(w.seq, 10))
		q.Set("after_status", w.last.String())
	}
	resp, err := l.get(ctx, g, r, ":watch", q)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var line struct {
			Result json.RawMessage `json:"result"`
			Error  json.RawMessage `json:"error"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			return false, fmt.Errorf("NDJSON line %q: %w", sc.Bytes(), err)
		}
		if line.Result == nil {
			return false, fmt.Errorf("NDJSON error: %s", line.Error)
		}
		var msg comfygatev1.WatchRequestResponse
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(line.Result, &msg); err != nil {
			return false, fmt.Errorf("NDJSON result %q: %w", line.Result, err)
		}
		if onEvent(msg.GetRequest()) {
			return false, nil
		}
	}
	if err := sc.Err(); err != nil {
		return false, err
	}
	return true, nil
}

func (l *loader) watchSSE(ctx context.Context, g *replica, r *request, w *watcher, onEvent func(*comfygatev1.RequestState) bool) (bool, error) {
	q := url.Values{}
	if w.epoch != 0 {
		q.Set("last_event_id", fmt.Sprintf("%d-%d-%s", w.epoch, w.seq, reqstatus.OfProto(w.last).Word))
	}
	resp, err := l.get(ctx, g, r, "/events", q)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	var event, data string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event:"):
			event = strings.TrimSpace(strings.TrimPrefix(line, "event:"))
		case strings.HasPrefix(line, "data:"):
			data += strings.TrimSpace(strings.TrimPrefix(line, "data:"))
		case line == "":
			ev, d := event, data
			event, data = "", ""
			switch ev {
			case "state":
				var st comfygatev1.RequestState
				if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal([]byte(d), &st); err != nil {
					return false, fmt.Errorf("SSE state %q: %w", d, err)
				}
				if onEvent(&st) {
					return false, nil
				}
			case "end":
				return true, nil
			case "error":
				return false, fmt.Errorf("SSE error event: %s", d)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return false, err
	}
	return false, io.ErrUnexpectedEOF // a stream cut without its end event
}
