package app_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/internal/gatewaytest"
	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
)

// benchInput is a typical submit: a few node overrides, with a 64-bit seed.
const benchInput = `{"overrides":{"6":{"inputs":{"text":"a lighthouse on a cliff at dusk, volumetric light, film grain"}},` +
	`"3":{"inputs":{"seed":18446744073709551615,"steps":28,"cfg":6.5,"sampler_name":"dpmpp_2m","scheduler":"karras"}},` +
	`"5":{"inputs":{"width":1024,"height":1024,"batch_size":1}}}}`

// BenchmarkSubmit is a Submit through the gateway as the binary builds it
// (state in the process, over gRPC on loopback), beside the same submit sent
// straight to the simulator over HTTP in the same run: the difference is what
// the gateway adds per call, in time and in allocations (the gateway's and
// the simulator's together, since all run in this process).
func BenchmarkSubmit(b *testing.B) {
	// Enough callers per CPU that the gateway, not the callers' turns, is the limit.
	const token, callers = "rct-bench-token", 16
	sim := runcomfysim.New(runcomfysim.Options{Token: token, Manual: true, SubmitHistory: -1})
	srv := httptest.NewServer(sim.Handler())
	b.Cleanup(func() {
		srv.Close()
		sim.Close()
	})

	b.Run("direct", func(b *testing.B) {
		client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
		defer client.CloseIdleConnections()
		b.ReportAllocs()
		b.SetParallelism(callers)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				req, err := http.NewRequest(http.MethodPost, srv.URL+"/prod/v1/deployments/dep-bench/inference", bytes.NewReader([]byte(benchInput)))
				if err != nil {
					b.Error(err)
					return
				}
				req.Header.Set("Authorization", "Bearer "+token)
				req.Header.Set("Content-Type", "application/json")
				resp, err := client.Do(req)
				if err != nil {
					b.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Errorf("simulator answered %s", resp.Status)
					return
				}
			}
		})
	})

	b.Run("gateway", func(b *testing.B) {
		g := gatewaytest.Start(b, gatewaytest.Setup{Upstream: srv.URL, Token: token,
			// One call upstream and one record per Submit, as in the proxy
			// scenario of bench/.
			NoCallbacks: true, Args: []string{"--poll-interval", "1h"}})
		conn, err := grpc.NewClient(g.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		client := comfygatev1.NewGatewayServiceClient(conn)
		ctx := context.Background()
		b.ReportAllocs()
		b.SetParallelism(callers)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-bench", InputJson: benchInput}); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}
