package server_test

import (
	"bufio"
	"crypto/tls"
	"net/http"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/internal/testcert"
)

// withTLS serves the gateway with a fresh self-signed certificate for
// 127.0.0.1, which the test's clients trust.
func withTLS(t *testing.T) func(*gatewayOptions) {
	c := testcert.New(t)
	return func(o *gatewayOptions) {
		o.tls = &tls.Config{Certificates: []tls.Certificate{c.TLS}, MinVersion: tls.VersionTLS12}
		o.tlsRoots = c.Roots
	}
}

// TestTLSOnBothListeners: gRPC and REST are served over TLS, the REST gateway
// reaches the gRPC listener over TLS too (a watch streams through it), and a
// plaintext client is refused.
func TestTLSOnBothListeners(t *testing.T) {
	g := startGateway(t, withTLS(t))
	ctx := ctxT(t)
	sub, err := g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`})
	if err != nil {
		t.Fatalf("gRPC over TLS: %v", err)
	}
	rid := sub.GetRequest().GetRequestId()
	if !strings.HasPrefix(g.httpBase, "https://") {
		t.Fatalf("REST base %s is not https", g.httpBase)
	}
	resp, err := g.httpc.Get(g.httpBase + "/v1/deployments/dep-1/requests/" + rid)
	if err != nil {
		t.Fatalf("REST over TLS: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("REST over TLS: HTTP %d", resp.StatusCode)
	}
	for range 2 {
		if err := g.sim.Advance(rid); err != nil {
			t.Fatal(err)
		}
	}
	// A read records the success; the watch then streams it through the
	// gateway's own TLS connection to the gRPC listener.
	if _, err := g.client.GetResult(ctx, &comfygatev1.GetResultRequest{DeploymentId: "dep-1", RequestId: rid}); err != nil {
		t.Fatal(err)
	}
	resp, err = g.httpc.Get(g.httpBase + "/v1/deployments/dep-1/requests/" + rid + ":watch")
	if err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(resp.Body).ReadString('\n')
	resp.Body.Close()
	if !strings.Contains(line, "STATUS_SUCCEEDED") {
		t.Errorf("REST watch over TLS: %q", line)
	}

	// Plaintext is refused on both listeners.
	plain, err := grpc.NewClient(strings.TrimPrefix(g.conn.Target(), "passthrough:///"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if _, err := comfygatev1.NewGatewayServiceClient(plain).GetStatus(ctx, &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: rid}); err == nil {
		t.Error("plaintext gRPC call succeeded against a TLS listener")
	}
	if resp, err := http.Get("http://" + strings.TrimPrefix(g.httpBase, "https://") + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("plaintext HTTP succeeded against a TLS listener")
		}
	}
}
