package server_test

import (
	"testing"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
)

func TestCancel(t *testing.T) {
	tests := []struct {
		name        string
		faults      runcomfysim.Faults
		advance     int // 0: queued, 1: running, 2: finished
		wantOutcome comfygatev1.CancelOutcome
		wantStatus  comfygatev1.Status
	}{
		{"queued", runcomfysim.Faults{}, 0, comfygatev1.CancelOutcome_CANCEL_OUTCOME_CANCELLED, comfygatev1.Status_STATUS_CANCELLED},
		// Upstream stops a running job asynchronously: still running when Cancel answers.
		{"running", runcomfysim.Faults{}, 1, comfygatev1.CancelOutcome_CANCEL_OUTCOME_CANCELLED, comfygatev1.Status_STATUS_RUNNING},
		{"finished", runcomfysim.Faults{}, 2, comfygatev1.CancelOutcome_CANCEL_OUTCOME_NOT_CANCELLABLE, comfygatev1.Status_STATUS_SUCCEEDED},
		{"older status shape, queued", runcomfysim.Faults{CancelShape: runcomfysim.CancelShapeStatus}, 0, comfygatev1.CancelOutcome_CANCEL_OUTCOME_REQUESTED, comfygatev1.Status_STATUS_CANCELLED},
		{"both shapes, queued", runcomfysim.Faults{CancelShape: runcomfysim.CancelShapeBoth}, 0, comfygatev1.CancelOutcome_CANCEL_OUTCOME_CANCELLED, comfygatev1.Status_STATUS_CANCELLED},
		{"canceled spelling", runcomfysim.Faults{CancelShape: runcomfysim.CancelShapeStatus, CanceledSpelling: true}, 0, comfygatev1.CancelOutcome_CANCEL_OUTCOME_REQUESTED, comfygatev1.Status_STATUS_CANCELLED},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := startGateway(t)
			ctx := ctxT(t)
			g.sim.SetFaults(tt.faults)
			sub, err := g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`})
			if err != nil {
				t.Fatal(err)
			}
			rid := sub.GetRequest().GetRequestId()
			for range tt.advance {
				if err := g.sim.Advance(rid); err != nil {
					t.Fatal(err)
				}
			}
			resp, err := g.client.Cancel(ctx, &comfygatev1.CancelRequest{DeploymentId: "dep-1", RequestId: rid})
			if err != nil {
				t.Fatal(err)
			}
			if got := resp.GetOutcome(); got != tt.wantOutcome {
				t.Errorf("outcome = %v (%q), want %v", got, resp.GetUpstreamOutcome(), tt.wantOutcome)
			}
			if got := resp.GetRequest().GetStatus(); got != tt.wantStatus {
				t.Errorf("status = %v, want %v", got, tt.wantStatus)
			}
		})
	}
}
