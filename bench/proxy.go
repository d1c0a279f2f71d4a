package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// submitBody is a typical submit: a few node overrides, with a 64-bit seed.
const submitBody = `{"overrides":{"6":{"inputs":{"text":"a lighthouse on a cliff at dusk, volumetric light, film grain"}},` +
	`"3":{"inputs":{"seed":18446744073709551615,"steps":28,"cfg":6.5,"sampler_name":"dpmpp_2m","scheduler":"karras"}},` +
	`"5":{"inputs":{"width":1024,"height":1024,"batch_size":1}}}}`

// proxyOverhead compares Submit through the gateway (gRPC, generated client)
// with the same submit sent straight to the simulator (HTTP), at a steady rate
// and at saturation.
func proxyOverhead(ctx context.Context, e *env) (result, error) {
	const rate, workers = 1000, 32
	dur := 8 * time.Second
	if e.smoke {
		dur = 300 * time.Millisecond
	}
	res := result{Setup: fmt.Sprintf("The standalone simulator, called directly over HTTP/1.1 (net/http client, keep-alive) and through one replica (gRPC, the generated Go client on one connection). "+
		"The replica runs as a single replica does by default (state in the process) and, in a second pair of rows, with Redis; it asks for no callbacks and polls nothing in the window, so each Submit is one call upstream and one record. "+
		"Beside them, in its own process, a bare gRPC proxy (the same generated service, whose Submit only posts the inputs to the simulator and returns the request id it gets: no key, record, idempotency, limit, log or metric) gives the least any gRPC gateway of this shape adds here. "+
		"Steady rate: %d submits/s for %s, sent on schedule by %d senders, latency from send to answer. Saturation: %d callers in a closed loop for %s.",
		rate, dur, workers, workers, dur)}

	sim, simURL, err := e.startSim(ctx, "sim-proxy")
	if err != nil {
		return res, err
	}
	defer sim.stop()

	direct := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 2 * workers, MaxConnsPerHost: 2 * workers}}
	defer direct.CloseIdleConnections()
	directCall := func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, simURL+"/prod/v1/deployments/"+benchDep+"/inference", bytes.NewReader([]byte(submitBody)))
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+benchToken)
		req.Header.Set("Content-Type", "application/json")
		resp, err := direct.Do(req)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("simulator answered %s", resp.Status)
		}
		return nil
	}
	// Warm the simulator and the client's connections.
	if _, err := saturate(ctx, workers, dur/4, directCall); err != nil {
		return res, err
	}
	mDirect := meterOf(sim.named())
	mDirect.begin()
	directSteady, err := steady(ctx, rate, workers, dur, directCall)
	if err != nil {
		return res, err
	}
	directSteadyCPU := mDirect.end(directSteady.ops)
	mDirect.begin()
	directSat, err := saturate(ctx, workers, dur, directCall)
	if err != nil {
		return res, err
	}
	directSatCPU := mDirect.end(directSat.ops)

	// The floor: a gRPC round trip to a server that answers Submit at once
	// (the same generated client, one connection). Any gRPC proxy adds at
	// least this to the direct call.
	bare, bareAddr, err := e.startRole(ctx, "bare-grpc")
	if err != nil {
		return res, err
	}
	floor, err := func() (loadResult, error) {
		defer bare.stop()
		call, done, err := submitter(bareAddr)
		if err != nil {
			return loadResult{}, err
		}
		defer done()
		if _, err := saturate(ctx, workers, dur/4, call); err != nil {
			return loadResult{}, err
		}
		return steady(ctx, rate, workers, dur, call)
	}()
	if err != nil {
		return res, err
	}
	res.Rows = append(res.Rows, row{fmt.Sprintf("a bare gRPC round trip at %d/s (p50 / p99)", rate),
		fmtDur(floor.lat.quantile(0.5)) + " / " + fmtDur(floor.lat.quantile(0.99)),
		"the least any gRPC proxy adds", "", "", ""})

	// The least a gRPC proxy in front of the simulator does (bareproxy.Server):
	// what it adds, and the share of direct it keeps at saturation, are the
	// bounds of what any gateway of this shape reaches on this machine.
	proxy, proxyAddr, err := e.startRole(ctx, "bare-proxy", "-upstream", simURL)
	if err != nil {
		return res, err
	}
	var bareSteady, bareSat loadResult
	var bareSteadyCPU, bareSatCPU []cpuRow
	err = func() error {
		defer proxy.stop()
		call, done, err := submitter(proxyAddr)
		if err != nil {
			return err
		}
		defer done()
		if _, err := saturate(ctx, workers, dur/4, call); err != nil {
			return err
		}
		m := meterOf(proxy.named(), sim.named())
		m.begin()
		if bareSteady, err = steady(ctx, rate, workers, dur, call); err != nil {
			return err
		}
		bareSteadyCPU = m.end(bareSteady.ops)
		m.begin()
		if bareSat, err = saturate(ctx, workers, dur, call); err != nil {
			return err
		}
		bareSatCPU = m.end(bareSat.ops)
		return nil
	}()
	if err != nil {
		return res, err
	}
	bareAdded := func(q float64) time.Duration { return bareSteady.lat.quantile(q) - directSteady.lat.quantile(q) }
	res.Rows = append(res.Rows,
		row{fmt.Sprintf("a bare gRPC proxy (forwards the submit, nothing else): added latency p50 at %d/s", rate), fmtDur(bareAdded(0.5)),
			fmt.Sprintf("bare gRPC round trip %s", fmtDur(floor.lat.quantile(0.5))), ratio(float64(bareAdded(0.5)), float64(floor.lat.quantile(0.5))), "", ""},
		row{fmt.Sprintf("a bare gRPC proxy: added latency p99 at %d/s", rate), fmtDur(bareAdded(0.99)),
			fmt.Sprintf("bare gRPC round trip %s", fmtDur(floor.lat.quantile(0.99))), ratio(float64(bareAdded(0.99)), float64(floor.lat.quantile(0.99))), "", ""},
		row{"a bare gRPC proxy: submits/s at saturation", fmtRate(bareSat.rate()), fmtRate(directSat.rate()) + " direct",
			pct(bareSat.rate(), directSat.rate()), "", ""},
	)

	for _, backend := range []struct {
		name, proc, prefix string
	}{{"in-process state", "replica-memory", ""}, {"Redis", "replica-redis", "proxy"}} {
		g, err := e.startGateway(ctx, backend.proc, simURL, gwOpts{redisPrefix: backend.prefix})
		if err != nil {
			return res, err
		}
		cc, client, err := g.dial()
		if err != nil {
			g.stop()
			return res, err
		}
		gwCall := func(ctx context.Context) error {
			_, err := client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: benchDep, InputJson: submitBody})
			return err
		}
		if _, err := saturate(ctx, workers, dur/4, gwCall); err != nil {
			cc.Close()
			g.stop()
			return res, err
		}
		m := meterOf(g.named(), sim.named(), e.redis.named())
		waitProfile := e.profileCPU(ctx, g, "proxy", int(dur.Seconds()))
		m.begin()
		gwSteady, err := steady(ctx, rate, workers, dur, gwCall)
		cpu := m.end(gwSteady.ops)
		waitProfile()
		var (
			gwSat  loadResult
			satCPU []cpuRow
		)
		if err == nil {
			waitProfile := e.profileCPU(ctx, g, "proxy-saturation", int(dur.Seconds()))
			m.begin()
			gwSat, err = saturate(ctx, workers, dur, gwCall)
			satCPU = m.end(gwSat.ops)
			waitProfile()
		}
		cc.Close()
		g.stop()
		if err != nil {
			return res, err
		}
		added := func(q float64) time.Duration { return gwSteady.lat.quantile(q) - directSteady.lat.quantile(q) }
		bareP50, bareP99 := floor.lat.quantile(0.5), floor.lat.quantile(0.99)
		res.Rows = append(res.Rows,
			row{fmt.Sprintf("%s: added latency p50 at %d/s", backend.name, rate), fmtDur(added(0.5)),
				fmt.Sprintf("%s direct, %s through the gateway; bare gRPC round trip %s; the bare proxy adds %s", fmtDur(directSteady.lat.quantile(0.5)), fmtDur(gwSteady.lat.quantile(0.5)), fmtDur(bareP50), fmtDur(bareAdded(0.5))),
				ratio(float64(added(0.5)), float64(bareP50)), "≤ 1× a bare gRPC round trip's p50", met(added(0.5) <= bareP50)},
			row{fmt.Sprintf("%s: added latency p99 at %d/s", backend.name, rate), fmtDur(added(0.99)),
				fmt.Sprintf("%s direct, %s through the gateway; bare gRPC round trip %s; the bare proxy adds %s", fmtDur(directSteady.lat.quantile(0.99)), fmtDur(gwSteady.lat.quantile(0.99)), fmtDur(bareP99), fmtDur(bareAdded(0.99))),
				ratio(float64(added(0.99)), float64(bareP99)), "≤ 2× a bare gRPC round trip's p99", met(added(0.99) <= 2*bareP99)},
			row{fmt.Sprintf("%s: submits/s at saturation", backend.name), fmtRate(gwSat.rate()), fmt.Sprintf("%s direct; the bare proxy %s (%s)", fmtRate(directSat.rate()), fmtRate(bareSat.rate()), pct(bareSat.rate(), directSat.rate())),
				pct(gwSat.rate(), directSat.rate()), "≥ 50% of direct", met(gwSat.rate() >= 0.5*directSat.rate())},
		)
		res.CPU = append(res.CPU,
			cpuTable{Window: fmt.Sprintf("%s, %d submits/s through the gateway", backend.name, rate), Op: "submit", Ops: gwSteady.ops, Rows: cpu},
			cpuTable{Window: fmt.Sprintf("%s, saturation through the gateway", backend.name), Op: "submit", Ops: gwSat.ops, Rows: satCPU})
	}
	res.CPU = append(res.CPU,
		cpuTable{Window: fmt.Sprintf("%d submits/s through the bare proxy", rate), Op: "submit", Ops: bareSteady.ops, Rows: bareSteadyCPU},
		cpuTable{Window: "saturation through the bare proxy", Op: "submit", Ops: bareSat.ops, Rows: bareSatCPU},
		cpuTable{Window: fmt.Sprintf("%d submits/s straight to the simulator", rate), Op: "submit", Ops: directSteady.ops, Rows: directSteadyCPU},
		cpuTable{Window: "saturation straight to the simulator", Op: "submit", Ops: directSat.ops, Rows: directSatCPU})
	return res, nil
}

// submitter is a Submit of submitBody to the gRPC server at addr, on one
// connection, which done closes.
func submitter(addr string) (call func(context.Context) error, done func(), err error) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, err
	}
	client := comfygatev1.NewGatewayServiceClient(cc)
	return func(ctx context.Context) error {
		_, err := client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: benchDep, InputJson: submitBody})
		return err
	}, func() { cc.Close() }, nil
}

// steady sends rate calls per second for d, on the schedule paced keeps
// (call i due at start + i/rate), spread over workers senders; the latency
// runs from the actual send.
func steady(ctx context.Context, rate, workers int, d time.Duration, call func(context.Context) error) (loadResult, error) {
	perWorker := int(d.Seconds()*float64(rate)) / workers
	parts := make([]samples, workers)
	start := time.Now()
	_, err := paced(ctx, workers, perWorker, time.Duration(workers)*time.Second/time.Duration(rate), func(w int) (func(int) error, func(), error) {
		return func(int) error {
			t0 := time.Now()
			if err := call(ctx); err != nil {
				return err
			}
			parts[w] = append(parts[w], time.Since(t0))
			return nil
		}, func() {}, nil
	})
	res := loadResult{took: time.Since(start), lat: merge(parts)}
	res.ops = len(res.lat)
	return res, err
}

// saturate keeps workers callers busy for d.
func saturate(ctx context.Context, workers int, d time.Duration, call func(context.Context) error) (loadResult, error) {
	deadline := time.Now().Add(d)
	var ops atomic.Int64
	errs := make([]error, workers)
	start := time.Now()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for time.Now().Before(deadline) && ctx.Err() == nil {
				if err := call(ctx); err != nil {
					errs[w] = err
					return
				}
				ops.Add(1)
			}
		})
	}
	wg.Wait()
	res := loadResult{ops: int(ops.Load()), took: time.Since(start)}
	for _, err := range errs {
		if err != nil {
			return res, err
		}
	}
	return res, ctx.Err()
}
