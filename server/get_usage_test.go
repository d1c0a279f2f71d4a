package server_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// TestGetUsage: a tenant's ended requests are counted by final status with
// their durations, by deployment and in total; running ones are not; another
// tenant sees only its own; REST serves the same; bad ranges are refused.
func TestGetUsage(t *testing.T) {
	g := startGateway(t, withKeys(t))
	ctx := ctxT(t)
	for range 3 {
		rid := g.submitAs(ctx, t, keyA)
		g.stepAs(ctx, t, keyA, rid)
		g.stepAs(ctx, t, keyA, rid)
	}
	cancelled := g.submitAs(ctx, t, keyA)
	if _, err := g.client.Cancel(as(ctx, keyA), &comfygatev1.CancelRequest{DeploymentId: "dep-1", RequestId: cancelled}); err != nil {
		t.Fatal(err)
	}
	g.submitAs(ctx, t, keyA) // still queued: not counted
	g.submitAs(ctx, t, keyB)

	resp, err := g.client.GetUsage(as(ctx, keyA), &comfygatev1.GetUsageRequest{})
	if err != nil {
		t.Fatal(err)
	}
	tot := resp.GetTotal()
	if len(resp.GetDeployments()) != 1 || resp.GetDeployments()[0].GetDeploymentId() != "dep-1" ||
		tot.GetSucceeded() != 3 || tot.GetCancelled() != 1 || tot.GetFailed() != 0 ||
		tot.GetRun().GetCount() != 3 || tot.GetQueue().GetCount() != 4 {
		t.Errorf("A's usage: %v", resp)
	}
	if !resp.GetEnd().AsTime().After(time.Now()) || resp.GetEnd().AsTime().Sub(resp.GetStart().AsTime()) < 24*time.Hour {
		t.Errorf("range %v..%v: want the last 24 hours, in whole hours", resp.GetStart().AsTime(), resp.GetEnd().AsTime())
	}
	if b, err := g.client.GetUsage(as(ctx, keyB), &comfygatev1.GetUsageRequest{}); err != nil || b.GetTotal().GetSucceeded()+b.GetTotal().GetCancelled() != 0 {
		t.Errorf("B's usage: %v, %v", b, err)
	}
	if other, err := g.client.GetUsage(as(ctx, keyA), &comfygatev1.GetUsageRequest{DeploymentId: "dep-2"}); err != nil || len(other.GetDeployments()) != 0 {
		t.Errorf("A's usage of dep-2: %v, %v", other, err)
	}

	var rest struct {
		Total struct {
			Succeeded string `json:"succeeded"`
		} `json:"total"`
	}
	if code, body := g.getJSON(t, keyA, "/v1/usage?deployment_id=dep-1", &rest); code != http.StatusOK || rest.Total.Succeeded != "3" {
		t.Errorf("GET /v1/usage: %d %s", code, body)
	}

	now := time.Now()
	for _, tc := range []struct {
		name  string
		req   *comfygatev1.GetUsageRequest
		field string
	}{
		{"end before start", &comfygatev1.GetUsageRequest{Start: timestamppb.New(now), End: timestamppb.New(now.Add(-time.Hour))}, "end"},
		{"longer than kept", &comfygatev1.GetUsageRequest{Start: timestamppb.New(now.Add(-100 * 24 * time.Hour))}, "start"},
		{"malformed deployment", &comfygatev1.GetUsageRequest{DeploymentId: "dep 1"}, "deployment_id"},
		{"the last of all times", &comfygatev1.GetUsageRequest{Start: timestamppb.New(time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)), End: timestamppb.New(time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC))}, "after 9000"},
		{"the first of all times", &comfygatev1.GetUsageRequest{End: timestamppb.New(time.Time{})}, "end"},
		{"a day after 1970", &comfygatev1.GetUsageRequest{End: timestamppb.New(time.Unix(3600, 0))}, "end"},
		{"before 1970", &comfygatev1.GetUsageRequest{Start: timestamppb.New(time.Unix(-1800, 0)), End: timestamppb.New(time.Unix(3600, 0))}, "start"},
	} {
		if _, err := g.client.GetUsage(as(ctx, keyA), tc.req); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}
