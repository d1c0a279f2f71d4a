package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/comfygate/comfygate/internal/webhooktest"
)

// stallProxy forwards TCP between the replicas and Redis, and can stop
// forwarding for a while: connections stay open, bytes wait, new connections
// are accepted and then wait too. That is a network partition, a congested
// link or a hung load balancer as the replicas see it.
type stallProxy struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu    sync.Mutex
	gate  chan struct{} // closed while bytes flow
	conns map[net.Conn]struct{}
}

func newStallProxy(target string) (*stallProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &stallProxy{ln: ln, target: target, gate: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	close(p.gate)
	p.wg.Go(p.accept)
	return p, nil
}

func (p *stallProxy) addr() string { return p.ln.Addr().String() }

// flowing waits while the proxy is stalled.
func (p *stallProxy) flowing() {
	p.mu.Lock()
	g := p.gate
	p.mu.Unlock()
	<-g
}

// stall stops forwarding until resume.
func (p *stallProxy) stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.gate:
		p.gate = make(chan struct{})
	default:
	}
}

func (p *stallProxy) resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.gate:
	default:
		close(p.gate)
	}
}

func (p *stallProxy) track(c net.Conn, add bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		return false // closed
	}
	if add {
		p.conns[c] = struct{}{}
	} else {
		delete(p.conns, c)
	}
	return true
}

func (p *stallProxy) accept() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(client, true) {
			client.Close()
			return
		}
		p.wg.Go(func() {
			defer p.track(client, false)
			defer client.Close()
			p.flowing()
			server, err := net.DialTimeout("tcp", p.target, 2*time.Second)
			if err != nil {
				return // Redis is down: the replica sees its connection closed
			}
			if !p.track(server, true) {
				server.Close()
				return
			}
			defer p.track(server, false)
			defer server.Close()
			done := make(chan struct{}, 2)
			go func() { p.pump(server, client); done <- struct{}{} }()
			go func() { p.pump(client, server); done <- struct{}{} }()
			<-done
			client.Close()
			server.Close()
			<-done
		})
	}
}

func (p *stallProxy) pump(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.flowing()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *stallProxy) close() {
	p.ln.Close()
	p.resume()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.conns = nil
	p.mu.Unlock()
	p.wg.Wait()
}

// balancer is the load balancer in front of the replicas' HTTP listeners that
// RunComfy's callbacks reach (--public-url): each callback goes to the next
// replica that takes its connection.
type balancer struct {
	srv    *http.Server
	ln     net.Listener
	client *http.Client
	next   atomic.Uint64

	mu       sync.Mutex
	replicas []*replica
}

func newBalancer() (*balancer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	b := &balancer{ln: ln, client: &http.Client{Timeout: 10 * time.Second}}
	b.srv = &http.Server{Handler: b, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = b.srv.Serve(ln) }()
	return b, nil
}

func (b *balancer) url() string { return "http://" + b.ln.Addr().String() }

func (b *balancer) add(r *replica) {
	b.mu.Lock()
	b.replicas = append(b.replicas, r)
	b.mu.Unlock()
}

func (b *balancer) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	b.mu.Lock()
	rs := append([]*replica(nil), b.replicas...)
	b.mu.Unlock()
	start := int(b.next.Add(1))
	for i := range rs {
		r := rs[(start+i)%len(rs)]
		if !r.up() {
			continue
		}
		out, err := http.NewRequestWithContext(req.Context(), req.Method, "http://"+r.httpAddr+req.URL.RequestURI(), bytes.NewReader(body))
		if err != nil {
			break
		}
		out.Header = req.Header.Clone()
		resp, err := b.client.Do(out)
		if err != nil {
			continue // down or going down: the next one
		}
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
		resp.Body.Close()
		return
	}
	http.Error(w, "no replica took the connection", http.StatusBadGateway)
}

func (b *balancer) close() {
	_ = b.srv.Close()
	b.client.CloseIdleConnections()
}

// hookReceiver is the tenants' own service: it checks every webhook's
// signature with its tenant's secret, keeps the event types received per
// request, and counts the events of an earlier state than one it had
// received for the request. It answers 503 to one delivery in twenty, so
// retries are part of every run.
type hookReceiver struct {
	srv     *http.Server
	ln      net.Listener
	secrets map[string]string // tenant name to secret; written before the replicas start

	mu      sync.Mutex
	events  map[string]map[string]bool // request id to the event types received
	highest map[string]int             // request id to the furthest state's rank received
	seen    map[string][]string        // request id to the states received, as type@epoch/seq
	bad     int                        // deliveries whose signature did not verify
	refused int
	total   int
	// regressed: deliveries of an earlier state than one received before
	// for the request (across epochs: a record put back after a loss).
	regressed []string
}

func newHookReceiver() (*hookReceiver, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	h := &hookReceiver{ln: ln, events: map[string]map[string]bool{}, highest: map[string]int{}, seen: map[string][]string{}}
	h.srv = &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = h.srv.Serve(ln) }()
	return h, nil
}

func (h *hookReceiver) url() string { return "http://" + h.ln.Addr().String() }

func (h *hookReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.total++
	secret, ok := h.secrets[strings.TrimPrefix(req.URL.Path, "/")]
	if !ok || webhooktest.Verify(secret, req.Header, body, time.Now()) != nil {
		h.bad++
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	if rand.IntN(20) == 0 {
		h.refused++
		http.Error(w, "busy", http.StatusServiceUnavailable)
		return
	}
	var ev struct {
		Type string `json:"type"`
		Data struct {
			RequestID string `json:"request_id"`
			Epoch     string `json:"epoch"`
			Seq       string `json:"seq"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &ev); err != nil || ev.Data.RequestID == "" {
		h.bad++
		http.Error(w, "bad body", http.StatusBadRequest)
		return
	}
	rid := ev.Data.RequestID
	if h.events[rid] == nil {
		h.events[rid] = map[string]bool{}
	}
	h.events[rid][ev.Type] = true
	// request.output announces an output of a running request, and
	// request.outputs_stored a finished one's copy: neither is a state.
	if rank := eventRank(ev.Type); rank > 0 {
		h.seen[rid] = append(h.seen[rid], fmt.Sprintf("%s@%s/%s", strings.TrimPrefix(ev.Type, "request."), ev.Data.Epoch, ev.Data.Seq))
		if rank < h.highest[rid] {
			h.regressed = append(h.regressed, fmt.Sprintf("request %s: %s after a later state (received %s)", rid, ev.Type, strings.Join(h.seen[rid], ", ")))
		}
		h.highest[rid] = max(h.highest[rid], rank)
	}
}

// eventRank orders the events that announce a state; others are 0.
func eventRank(typ string) int {
	switch typ {
	case "request.queued":
		return 1
	case "request.running":
		return 2
	case "request.succeeded", "request.failed", "request.cancelled":
		return 3
	}
	return 0
}

// terminal reports whether a request's terminal event of type typ was
// received, and whether one of another terminal type was.
func (h *hookReceiver) terminal(rid, typ string) (got, other bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for t := range h.events[rid] {
		switch t {
		case typ:
			got = true
		case "request.succeeded", "request.failed", "request.cancelled":
			other = true
		}
	}
	return got, other
}

func (h *hookReceiver) counts() (total, bad, refused int, regressed []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.total, h.bad, h.refused, slices.Clone(h.regressed)
}

func (h *hookReceiver) close() { _ = h.srv.Close() }
