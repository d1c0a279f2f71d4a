package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/hooks"
)

// hookArrivals records when each (request, event type) reached the
// receiver, and each delivery's webhook-id.
type hookArrivals struct {
	mu      sync.Mutex
	at      map[string]time.Time // request id + " " + type
	ids     map[string]int
	last    time.Time
	changed chan struct{}
}

func (h *hookArrivals) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var ev struct {
		Type string `json:"type"`
		Data struct {
			RequestID string `json:"request_id"`
		} `json:"data"`
	}
	body, _ := io.ReadAll(r.Body)
	now := time.Now()
	_ = json.Unmarshal(body, &ev)
	h.mu.Lock()
	key := ev.Data.RequestID + " " + ev.Type
	if _, ok := h.at[key]; !ok {
		h.at[key] = now
	}
	h.ids[r.Header.Get("webhook-id")]++
	h.last = now
	h.mu.Unlock()
	select {
	case h.changed <- struct{}{}:
	default:
	}
}

// wait waits until n distinct events arrived, or grace passed without one.
func (h *hookArrivals) wait(ctx context.Context, n int, grace time.Duration) {
	for {
		h.mu.Lock()
		got := len(h.at)
		h.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-h.changed:
		case <-ctx.Done():
			return
		case <-time.After(grace):
			return
		}
	}
}

// webhookDelivery measures outbound webhooks on two replicas sharing Redis:
// the time from a callback's POST on replica A to the event's signed
// delivery at a local receiver, beside the same event's arrival at a gRPC
// watcher on replica B (the end-to-end watch latency, in the same run); then
// how many deliveries per second the two replicas make when a burst of
// callbacks ends many requests at once, beside the rate at which those
// callbacks were recorded.
func webhookDelivery(ctx context.Context, e *env) (result, error) {
	requests, rate, burst := 200, 100, 2000 // paced requests, their events/s, burst requests
	if e.smoke {
		requests, rate, burst = 10, 50, 20
	}
	res := result{Setup: fmt.Sprintf("Two replicas sharing Redis, each delivering webhooks (the deliverers of both consume one Redis stream as a group) to a receiver in the harness that answers 200 at once. "+
		"Latency: %d submitted requests, each watched by a gRPC WatchRequest stream on replica B and with a webhook for its running and terminal events; "+
		"running then succeeded callbacks for them are POSTed to replica A at %d/s in all. The latency runs from just before the POST to the event's arrival at the receiver (webhook) or in the watcher's Recv (reference). "+
		"Throughput: %d more requests with a terminal webhook; their succeeded callbacks are POSTed to both replicas over 16 connections as fast as they are answered; "+
		"deliveries/s counts from the first POST to the last delivery, the reference is the callbacks recorded per second in the same window.",
		requests, rate, burst)}

	secret, err := hooks.NewSecret()
	if err != nil {
		return res, err
	}
	tenants := filepath.Join(e.dir, "tenants.yaml")
	if err := os.WriteFile(tenants, []byte(fmt.Sprintf("tenants:\n  local:\n    webhooks:\n      secrets: [%q]\n", secret.String())), 0o600); err != nil {
		return res, err
	}
	rcv := &hookArrivals{at: map[string]time.Time{}, ids: map[string]int{}, changed: make(chan struct{}, 1)}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return res, err
	}
	srv := &http.Server{Handler: rcv, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(lis) }()
	defer srv.Close()
	hookURL := "http://" + lis.Addr().String() + "/hook"

	c, stop, err := e.startCluster(ctx, "webhooks", 2, "--tenants-file", tenants, "--webhook-allow-private", "--webhook-retry-min", "100ms")
	defer stop()
	if err != nil {
		return res, err
	}
	a, b, path := c.replicas[0], c.replicas[1], c.path
	cc, client, err := b.dial()
	if err != nil {
		return res, err
	}
	defer cc.Close()
	submit := func(events ...comfygatev1.WebhookEvent) (string, error) {
		sub, err := client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: benchDep, InputJson: `{"overrides": {}}`,
			Webhook: &comfygatev1.Webhook{Url: hookURL, Events: events}})
		if err != nil {
			return "", err
		}
		return sub.GetRequest().GetRequestId(), nil
	}

	// Latency, paced.
	ids := make([]string, requests)
	for k := range ids {
		if ids[k], err = submit(comfygatev1.WebhookEvent_WEBHOOK_EVENT_RUNNING, comfygatev1.WebhookEvent_WEBHOOK_EVENT_TERMINAL); err != nil {
			return res, err
		}
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	watched := newTimings(requests, 2)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for k, id := range ids {
		stream, err := client.WatchRequest(wctx, &comfygatev1.WatchRequestRequest{DeploymentId: benchDep, RequestId: id})
		if err != nil {
			return res, err
		}
		if _, err := stream.Recv(); err != nil { // the current state
			return res, fmt.Errorf("watch %s: %w", id, err)
		}
		wg.Go(func() {
			for {
				msg, err := stream.Recv()
				if err != nil {
					return
				}
				switch msg.GetRequest().GetStatus() {
				case comfygatev1.Status_STATUS_RUNNING:
					watched.received(k, 1)
				case comfygatev1.Status_STATUS_SUCCEEDED:
					watched.received(k, 2)
				}
			}
		})
	}
	// Updates 1 (running) and 2 (succeeded) of each request, paced as the
	// latency scenario paces its senders.
	late, err := paced(ctx, requests, 2, time.Second*time.Duration(requests)/time.Duration(rate), func(k int) (func(n int) error, func(), error) {
		conn, err := dialHTTP(a.httpAddr)
		if err != nil {
			return nil, nil, err
		}
		buf := make([]byte, 0, 2048)
		return func(n int) error {
			body := callbackBody(buf, benchDep, ids[k], n, -1)
			watched.sent(k, n)
			code, err := conn.post(path, body)
			if err == nil && code != 200 {
				err = fmt.Errorf("callback answered %d", code)
			}
			return err
		}, conn.close, nil
	})
	if err != nil {
		return res, err
	}
	watched.wait(ctx, 5*time.Second)
	rcv.wait(ctx, 2*requests, 5*time.Second)
	var hookLat samples
	missing := 0
	rcv.mu.Lock()
	for k, id := range ids {
		for n, typ := range []string{"", "request.running", "request.succeeded"} {
			if n == 0 {
				continue
			}
			at, ok := rcv.at[id+" "+typ]
			if !ok {
				missing++
				continue
			}
			hookLat = append(hookLat, at.Sub(watched.start)-time.Duration(watched.sends[k][n].Load()))
		}
	}
	rcv.mu.Unlock()
	hookLat = hookLat.sorted()
	watchLat, watchMissing := watched.latencies()

	// Throughput: a burst of terminal callbacks.
	burstIDs := make([]string, burst)
	for k := range burstIDs {
		if burstIDs[k], err = submit(comfygatev1.WebhookEvent_WEBHOOK_EVENT_TERMINAL); err != nil {
			return res, err
		}
	}
	m := meterOf(a.named(), b.named(), e.redis.named())
	m.begin()
	start := time.Now()
	var ingest loadResult
	var ingestErr error
	var iwg sync.WaitGroup
	for r, g := range []*gateway{a, b} {
		var next atomic.Int64 // the next of this replica's half
		iwg.Go(func() {
			lr, err := closedLoop(ctx, g.httpAddr, 8, 0, burst/2, func(_, _ int, buf []byte) (string, []byte) {
				k := r*(burst/2) + int(next.Add(1)-1)%(burst/2)
				return path, callbackBody(buf, benchDep, burstIDs[k], phaseSucceeded, -1)
			})
			rcv.mu.Lock()
			ingest = ingest.add(lr)
			if err != nil {
				ingestErr = err
			}
			rcv.mu.Unlock()
		})
	}
	iwg.Wait()
	if ingestErr != nil {
		return res, ingestErr
	}
	recorded := time.Since(start)
	rcv.wait(ctx, 2*requests+burst, 10*time.Second)
	rcv.mu.Lock()
	delivered := 0
	for _, id := range burstIDs {
		if _, ok := rcv.at[id+" request.succeeded"]; ok {
			delivered++
		}
	}
	took := rcv.last.Sub(start)
	dups := 0
	for _, n := range rcv.ids {
		dups += n - 1
	}
	rcv.mu.Unlock()
	cpu := m.end(burst)

	row3 := func(name string, q float64) row {
		v, r := hookLat.quantile(q), watchLat.quantile(q)
		return row{name, fmtDur(v), fmtDur(r), ratio(float64(v), float64(r)), "", ""}
	}
	deliveryRate := float64(delivered) / took.Seconds()
	ingestRate := float64(ingest.ops) / recorded.Seconds()
	res.Rows = []row{
		row3("event → webhook delivery p50 (ref: → watcher)", 0.50),
		row3("event → webhook delivery p99 (ref: → watcher)", 0.99),
		{"events delivered (ref: watched)", fmt.Sprintf("%d of %d", len(hookLat), len(hookLat)+missing),
			fmt.Sprintf("%d of %d", len(watchLat), len(watchLat)+watchMissing), "", "", ""},
		{"deliveries/s, two replicas (ref: callbacks recorded/s)", fmtRate(deliveryRate), fmtRate(ingestRate), ratio(deliveryRate, ingestRate), "", ""},
		{"burst deliveries made", fmt.Sprintf("%d of %d", delivered, burst), "", "", "", ""},
		{"deliveries repeated", fmt.Sprint(dups), "", "", "", ""},
	}
	res.CPU = []cpuTable{{Window: "burst, until the last delivery", Op: "delivery", Ops: burst, Rows: cpu}}
	res.Notes = append(res.Notes, fmt.Sprintf("Paced sends more than 1 ms behind their schedule: %d of %d. Burst: %d callbacks answered in %s; the last delivery %s after the first POST; %d callbacks failed.",
		late, 2*requests, ingest.ops, recorded.Round(time.Millisecond), took.Round(time.Millisecond), ingest.failures))
	return res, nil
}
