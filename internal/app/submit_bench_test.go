package app_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/internal/bareproxy"
	"github.com/comfygate/comfygate/internal/gatewaytest"
	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
	"github.com/comfygate/comfygate/server"
)

// benchInput is a typical submit: a few node overrides, with a 64-bit seed.
const benchInput = `{"overrides":{"6":{"inputs":{"text":"a lighthouse on a cliff at dusk, volumetric light, film grain"}},` +
	`"3":{"inputs":{"seed":18446744073709551615,"steps":28,"cfg":6.5,"sampler_name":"dpmpp_2m","scheduler":"karras"}},` +
	`"5":{"inputs":{"width":1024,"height":1024,"batch_size":1}}}}`

// BenchmarkSubmit is a Submit through the gateway as the binary builds it
// (state in the process, over gRPC on loopback), beside two references in
// the same run: the same submit sent straight to the simulator over HTTP, and
// through the least a gRPC proxy does (bareproxy). The gateway's figure less
// the bare proxy's is what comfygate's own work costs per call, in time and
// in allocations (the callers', the proxy's and the simulator's together,
// since all run in this process).
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
		defer reportCPU(b)()
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

	b.Run("bareproxy", func(b *testing.B) {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		gs := grpc.NewServer(grpc.MaxConcurrentStreams(server.DefaultMaxConcurrentStreams))
		p := bareproxy.New(srv.URL, token)
		comfygatev1.RegisterGatewayServiceServer(gs, p)
		served := make(chan struct{})
		go func() {
			defer close(served)
			_ = gs.Serve(lis)
		}()
		defer func() {
			gs.Stop()
			<-served
			p.Close()
		}()
		submitOverGRPC(b, lis.Addr().String(), callers)
	})

	b.Run("gateway", func(b *testing.B) {
		g := gatewaytest.Start(b, gatewaytest.Setup{Upstream: srv.URL, Token: token,
			// One call upstream and one record per Submit, as in the proxy
			// scenario of bench/.
			NoCallbacks: true, Args: []string{"--poll-interval", "1h"}})
		submitOverGRPC(b, g.GRPCAddr, callers)
	})
}

// submitOverGRPC runs b's submits from callers per CPU, over one connection
// to the gRPC server at addr.
func submitOverGRPC(b *testing.B, addr string, callers int) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	client := comfygatev1.NewGatewayServiceClient(conn)
	ctx := context.Background()
	b.ReportAllocs()
	b.SetParallelism(callers)
	defer reportCPU(b)()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-bench", InputJson: benchInput}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// reportCPU starts counting the process's CPU time (user and system) and
// returns the func that reports it per op, as cpu-µs/op: on a machine whose
// cores the callers, the proxy and the simulator share, the time each op
// takes of them varies less from run to run than its wall time.
func reportCPU(b *testing.B) func() {
	start := processCPU(b)
	return func() {
		if b.N > 0 {
			b.ReportMetric(float64((processCPU(b)-start).Microseconds())/float64(b.N), "cpu-µs/op")
		}
	}
}

// processCPU is the CPU time the process has used so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
