package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"testing"

	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
	"github.com/comfygate/comfygate/state"
)

// refusal is what a caller sees of a call: the gRPC status (grpc set), or the
// REST HTTP status and body, byte for byte.
type refusal struct {
	grpc *spb.Status
	http int
	body []byte
}

func (r refusal) equal(o refusal) bool {
	if r.grpc != nil || o.grpc != nil {
		return proto.Equal(r.grpc, o.grpc)
	}
	return r.http == o.http && bytes.Equal(r.body, o.body)
}

func (r refusal) String() string {
	if r.grpc != nil {
		return fmt.Sprintf("gRPC %v %q details %v", codes.Code(r.grpc.GetCode()), r.grpc.GetMessage(), r.grpc.GetDetails())
	}
	return fmt.Sprintf("HTTP %d %s", r.http, r.body)
}

// requestProbe is one way of asking for a request: an RPC over one transport.
type requestProbe struct {
	name string
	call func(ctx context.Context, t *testing.T, g *gateway, key, rid string) refusal
}

// grpcRefusal is the status of a gRPC call's error (OK when it succeeded).
func grpcRefusal(err error) refusal {
	return refusal{grpc: status.Convert(err).Proto()}
}

// rawCall makes one REST call with key and returns its status and whole body.
func (g *gateway) rawCall(ctx context.Context, t *testing.T, key, method, path string) refusal {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, g.httpBase+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := g.httpc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the answer: %v", method, path, err)
	}
	return refusal{http: resp.StatusCode, body: body}
}

// requestProbes covers every RPC that names a request, on every transport.
func requestProbes() []requestProbe {
	path := func(rid string) string { return "/v1/deployments/dep-1/requests/" + rid }
	rest := func(method, suffix string) func(context.Context, *testing.T, *gateway, string, string) refusal {
		return func(ctx context.Context, t *testing.T, g *gateway, key, rid string) refusal {
			return g.rawCall(ctx, t, key, method, path(rid)+suffix)
		}
	}
	return []requestProbe{
		{"gRPC GetStatus", func(ctx context.Context, t *testing.T, g *gateway, key, rid string) refusal {
			_, err := g.client.GetStatus(as(ctx, key), &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: rid})
			return grpcRefusal(err)
		}},
		{"gRPC GetResult", func(ctx context.Context, t *testing.T, g *gateway, key, rid string) refusal {
			_, err := g.client.GetResult(as(ctx, key), &comfygatev1.GetResultRequest{DeploymentId: "dep-1", RequestId: rid})
			return grpcRefusal(err)
		}},
		{"gRPC Cancel", func(ctx context.Context, t *testing.T, g *gateway, key, rid string) refusal {
			_, err := g.client.Cancel(as(ctx, key), &comfygatev1.CancelRequest{DeploymentId: "dep-1", RequestId: rid})
			return grpcRefusal(err)
		}},
		{"gRPC WatchRequest", func(ctx context.Context, t *testing.T, g *gateway, key, rid string) refusal {
			// A watch that is let through is cut after its first event.
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			stream, err := g.client.WatchRequest(as(ctx, key), &comfygatev1.WatchRequestRequest{DeploymentId: "dep-1", RequestId: rid})
			if err == nil {
				_, err = stream.Recv()
			}
			return grpcRefusal(err)
		}},
		{"REST status", rest(http.MethodGet, "")},
		{"REST result", rest(http.MethodGet, "/result")},
		{"REST cancel", rest(http.MethodPost, ":cancel")},
		{"REST watch (NDJSON)", rest(http.MethodGet, ":watch")},
		{"REST events (SSE)", rest(http.MethodGet, "/events")},
	}
}

// checkNoSuchRequest asserts that r is the gateway's one NotFound of a
// request: gRPC NOT_FOUND "no such request" without details, or over REST that
// status as JSON (a watch's error line included), without details.
func checkNoSuchRequest(t *testing.T, r refusal) {
	t.Helper()
	if r.grpc != nil {
		if want := status.New(codes.NotFound, "no such request").Proto(); !proto.Equal(r.grpc, want) {
			t.Errorf("got %v, want NOT_FOUND %q without details", r, want.GetMessage())
		}
		return
	}
	var body struct {
		Error *json.RawMessage `json:"error"` // the NDJSON watch wraps it
	}
	raw := bytes.TrimSpace(r.body)
	if err := json.Unmarshal(raw, &body); err == nil && body.Error != nil {
		raw = *body.Error
	}
	var st struct {
		Code    int               `json:"code"`
		Message string            `json:"message"`
		Details []json.RawMessage `json:"details"`
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		t.Fatalf("%v: not a status: %v", r, err)
	}
	if st.Code != int(codes.NotFound) || st.Message != "no such request" || len(st.Details) != 0 {
		t.Errorf("got %v, want NOT_FOUND \"no such request\" without details", r)
	}
	if r.http != http.StatusNotFound && r.http != http.StatusOK {
		// 200 only for a stream whose error follows its headers.
		t.Errorf("got %v, want HTTP 404", r)
	}
}

// submitElsewhere submits a job straight to the simulator, as another tool
// on the same RunComfy account would: RunComfy knows it, the gateway does not.
func submitElsewhere(ctx context.Context, t *testing.T, g *gateway) string {
	t.Helper()
	up, err := g.upstream.Submit(ctx, "dep-1", []byte(`{"prompt":"elsewhere"}`), runcomfy.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return up.RequestID
}

// recordOwnerless records a request as a callback that arrives before any
// submit record does: a record nobody owns.
func recordOwnerless(ctx context.Context, t *testing.T, g *gateway, rid string) {
	t.Helper()
	rec, _, err := g.tracker.Apply(ctx, state.Update{RequestID: rid, DeploymentID: "dep-1", Source: "callback", State: runcomfy.StateQueued})
	if err != nil {
		t.Fatal(err)
	}
	if rec == nil || rec.Owner != "" {
		t.Fatalf("recorded %+v, want a record without owner", rec)
	}
}

// TestNotFoundIsTheSameForEveryCause: whatever the reason a tenant cannot have
// a request (another tenant's, unknown to everyone, known only to RunComfy, a
// record nobody owns, or one RunComfy does not know), every RPC on every
// transport answers byte for byte the same NotFound; and a tenant without the
// attach permission never makes the gateway call RunComfy for it.
func TestNotFoundIsTheSameForEveryCause(t *testing.T) {
	g := startGateway(t, withKeysFile(t, "tenant-a "+keyA+"\ntenant-b "+keyB+"\ntenant-c "+keyC+" attach\n"))
	ctx := ctxT(t)
	sub, err := g.client.Submit(as(ctx, keyA), &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`})
	if err != nil {
		t.Fatal(err)
	}
	ridA := sub.GetRequest().GetRequestId()
	elsewhere := submitElsewhere(ctx, t, g)
	ownerless := submitElsewhere(ctx, t, g)
	recordOwnerless(ctx, t, g, ownerless)
	const unknown = "no-such-request-anywhere"

	for _, p := range requestProbes() {
		t.Run(p.name, func(t *testing.T) {
			// The reference: another tenant's request.
			before := g.sim.TotalCalls()
			want := p.call(ctx, t, g, keyB, ridA)
			checkNoSuchRequest(t, want)

			// tenant-b may not attach: every other cause looks the same, and
			// RunComfy hears of none.
			for _, tt := range []struct{ name, rid string }{
				{"an id nobody knows", unknown},
				{"an id only RunComfy knows", elsewhere},
				{"a record nobody owns", ownerless},
			} {
				if got := p.call(ctx, t, g, keyB, tt.rid); !got.equal(want) {
					t.Errorf("tenant-b, %s: got %v, want %v as for another tenant's", tt.name, got, want)
				}
			}
			if got := g.sim.TotalCalls() - before; got != 0 {
				t.Errorf("tenant-b without attach: RunComfy saw %d calls, want 0", got)
			}

			// tenant-c may attach: another tenant's request still costs no
			// upstream call; an id RunComfy does not know costs one, and
			// then answers the same.
			before = g.sim.TotalCalls()
			if got := p.call(ctx, t, g, keyC, ridA); !got.equal(want) {
				t.Errorf("tenant-c, another tenant's request: got %v, want %v", got, want)
			}
			if got := g.sim.TotalCalls() - before; got != 0 {
				t.Errorf("tenant-c, another tenant's request: RunComfy saw %d calls, want 0", got)
			}
			before = g.sim.TotalCalls()
			if got := p.call(ctx, t, g, keyC, unknown); !got.equal(want) {
				t.Errorf("tenant-c, an id nobody knows: got %v, want %v as for another tenant's", got, want)
			}
			if got := g.sim.TotalCalls() - before; got == 0 {
				t.Errorf("tenant-c, an id nobody knows: RunComfy was not asked")
			}
		})
	}

	// Nothing was attached or claimed on tenant-b's behalf.
	if _, err := g.tracker.Get(ctx, elsewhere); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("the request only RunComfy knew is now recorded (%v)", err)
	}
	if rec, err := g.tracker.Get(ctx, ownerless); err != nil || rec.Owner != "" {
		t.Errorf("the ownerless record: %+v, %v; want it still without owner", rec, err)
	}
	if got, _ := g.sim.JobState(ridA); got != "in_queue" {
		t.Errorf("tenant-a's job is %q after the others' cancels, want still in_queue", got)
	}
}

// TestAttachIsAPermission: a tenant with the attach permission attaches a
// request submitted to RunComfy by another tool and follows it to its end;
// then it is that tenant's, and other tenants (even ones that may attach) get
// NotFound for it without a RunComfy call. A record nobody owns is claimed by
// a tenant that may attach, never by one that may not.
func TestAttachIsAPermission(t *testing.T) {
	g := startGateway(t, withKeysFile(t, "tenant-a "+keyA+"\ntenant-c "+keyC+" attach\ntenant-d "+keyD+" attach\n"))
	ctx := ctxT(t)

	t.Run("a request only RunComfy knows", func(t *testing.T) {
		rid := submitElsewhere(ctx, t, g)
		before := g.sim.TotalCalls()
		_, err := g.client.GetStatus(as(ctx, keyA), &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: rid})
		checkNoSuchRequest(t, grpcRefusal(err))
		if got := g.sim.TotalCalls() - before; got != 0 {
			t.Errorf("tenant-a without attach: RunComfy saw %d calls, want 0", got)
		}

		// tenant-c attaches it by watching, and follows it to the end.
		stream, err := g.client.WatchRequest(as(ctx, keyC), &comfygatev1.WatchRequestRequest{DeploymentId: "dep-1", RequestId: rid})
		if err != nil {
			t.Fatal(err)
		}
		first, err := stream.Recv()
		if err != nil {
			t.Fatalf("tenant-c attaching by a watch: %v", err)
		}
		if got, want := first.GetRequest().GetStatus(), comfygatev1.Status_STATUS_QUEUED; got != want {
			t.Errorf("first event %v, want %v", got, want)
		}
		if err := g.sim.Finish(rid, runcomfysim.Outcome{}); err != nil {
			t.Fatal(err)
		}
		// The owner's read applies what RunComfy says, and the watch gets it.
		if _, err := g.client.GetStatus(as(ctx, keyC), &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: rid}); err != nil {
			t.Fatalf("tenant-c status of its attached request: %v", err)
		}
		var last *comfygatev1.RequestState
		for {
			msg, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("tenant-c watch: %v", err)
			}
			last = msg.GetRequest()
		}
		if got, want := last.GetStatus(), comfygatev1.Status_STATUS_SUCCEEDED; got != want {
			t.Errorf("the watch ended on %v, want %v", got, want)
		}
		if rec, err := g.tracker.Get(ctx, rid); err != nil || rec.Owner != "tenant-c" {
			t.Errorf("record %+v, %v; want it tenant-c's", rec, err)
		}

		// Now it is tenant-c's: nobody else gets it, nor makes RunComfy work.
		before = g.sim.TotalCalls()
		for _, key := range []string{keyA, keyD} {
			for _, p := range requestProbes() {
				want := p.call(ctx, t, g, key, "no-such-request-anywhere")
				if got := p.call(ctx, t, g, key, rid); !got.equal(want) {
					t.Errorf("%s of tenant-c's attached request: got %v, want %v", p.name, got, want)
				}
			}
		}
		if got, want := g.sim.TotalCalls()-before, len(requestProbes()); got != want {
			// tenant-d's unknown ids, one upstream read each; nothing else.
			t.Errorf("RunComfy saw %d calls, want %d", got, want)
		}
	})

	t.Run("a record nobody owns", func(t *testing.T) {
		rid := submitElsewhere(ctx, t, g)
		recordOwnerless(ctx, t, g, rid)
		before := g.sim.TotalCalls()
		for _, p := range requestProbes() {
			checkNoSuchRequest(t, p.call(ctx, t, g, keyA, rid))
		}
		if got := g.sim.TotalCalls() - before; got != 0 {
			t.Errorf("tenant-a without attach: RunComfy saw %d calls, want 0", got)
		}
		if rec, err := g.tracker.Get(ctx, rid); err != nil || rec.Owner != "" {
			t.Fatalf("after tenant-a: %+v, %v; want no owner", rec, err)
		}
		if _, err := g.client.GetStatus(as(ctx, keyC), &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: rid}); err != nil {
			t.Fatalf("tenant-c claiming: %v", err)
		}
		if rec, err := g.tracker.Get(ctx, rid); err != nil || rec.Owner != "tenant-c" {
			t.Errorf("after tenant-c: %+v, %v; want it tenant-c's", rec, err)
		}
	})
}

// TestLocalUserMayAttach: without a keys file the single local user attaches
// what RunComfy knows, and an id RunComfy does not know is the same NotFound.
func TestLocalUserMayAttach(t *testing.T) {
	g := startGateway(t)
	ctx := ctxT(t)
	rid := submitElsewhere(ctx, t, g)
	st, err := g.client.GetStatus(ctx, &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: rid})
	if err != nil {
		t.Fatalf("attaching without keys: %v", err)
	}
	if got, want := st.GetRequest().GetStatus(), comfygatev1.Status_STATUS_QUEUED; got != want {
		t.Errorf("status %v, want %v", got, want)
	}
	if _, err := g.tracker.Get(ctx, rid); err != nil {
		t.Errorf("the attached request is not recorded: %v", err)
	}
	before := g.sim.TotalCalls()
	_, err = g.client.GetResult(ctx, &comfygatev1.GetResultRequest{DeploymentId: "dep-1", RequestId: "no-such-request-anywhere"})
	checkNoSuchRequest(t, grpcRefusal(err))
	if g.sim.TotalCalls() == before {
		t.Error("RunComfy was not asked for an unknown id")
	}
}
