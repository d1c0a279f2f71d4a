package server_test

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/comfygate/comfygate/auth"
	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
)

const (
	keyA = "key-of-tenant-a-0123456789"
	keyB = "key-of-tenant-b-0123456789"
	keyC = "key-of-tenant-c-0123456789"
	keyD = "key-of-tenant-d-0123456789"
)

// withKeys requires API keys: tenant-a and tenant-b, neither of which may
// attach.
func withKeys(t *testing.T) func(*gatewayOptions) {
	return withKeysFile(t, "# tenants\ntenant-a "+keyA+"\ntenant-b "+keyB+"\n")
}

// withKeysFile requires the API keys of a keys file with content.
func withKeysFile(t *testing.T, content string) func(*gatewayOptions) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	keys, err := auth.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return func(o *gatewayOptions) { o.auth = keys }
}

func as(ctx context.Context, key string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
}

// restAs sends a REST call with key (none when empty) and returns the status.
func (g *gateway) restAs(t *testing.T, key, method, path string, body string) int {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, g.httpBase+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func TestCallsWithoutAValidKeyAreRefused(t *testing.T) {
	g := startGateway(t, withKeys(t))
	ctx := ctxT(t)
	for name, ctx := range map[string]context.Context{
		"no key":      ctx,
		"unknown key": as(ctx, "key-of-nobody-0123456789"),
		"not bearer":  metadata.AppendToOutgoingContext(ctx, "authorization", "Basic "+keyA),
	} {
		_, err := g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`})
		if got, want := status.Code(err), codes.Unauthenticated; got != want {
			t.Errorf("%s: Submit code = %v, want %v", name, got, want)
		}
		stream, err := g.client.WatchRequest(ctx, &comfygatev1.WatchRequestRequest{DeploymentId: "dep-1", RequestId: "r-1"})
		if err == nil {
			_, err = stream.Recv()
		}
		if got, want := status.Code(err), codes.Unauthenticated; got != want {
			t.Errorf("%s: WatchRequest code = %v, want %v", name, got, want)
		}
	}
	if got := g.restAs(t, "", http.MethodPost, "/v1/deployments/dep-1/requests", `{}`); got != http.StatusUnauthorized {
		t.Errorf("REST submit without key: %d, want 401", got)
	}
	if got := g.restAs(t, "key-of-nobody-0123456789", http.MethodGet, "/v1/deployments/dep-1/requests/r-1", ""); got != http.StatusUnauthorized {
		t.Errorf("REST status with unknown key: %d, want 401", got)
	}
	if got := g.sim.TotalCalls(); got != 0 {
		t.Errorf("RunComfy saw %d calls, want 0", got)
	}
	// Probes need no key.
	resp, err := http.Get(g.httpBase + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/readyz without key: %d", resp.StatusCode)
	}
}

// TestTenantsSeeOnlyTheirRequests: tenant-b gets NotFound (REST 404) for every
// RPC on tenant-a's request, and RunComfy is never asked on its behalf.
func TestTenantsSeeOnlyTheirRequests(t *testing.T) {
	g := startGateway(t, withKeys(t))
	ctx := ctxT(t)
	sub, err := g.client.Submit(as(ctx, keyA), &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`})
	if err != nil {
		t.Fatal(err)
	}
	rid := sub.GetRequest().GetRequestId()
	before := g.sim.TotalCalls()

	b := as(ctx, keyB)
	calls := map[string]func() error{
		"GetStatus": func() error {
			_, err := g.client.GetStatus(b, &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: rid})
			return err
		},
		"GetResult": func() error {
			_, err := g.client.GetResult(b, &comfygatev1.GetResultRequest{DeploymentId: "dep-1", RequestId: rid})
			return err
		},
		"Cancel": func() error {
			_, err := g.client.Cancel(b, &comfygatev1.CancelRequest{DeploymentId: "dep-1", RequestId: rid})
			return err
		},
		"WatchRequest": func() error {
			_, err := watchAll(b, t, g, rid, 0)
			return err
		},
	}
	for name, call := range calls {
		if got, want := status.Code(call()), codes.NotFound; got != want {
			t.Errorf("tenant-b %s of tenant-a's request: %v, want %v", name, got, want)
		}
	}
	base := "/v1/deployments/dep-1/requests/" + rid
	for _, r := range []struct{ method, path string }{
		{http.MethodGet, base}, {http.MethodGet, base + "/result"}, {http.MethodPost, base + ":cancel"}, {http.MethodGet, base + ":watch"},
	} {
		code := g.restAs(t, keyB, r.method, r.path, "")
		// A stream's error comes in its body; its HTTP status may already be 200.
		if code != http.StatusNotFound && !strings.HasSuffix(r.path, ":watch") {
			t.Errorf("tenant-b REST %s %s: %d, want 404", r.method, r.path, code)
		}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, g.httpBase+base+":watch", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+keyB)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	line, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(line), `"code":5`) || strings.Contains(string(line), `"result"`) {
		t.Errorf("tenant-b REST watch: %s, want one NotFound error line", line)
	}
	if got := g.sim.TotalCalls(); got != before {
		t.Errorf("RunComfy saw %d calls for tenant-b, want none", got-before)
	}
	if state, _ := g.sim.JobState(rid); state != "in_queue" {
		t.Errorf("tenant-a's job is %q after tenant-b's cancel, want still in_queue", state)
	}

	// The owner still sees everything.
	if _, err := g.client.GetStatus(as(ctx, keyA), &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: rid}); err != nil {
		t.Errorf("tenant-a GetStatus of its own request: %v", err)
	}
	if got := g.restAs(t, keyA, http.MethodGet, base, ""); got != http.StatusOK {
		t.Errorf("tenant-a REST status of its own request: %d", got)
	}
}

// TestAttachedRequestBelongsToTheFirstTenant: a request submitted to RunComfy
// by another tool becomes the first asking tenant's; others then get NotFound,
// even those that may attach too.
func TestAttachedRequestBelongsToTheFirstTenant(t *testing.T) {
	g := startGateway(t, withKeysFile(t, "tenant-a "+keyA+" attach\ntenant-b "+keyB+" attach\n"))
	ctx := ctxT(t)
	up, err := g.upstream.Submit(ctx, "dep-1", []byte(`{"prompt":"elsewhere"}`), runcomfy.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rid := up.RequestID
	if _, err := g.client.GetStatus(as(ctx, keyB), &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: rid}); err != nil {
		t.Fatalf("tenant-b attaching: %v", err)
	}
	_, err = g.client.GetStatus(as(ctx, keyA), &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: rid})
	if got, want := status.Code(err), codes.NotFound; got != want {
		t.Errorf("tenant-a after tenant-b attached: %v, want %v", got, want)
	}
	if err := g.sim.Finish(rid, runcomfysim.Outcome{}); err != nil {
		t.Fatal(err)
	}
	res, err := g.client.GetResult(as(ctx, keyB), &comfygatev1.GetResultRequest{DeploymentId: "dep-1", RequestId: rid})
	if err != nil || res.GetRequest().GetStatus() != comfygatev1.Status_STATUS_SUCCEEDED {
		t.Fatalf("tenant-b result: %v %v", res, err)
	}
	_, err = g.client.GetResult(as(ctx, keyA), &comfygatev1.GetResultRequest{DeploymentId: "dep-1", RequestId: rid})
	if got, want := status.Code(err), codes.NotFound; got != want {
		t.Errorf("tenant-a result of tenant-b's request: %v, want %v", got, want)
	}
}

// TestSubmitterOwnsARequestFinishedBeforeItsAnswer: RunComfy can send every
// callback, the final one included, before it answers the submit; the request
// still belongs to the tenant that submitted it.
func TestSubmitterOwnsARequestFinishedBeforeItsAnswer(t *testing.T) {
	g := startGateway(t, withKeys(t), withCallbacks)
	g.sim.SetFaults(runcomfysim.Faults{CallbackBeforeSubmitResponse: true})
	ctx := ctxT(t)
	sub, err := g.client.Submit(as(ctx, keyA), &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`})
	if err != nil {
		t.Fatal(err)
	}
	rid := sub.GetRequest().GetRequestId()
	st, err := g.client.GetStatus(as(ctx, keyA), &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: rid})
	if err != nil || st.GetRequest().GetStatus() != comfygatev1.Status_STATUS_SUCCEEDED {
		t.Fatalf("submitter's status: %v %v", st, err)
	}
	_, err = g.client.GetStatus(as(ctx, keyB), &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: rid})
	if got, want := status.Code(err), codes.NotFound; got != want {
		t.Errorf("other tenant: %v, want %v", got, want)
	}
}
