package server_test

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
)

func TestSubmitForwardsInputByteForByte(t *testing.T) {
	g := startGateway(t)
	inputs := map[string]string{
		"compact":  seedInput,
		"spaced":   "{\n  \"seed\": 18446744073709551615,\n  \"width\": 1024, \"network_multiplier\": 1.0\n}",
		"lora":     `{"prompt":"warm","ctrl_img_1":"https://example.com/a.webp","width":1024,"height":1024,"guidance_scale":4,"seed":42,"neg":""}`,
		"workflow": `{"workflow_api_json":{"3":{"class_type":"KSampler","inputs":{"seed":18446744073709551615}}}}`,
	}
	for name, input := range inputs {
		t.Run("grpc/"+name, func(t *testing.T) {
			resp, err := g.client.Submit(ctxT(t), &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: input})
			if err != nil {
				t.Fatal(err)
			}
			rec, _ := g.sim.LastSubmit()
			if got, want := string(rec.Body), input; got != want {
				t.Errorf("upstream body = %s, want %s", got, want)
			}
			if got, want := rec.RequestID, resp.GetRequest().GetRequestId(); got != want || got == "" {
				t.Errorf("request id = %q, want %q", want, got)
			}
			if got, want := resp.GetRequest().GetStatus(), comfygatev1.Status_STATUS_QUEUED; got != want {
				t.Errorf("status = %v, want %v", got, want)
			}
		})
		t.Run("rest/"+name, func(t *testing.T) {
			code, body := g.rest(t, http.MethodPost, "/v1/deployments/dep-1/requests", []byte(input))
			if code != http.StatusOK {
				t.Fatalf("HTTP %d: %v", code, body)
			}
			rec, _ := g.sim.LastSubmit()
			if got, want := string(rec.Body), input; got != want {
				t.Errorf("upstream body = %s, want %s", got, want)
			}
			req := body["request"].(map[string]any)
			if got, want := req["request_id"], rec.RequestID; got != want {
				t.Errorf("request_id = %v, want %v", got, want)
			}
			if got, want := req["status"], "STATUS_QUEUED"; got != want {
				t.Errorf("status = %v, want %v", got, want)
			}
		})
	}
}

func TestSubmitIsNeverRetried(t *testing.T) {
	for _, fault := range []runcomfysim.FaultError{
		{HTTPStatus: 500, ErrorCode: 500001},
		{HTTPStatus: 503},
		{HTTPStatus: 429, RetryAfter: "0"},
	} {
		g := startGateway(t)
		g.sim.SetFaults(runcomfysim.Faults{Errors: map[string]runcomfysim.FaultError{"submit": fault}})
		_, err := g.client.Submit(ctxT(t), &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`})
		if err == nil {
			t.Fatal("submit succeeded against a failing upstream")
		}
		if got, want := g.sim.Calls("submit"), 1; got != want {
			t.Errorf("HTTP %d: upstream submits = %d, want %d", fault.HTTPStatus, got, want)
		}
	}
}

// TestSubmitOfACallerThatGaveUpIsNotSent: a submit whose caller's context
// ended while it waited (its deadline passed, or it went away) is not sent
// to RunComfy: its answer would reach no one, and a retry would start the
// job again.
func TestSubmitOfACallerThatGaveUpIsNotSent(t *testing.T) {
	g := startGateway(t)
	for _, tc := range []struct {
		name string
		ctx  func() context.Context
		want error
	}{
		{"deadline passed", func() context.Context {
			ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
			t.Cleanup(cancel)
			return ctx
		}, context.DeadlineExceeded},
		{"caller gone", func() context.Context {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx
		}, context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := g.svc.Submit(tc.ctx(), &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`})
			if !errors.Is(err, tc.want) {
				t.Errorf("Submit = %v, want %v", err, tc.want)
			}
		})
	}
	if n := len(g.sim.Submits()); n != 0 {
		t.Errorf("%d submits reached RunComfy", n)
	}
}
