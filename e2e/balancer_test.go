package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// balancer is the load balancer in front of the replicas' callback endpoint:
// every callback it receives goes to its first target and, at the same
// instant, to the others; it answers with the first target's answer. A test
// can close a gate in it to hold callbacks and let them through one by one,
// which orders the test's actions against the callbacks without sleeping.
type balancer struct {
	srv *httptest.Server
	tr  *http.Transport
	hc  *http.Client

	mu         sync.Mutex
	changed    chan struct{} // closed and replaced on every change below
	targets    []*gateway
	gated      bool
	closed     bool
	passes     int // callbacks the gate may still let through
	held       int // callbacks waiting at the gate
	deliveries []*delivery
}

// delivery is one callback as the balancer forwarded it.
type delivery struct {
	// Status is the body's "status" ("" in an in_queue callback).
	Status string
	Body   string
	// Answers holds each replica's answer, by replica name.
	Answers map[string]answer
}

// answer is one replica's answer to a forwarded callback.
type answer struct {
	Code    int
	Outcome string // the webhook handler's {"outcome": ...}
	Err     error  // the replica did not answer (e.g. it was killed)
	body    []byte
}

func (a answer) String() string {
	if a.Err != nil {
		return "error: " + a.Err.Error()
	}
	return fmt.Sprintf("%d %s", a.Code, a.Outcome)
}

func newBalancer() *balancer {
	lb := &balancer{changed: make(chan struct{}), tr: &http.Transport{}}
	lb.hc = &http.Client{Transport: lb.tr, Timeout: 10 * time.Second}
	lb.srv = httptest.NewServer(http.HandlerFunc(lb.serve))
	return lb
}

// close releases the callbacks held at the gate (they get no answer), then
// stops the server.
func (lb *balancer) close() {
	lb.mu.Lock()
	lb.closed = true
	lb.notifyLocked()
	lb.mu.Unlock()
	lb.srv.Close()
	lb.tr.CloseIdleConnections()
}

func (lb *balancer) notifyLocked() {
	close(lb.changed)
	lb.changed = make(chan struct{})
}

func (lb *balancer) setTargets(primary *gateway, duplicates ...*gateway) {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	lb.targets = append([]*gateway{primary}, duplicates...)
}

// hold closes the gate: callbacks wait until a step or open.
func (lb *balancer) hold() {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	lb.gated = true
	lb.notifyLocked()
}

// open lets every callback through from now on.
func (lb *balancer) open() {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	lb.gated = false
	lb.notifyLocked()
}

// await waits until cond (called with lb.mu held) holds.
func (lb *balancer) await(ctx context.Context, what string, cond func() bool) error {
	for {
		lb.mu.Lock()
		ok, ch := cond(), lb.changed
		lb.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("timed out waiting for %s", what)
		case <-ch:
		}
	}
}

// waitHeld waits until a callback waits at the closed gate.
func (lb *balancer) waitHeld(ctx context.Context, t *testing.T) {
	t.Helper()
	if err := lb.await(ctx, "a callback at the balancer", func() bool { return lb.held > 0 }); err != nil {
		t.Fatal(err)
	}
}

// step lets the next callback through the closed gate and returns it once
// every replica has answered it.
func (lb *balancer) step(ctx context.Context, t *testing.T) *delivery {
	t.Helper()
	d, err := lb.tryStep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// tryStep is step for other goroutines than the test's.
func (lb *balancer) tryStep(ctx context.Context) (*delivery, error) {
	if err := lb.await(ctx, "a callback at the balancer", func() bool { return lb.held > 0 }); err != nil {
		return nil, err
	}
	lb.mu.Lock()
	n := len(lb.deliveries)
	lb.passes++
	lb.notifyLocked()
	lb.mu.Unlock()
	if err := lb.await(ctx, "a callback to be delivered", func() bool { return len(lb.deliveries) > n }); err != nil {
		return nil, err
	}
	lb.mu.Lock()
	defer lb.mu.Unlock()
	return lb.deliveries[n], nil
}

// all returns every delivery so far.
func (lb *balancer) all() []*delivery {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	return append([]*delivery(nil), lb.deliveries...)
}

// pass waits at the gate; false means the caller gave up first.
func (lb *balancer) pass(ctx context.Context) bool {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	lb.held++
	lb.notifyLocked()
	defer func() {
		lb.held--
		lb.notifyLocked()
	}()
	for lb.gated && lb.passes == 0 && !lb.closed {
		ch := lb.changed
		lb.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			lb.mu.Lock()
			return false
		}
		lb.mu.Lock()
	}
	if lb.closed {
		return false
	}
	if lb.gated {
		lb.passes--
	}
	return true
}

func (lb *balancer) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, "read body: "+err.Error(), http.StatusBadRequest)
		return
	}
	if !lb.pass(r.Context()) {
		return
	}
	lb.mu.Lock()
	targets := lb.targets
	lb.mu.Unlock()
	if len(targets) == 0 {
		http.Error(w, "no replicas yet", http.StatusServiceUnavailable)
		return
	}

	answers := make([]answer, len(targets))
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, g := range targets {
		wg.Go(func() {
			<-start // release all copies together
			answers[i] = lb.forward(r, g, body)
		})
	}
	close(start)
	wg.Wait()

	d := &delivery{Body: string(body), Answers: map[string]answer{}}
	d.Status, _ = jsonField(body, "status")
	for i, g := range targets {
		d.Answers[g.name] = answers[i]
	}
	lb.mu.Lock()
	lb.deliveries = append(lb.deliveries, d)
	lb.notifyLocked()
	lb.mu.Unlock()

	primary := answers[0]
	if primary.Err != nil {
		http.Error(w, "replica "+targets[0].name+": "+primary.Err.Error(), http.StatusBadGateway)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(primary.Code)
	_, _ = w.Write(primary.body)
}

// forward sends the callback to g: same method, path, headers and body.
func (lb *balancer) forward(in *http.Request, g *gateway, body []byte) answer {
	req, err := http.NewRequestWithContext(in.Context(), in.Method, "http://"+g.httpAddr+in.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		return answer{Err: err}
	}
	req.Header = in.Header.Clone()
	resp, err := lb.hc.Do(req)
	if err != nil {
		return answer{Err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return answer{Err: err}
	}
	a := answer{Code: resp.StatusCode, body: b}
	a.Outcome, _ = jsonField(b, "outcome")
	return a
}

// jsonField returns a string field of a JSON object.
func jsonField(b []byte, name string) (string, bool) {
	var m map[string]any
	if json.Unmarshal(b, &m) != nil {
		return "", false
	}
	s, ok := m[name].(string)
	return s, ok
}
