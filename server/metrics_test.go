package server_test

import (
	"io"
	"net/http"
	"regexp"
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// scrape reads one sample of /metrics; -1 when absent.
func scrape(t *testing.T, g *gateway, series string) float64 {
	t.Helper()
	resp, err := http.Get(g.httpBase + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindSubmatch(body)
	if m == nil {
		return -1
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestMetricsMoveDuringAFlow: the gRPC server metrics and the watch series are
// served on /metrics and move as a request is submitted and watched.
func TestMetricsMoveDuringAFlow(t *testing.T) {
	g := startGateway(t, withCallbacks, func(o *gatewayOptions) { o.metrics = prometheus.NewRegistry() })
	ctx := ctxT(t)
	submits := `grpc_server_handled_total{grpc_code="OK",grpc_method="Submit",grpc_service="comfygate.v1.GatewayService",grpc_type="unary"}`
	if got := scrape(t, g, submits); got != 0 {
		t.Fatalf("%s before any call = %v, want 0", submits, got)
	}
	sub, err := g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`})
	if err != nil {
		t.Fatal(err)
	}
	got, err := watchAll(ctx, t, g, sub.GetRequest().GetRequestId(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if v := scrape(t, g, submits); v != 1 {
		t.Errorf("%s = %v, want 1", submits, v)
	}
	if v := scrape(t, g, "comfygate_events_delivered_total"); v != float64(len(got)) {
		t.Errorf("events delivered = %v, want %d", v, len(got))
	}
	if v := scrape(t, g, "comfygate_watchers_open"); v != 0 {
		t.Errorf("open watchers after the stream ended = %v, want 0", v)
	}
	// A call refused with a code counts under that code.
	if _, err := g.client.GetStatus(ctx, &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: "no-such-request"}); status.Code(err) != codes.NotFound {
		t.Fatalf("GetStatus of an unknown request: %v, want NotFound", err)
	}
	const svc = `grpc_service="comfygate.v1.GatewayService"`
	for _, tt := range []struct {
		series string
		want   float64
	}{
		{`grpc_server_handling_seconds_count{grpc_method="WatchRequest",` + svc + `,grpc_type="server_stream"}`, 1},
		{`grpc_server_started_total{grpc_method="WatchRequest",` + svc + `,grpc_type="server_stream"}`, 1},
		{`grpc_server_handled_total{grpc_code="OK",grpc_method="WatchRequest",` + svc + `,grpc_type="server_stream"}`, 1},
		{`grpc_server_msg_received_total{grpc_method="WatchRequest",` + svc + `,grpc_type="server_stream"}`, 1},
		// Every event sent on the stream is one message.
		{`grpc_server_msg_sent_total{grpc_method="WatchRequest",` + svc + `,grpc_type="server_stream"}`, float64(len(got))},
		{`grpc_server_started_total{grpc_method="Submit",` + svc + `,grpc_type="unary"}`, 1},
		{`grpc_server_msg_received_total{grpc_method="Submit",` + svc + `,grpc_type="unary"}`, 1},
		{`grpc_server_msg_sent_total{grpc_method="Submit",` + svc + `,grpc_type="unary"}`, 1},
		{`grpc_server_handled_total{grpc_code="NotFound",grpc_method="GetStatus",` + svc + `,grpc_type="unary"}`, 1},
		// A unary call that failed sent no message.
		{`grpc_server_msg_sent_total{grpc_method="GetStatus",` + svc + `,grpc_type="unary"}`, 0},
		// Every method's series exist before it is called.
		{`grpc_server_handled_total{grpc_code="Unavailable",grpc_method="Cancel",` + svc + `,grpc_type="unary"}`, 0},
		{`grpc_server_started_total{grpc_method="Upload",` + svc + `,grpc_type="client_stream"}`, 0},
	} {
		if v := scrape(t, g, tt.series); v != tt.want {
			t.Errorf("%s = %v, want %v", tt.series, v, tt.want)
		}
	}
}
