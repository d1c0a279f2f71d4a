package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
)

// pollInterval is the poll interval of the gateways these tests start: short,
// so that polling alone ends a job within a fraction of a second.
const pollInterval = 50 * time.Millisecond

// pollGateway is a gateway wired as cmd/comfygate wires it: the memory backend
// is also the poll schedule, and a reconciler polls what callbacks do not bring.
type pollGateway struct{ *gateway }

// startPollGateway starts a polling gateway. By default jobs move on timers and
// no callbacks are asked for (poll-only, as without --public-url);
// withCallbacks asks for them.
func startPollGateway(t *testing.T, opts ...func(*gatewayOptions)) *pollGateway {
	t.Helper()
	polling := func(o *gatewayOptions) {
		o.sim = runcomfysim.Options{QueueTime: 150 * time.Millisecond, RunTime: 300 * time.Millisecond}
		o.poll = pollInterval
	}
	return &pollGateway{startGateway(t, append([]func(*gatewayOptions){polling}, opts...)...)}
}

// scheduled reports whether the gateway will poll rid.
func (g *pollGateway) scheduled(t *testing.T, rid string) bool {
	t.Helper()
	ids, err := g.memory.Due(context.Background(), time.Now().Add(1000*time.Hour), 1000)
	if err != nil {
		t.Fatal(err)
	}
	return slices.Contains(ids, rid)
}

// submitElsewhere starts a job upstream without the gateway, as another tool
// on the same RunComfy account would.
func (g *pollGateway) submitElsewhere(t *testing.T) string {
	t.Helper()
	resp, err := g.upstream.Submit(ctxT(t), "dep-1", json.RawMessage(`{"prompt":"from elsewhere"}`), runcomfy.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return resp.RequestID
}

// watchREST reads a REST watch to its end and returns the statuses it carried,
// or the gRPC code of the error line it ended with.
func watchREST(ctx context.Context, t *testing.T, g *gateway, rid string) (statuses []string, errCode codes.Code) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, g.httpBase+"/v1/deployments/dep-1/requests/"+rid+":watch", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var lastSeq int64
	for sc.Scan() {
		var line struct {
			Result *struct {
				Request struct {
					Status     string   `json:"status"`
					Seq        int64    `json:"seq,string"`
					OutputURLs []string `json:"output_urls"`
				} `json:"request"`
			} `json:"result"`
			Error *struct {
				Code int `json:"code"`
			} `json:"error"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		if line.Error != nil {
			return statuses, codes.Code(line.Error.Code)
		}
		if line.Result == nil {
			t.Fatalf("line %q carries neither result nor error", sc.Text())
		}
		r := line.Result.Request
		if r.Seq <= lastSeq {
			t.Errorf("seq %d after %d", r.Seq, lastSeq)
		}
		lastSeq = r.Seq
		if r.Status == "STATUS_SUCCEEDED" && len(r.OutputURLs) == 0 {
			t.Error("success line without output URLs")
		}
		statuses = append(statuses, r.Status)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return statuses, codes.OK
}

// TestWatchEndsByPollingAlone: no callback reaches the gateway, because none
// was asked for (no public URL) or because RunComfy dropped every one; a
// watcher still sees the job go from queued through running to its end, with
// its outputs.
func TestWatchEndsByPollingAlone(t *testing.T) {
	tests := []struct {
		name  string
		opts  []func(*gatewayOptions)
		check func(t *testing.T, g *pollGateway)
	}{
		{"poll-only", nil, func(t *testing.T, g *pollGateway) {
			if rec, _ := g.sim.LastSubmit(); rec.Webhook != "" || rec.WebhookIntermediateStatus {
				t.Errorf("poll-only submit asked for webhook %q (intermediate %v)", rec.Webhook, rec.WebhookIntermediateStatus)
			}
		}},
		{"callbacks dropped", []func(*gatewayOptions){withCallbacks}, func(t *testing.T, g *pollGateway) {
			if rec, _ := g.sim.LastSubmit(); rec.Webhook == "" {
				t.Error("submit asked for no callbacks")
			}
			if st := g.sim.CallbackStats(); st.Dropped == 0 || st.Attempts != 0 {
				t.Errorf("callbacks: %+v, want all dropped", st)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			g := startPollGateway(t, tt.opts...)
			g.sim.SetFaults(runcomfysim.Faults{DropCallbacks: true})
			ctx := ctxT(t)
			sub, err := g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{"prompt":"x"}`})
			if err != nil {
				t.Fatal(err)
			}
			got, err := watchAll(ctx, t, g.gateway, sub.GetRequest().GetRequestId(), 0)
			if err != nil {
				t.Fatalf("watch: %v (got %v)", err, statuses(got))
			}
			checkOrdered(t, got, got[0].GetSeq())
			want := []comfygatev1.Status{comfygatev1.Status_STATUS_QUEUED, comfygatev1.Status_STATUS_RUNNING, comfygatev1.Status_STATUS_SUCCEEDED}
			// Polled every 25ms while watched, the 300ms run is seen; the
			// queued record may carry more than one queue position.
			if s := slices.Compact(statuses(got)); !slices.Equal(s, want) {
				t.Errorf("statuses %v, want %v", statuses(got), want)
			}
			tt.check(t, g)
			if g.scheduled(t, sub.GetRequest().GetRequestId()) {
				t.Error("a finished request is still scheduled for polls")
			}
		})
	}
}

// TestAttachRequestSubmittedElsewhere: a request that exists upstream but was
// not submitted through the gateway is found by GetStatus and WatchRequest,
// over gRPC and REST, and followed to its end from then on.
func TestAttachRequestSubmittedElsewhere(t *testing.T) {
	g := startPollGateway(t)
	t.Run("grpc watch", func(t *testing.T) {
		t.Parallel()
		rid := g.submitElsewhere(t)
		got, err := watchAll(ctxT(t), t, g.gateway, rid, 0)
		if err != nil {
			t.Fatalf("watch: %v (got %v)", err, statuses(got))
		}
		checkOrdered(t, got, 1)
		if last := got[len(got)-1]; last.GetStatus() != comfygatev1.Status_STATUS_SUCCEEDED || last.GetRequestId() != rid || last.GetDeploymentId() != "dep-1" {
			t.Errorf("last event %v, want request %s of dep-1 succeeded", last, rid)
		}
	})
	t.Run("grpc status then watch", func(t *testing.T) {
		t.Parallel()
		rid := g.submitElsewhere(t)
		ctx := ctxT(t)
		st, err := g.client.GetStatus(ctx, &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: rid})
		if err != nil {
			t.Fatal(err)
		}
		if s := st.GetRequest().GetStatus(); s != comfygatev1.Status_STATUS_QUEUED && s != comfygatev1.Status_STATUS_RUNNING {
			t.Errorf("status = %v, want queued or running", s)
		}
		if st.GetRequest().GetSeq() == 0 {
			t.Error("the attached request has no seq: not recorded")
		}
		got, err := watchAll(ctx, t, g.gateway, rid, st.GetRequest().GetSeq())
		if err != nil {
			t.Fatalf("watch: %v (got %v)", err, statuses(got))
		}
		checkOrdered(t, got, st.GetRequest().GetSeq()+1)
	})
	t.Run("rest status then watch", func(t *testing.T) {
		t.Parallel()
		rid := g.submitElsewhere(t)
		code, body := g.rest(t, http.MethodGet, "/v1/deployments/dep-1/requests/"+rid, nil)
		if code != http.StatusOK {
			t.Fatalf("GET status: HTTP %d %v", code, body)
		}
		req, _ := body["request"].(map[string]any)
		if s := req["status"]; s != "STATUS_QUEUED" && s != "STATUS_RUNNING" {
			t.Errorf("status = %v, want queued or running", s)
		}
		got, errCode := watchREST(ctxT(t), t, g.gateway, rid)
		if errCode != codes.OK || len(got) == 0 || got[len(got)-1] != "STATUS_SUCCEEDED" {
			t.Errorf("REST watch: %v, error %v; want to end with success", got, errCode)
		}
	})
	t.Run("rest watch", func(t *testing.T) {
		t.Parallel()
		rid := g.submitElsewhere(t)
		got, errCode := watchREST(ctxT(t), t, g.gateway, rid)
		if errCode != codes.OK || len(got) == 0 || got[len(got)-1] != "STATUS_SUCCEEDED" {
			t.Errorf("REST watch: %v, error %v; want to end with success", got, errCode)
		}
	})
	t.Run("status alone, then polling", func(t *testing.T) {
		// Nobody watches: the reconciler alone takes the attached request to
		// its end.
		t.Parallel()
		rid := g.submitElsewhere(t)
		ctx := ctxT(t)
		if _, err := g.client.GetStatus(ctx, &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: rid}); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			rec, err := g.tracker.Get(ctx, rid)
			if err == nil && rec.Terminal() {
				if rec.State != runcomfy.StateSucceeded || len(rec.OutputURLs) == 0 {
					t.Errorf("record %v with %d outputs, want succeeded with outputs", rec.State, len(rec.OutputURLs))
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("attached request not finished by polling: %v, %v", rec, err)
			}
		}
	})
}

// TestAttachUnknownRequestIsNotFound: a request RunComfy does not know is still
// NOT_FOUND on every path, and is not tracked.
func TestAttachUnknownRequestIsNotFound(t *testing.T) {
	g := startPollGateway(t)
	const rid = "4f1c3a52-0000-4000-8000-000000000000"
	ctx := ctxT(t)
	_, err := g.client.GetStatus(ctx, &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: rid})
	if got := status.Code(err); got != codes.NotFound {
		t.Errorf("gRPC GetStatus: code %v (%v), want NotFound", got, err)
	}
	if _, err := watchAll(ctx, t, g.gateway, rid, 0); status.Code(err) != codes.NotFound {
		t.Errorf("gRPC WatchRequest: %v, want NotFound", err)
	}
	if code, body := g.rest(t, http.MethodGet, "/v1/deployments/dep-1/requests/"+rid, nil); code != http.StatusNotFound {
		t.Errorf("REST GET: HTTP %d %v, want 404", code, body)
	}
	if got, errCode := watchREST(ctx, t, g.gateway, rid); errCode != codes.NotFound || len(got) != 0 {
		t.Errorf("REST watch: %v, error %v; want NotFound and nothing else", got, errCode)
	}
	if _, err := g.tracker.Get(ctx, rid); err == nil {
		t.Error("an unknown request was recorded")
	}
	if g.scheduled(t, rid) {
		t.Error("an unknown request was scheduled for polls")
	}
}
