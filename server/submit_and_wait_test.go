package server_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// manualCallbacks: jobs move only on Advance, and each move is called back.
func manualCallbacks(o *gatewayOptions) { o.callbacks = true }

// advanceWhenSubmitted waits for the simulator's next job and moves it to
// its end, as the wait goes on.
func advanceWhenSubmitted(t *testing.T, g *gateway, before int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if subs := g.sim.Submits(); len(subs) > before && subs[len(subs)-1].RequestID != "" {
			id := subs[len(subs)-1].RequestID
			for range 2 {
				if err := g.sim.Advance(id); err != nil {
					t.Error(err)
				}
			}
			return
		}
		if time.Now().After(deadline) {
			t.Error("no job was submitted")
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestSubmitAndWait: a job that ends within the wait is answered with its
// final state, done; one that does not, with its current state when the
// wait ends, not done.
func TestSubmitAndWait(t *testing.T) {
	g := startGateway(t, manualCallbacks)
	ctx := ctxT(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		advanceWhenSubmitted(t, g, 0)
	}()
	resp, err := g.client.SubmitAndWait(ctx, &comfygatev1.SubmitAndWaitRequest{
		Submit: &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{"overrides": {}}`},
		Wait:   durationpb.New(30 * time.Second),
	})
	<-done
	if err != nil || !resp.GetDone() || resp.GetRequest().GetStatus() != comfygatev1.Status_STATUS_SUCCEEDED || len(resp.GetRequest().GetOutputUrls()) == 0 {
		t.Fatalf("SubmitAndWait of a job that ends: %v, %v", resp, err)
	}

	start := time.Now()
	resp, err = g.client.SubmitAndWait(ctx, &comfygatev1.SubmitAndWaitRequest{
		Submit: &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{"overrides": {}}`},
		Wait:   durationpb.New(300 * time.Millisecond),
	})
	if err != nil || resp.GetDone() || resp.GetRequest().GetStatus() != comfygatev1.Status_STATUS_QUEUED || resp.GetRequest().GetRequestId() == "" {
		t.Fatalf("SubmitAndWait of a job that waits: %v, %v", resp, err)
	}
	if waited := time.Since(start); waited < 300*time.Millisecond {
		t.Errorf("answered after %v, before the wait ended", waited)
	}

	for _, tc := range []struct {
		name string
		req  *comfygatev1.SubmitAndWaitRequest
	}{
		{"no submit", &comfygatev1.SubmitAndWaitRequest{}},
		{"negative wait", &comfygatev1.SubmitAndWaitRequest{Submit: &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`}, Wait: durationpb.New(-time.Second)}},
		{"bad input", &comfygatev1.SubmitAndWaitRequest{Submit: &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `[]`}}},
	} {
		if _, err := g.client.SubmitAndWait(ctx, tc.req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want INVALID_ARGUMENT", tc.name, err)
		}
	}
}

// TestSubmitPreferWait: over REST, "Prefer: wait=N" answers 200 with the
// final state when the job ends in time, 202 with the current one when it
// does not, each with Preference-Applied; without it, a submit answers at
// once as before.
func TestSubmitPreferWait(t *testing.T) {
	g := startGateway(t, manualCallbacks)
	post := func(prefer string) (int, http.Header, *comfygatev1.RequestState) {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, g.httpBase+"/v1/deployments/dep-1/requests", strings.NewReader(`{"overrides": {}}`))
		if err != nil {
			t.Fatal(err)
		}
		if prefer != "" {
			req.Header.Set("Prefer", prefer)
		}
		resp, err := g.httpc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		var out struct {
			Request struct {
				RequestID string `json:"request_id"`
				Status    string `json:"status"`
			} `json:"request"`
		}
		if err := json.Unmarshal(body, &out); err != nil {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
		st := comfygatev1.Status(comfygatev1.Status_value[out.Request.Status])
		return resp.StatusCode, resp.Header, &comfygatev1.RequestState{RequestId: out.Request.RequestID, Status: st}
	}

	done := make(chan struct{})
	go func() {
		defer close(done)
		advanceWhenSubmitted(t, g, len(g.sim.Submits()))
	}()
	code, h, st := post("wait=30")
	<-done
	if code != http.StatusOK || st.GetStatus() != comfygatev1.Status_STATUS_SUCCEEDED || h.Get("Preference-Applied") != "wait=30" {
		t.Errorf("Prefer: wait=30 on a job that ends: %d %v %v", code, st, h)
	}
	code, h, st = post("respond-async, wait=1")
	if code != http.StatusAccepted || st.GetStatus() != comfygatev1.Status_STATUS_QUEUED || h.Get("Preference-Applied") != "wait=1" {
		t.Errorf("Prefer: wait=1 on a job that waits: %d %v %v", code, st, h)
	}
	for k := range h {
		if strings.HasPrefix(strings.ToLower(k), "grpc-metadata-") {
			t.Errorf("the answer carries %s", k)
		}
	}
	code, h, st = post("")
	if code != http.StatusOK || st.GetStatus() != comfygatev1.Status_STATUS_QUEUED || h.Get("Preference-Applied") != "" {
		t.Errorf("a submit without Prefer: %d %v %v", code, st, h)
	}
}
