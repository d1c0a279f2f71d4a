package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// ingest measures callbacks/s through the whole callback path of one replica
// (token check, parse, Apply on Redis, publish) against the same load on a
// no-op net/http handler, with redis-benchmark's PUBLISH rate as Redis's
// ceiling.
func ingest(ctx context.Context, e *env) (result, error) {
	const conns = 64
	dur, warm := 10*time.Second, 2*time.Second
	if e.smoke {
		dur, warm = 500*time.Millisecond, 100*time.Millisecond
	}
	const rounds = 3
	res := result{Setup: fmt.Sprintf("One replica with Redis. %d keep-alive HTTP/1.1 connections, each sending its next callback as soon as the last is answered, for %s in all after a %s warm-up, "+
		"in %d windows taking turns with the reference's. "+
		"Each connection walks its own requests through in_queue → in_progress → succeeded, so every callback is applied (a new seq, a Redis write and a PUBLISH); "+
		"every body is %d bytes (the documented fields, indented). The reference is the same load generator against a no-op net/http handler in its own process. "+
		"A third party takes its turn too: a bare receiver on the same Redis, in its own process, that decodes the body and writes and publishes it in one round trip with nothing else (no token, order check, merge, schedule, index, usage or log), "+
		"the least a receiver that keeps its state in Redis does.", conns, dur, warm, rounds, bodySize)}

	c, stop, err := e.startCluster(ctx, "ingest", 1)
	defer stop()
	if err != nil {
		return res, err
	}
	g, path := c.replicas[0], c.path
	load := func(label string) request {
		return func(w, i int, buf []byte) (string, []byte) {
			rid := fmt.Sprintf("in-%s-%d-%d", label, w, i/phases)
			return path, callbackBody(buf, benchDep, rid, i%phases, 3)
		}
	}

	noop, noopAddr, err := e.startRole(ctx, "noop-http")
	if err != nil {
		return res, err
	}
	defer noop.stop()
	bare, bareAddr, err := e.startRole(ctx, "bare-ingest", "-upstream", e.redis.addr)
	if err != nil {
		return res, err
	}
	defer bare.stop()
	for _, addr := range []string{g.httpAddr, noopAddr, bareAddr} {
		if _, err := closedLoop(ctx, addr, conns, warm, 0, load("warm")); err != nil {
			return res, err
		}
	}
	before, err := scrape(ctx, g, `comfygate_callbacks_total{outcome="applied"}`)
	if err != nil {
		return res, err
	}
	// The gateway and the reference take turns, rounds windows each, so that
	// a slow spell of the shared machine falls on both alike.
	var gw, ref, bareRes loadResult
	var gwCPU, refCPU, bareCPU []cpuRow
	waitProfile := e.profileCPU(ctx, g, "ingest", int(dur.Seconds()))
	for r := range rounds {
		m := meterOf(g.named(), e.redis.named())
		m.begin()
		part, err := closedLoop(ctx, g.httpAddr, conns, dur/rounds, 0, load(fmt.Sprintf("run%d", r)))
		if err != nil {
			return res, err
		}
		gw = gw.add(part)
		gwCPU = addCPU(gwCPU, m.end(part.ops), gw.ops)

		m = meterOf(noop.named())
		m.begin()
		if part, err = closedLoop(ctx, noopAddr, conns, dur/rounds, 0, load(fmt.Sprintf("ref%d", r))); err != nil {
			return res, err
		}
		ref = ref.add(part)
		refCPU = addCPU(refCPU, m.end(part.ops), ref.ops)

		m = meterOf(bare.named(), e.redis.named())
		m.begin()
		if part, err = closedLoop(ctx, bareAddr, conns, dur/rounds, 0, load(fmt.Sprintf("bare%d", r))); err != nil {
			return res, err
		}
		bareRes = bareRes.add(part)
		bareCPU = addCPU(bareCPU, m.end(part.ops), bareRes.ops)
	}
	waitProfile()
	after, err := scrape(ctx, g, `comfygate_callbacks_total{outcome="applied"}`)
	if err != nil {
		return res, err
	}
	noop.stop()
	bare.stop()

	publish, err := redisPublishRate(ctx, e, conns)
	if err != nil {
		return res, err
	}

	rate, refRate, bareRate := gw.rate(), ref.rate(), bareRes.rate()
	p50, p99 := gw.lat.quantile(0.50), gw.lat.quantile(0.99)
	res.Rows = []row{
		{"callbacks/s", fmtRate(rate), fmtRate(refRate) + " (no-op handler)", pct(rate, refRate), "≥ 15,000/s", met(rate >= 15000)},
		{"share of the no-op handler", pct(rate, refRate), fmt.Sprintf("the bare Redis receiver's: %s", pct(bareRate, refRate)), "", "≥ 40%", met(rate >= 0.40*refRate)},
		{"a bare Redis receiver (decode, then HSET and PUBLISH in one round trip): callbacks/s", fmtRate(bareRate), fmtRate(refRate) + " (no-op handler)", pct(bareRate, refRate), "", ""},
		{"a bare Redis receiver: latency p50 / p99", fmtDur(bareRes.lat.quantile(0.50)) + " / " + fmtDur(bareRes.lat.quantile(0.99)),
			fmtDur(ref.lat.quantile(0.50)) + " / " + fmtDur(ref.lat.quantile(0.99)), ratio(float64(bareRes.lat.quantile(0.99)), float64(ref.lat.quantile(0.99))), "", ""},
		{"callbacks/s against Redis's PUBLISH ceiling", fmtRate(rate), fmtRate(publish) + " (redis-benchmark PUBLISH, 1 KiB)", pct(rate, publish), "", ""},
		{"latency p50", fmtDur(p50), fmtDur(ref.lat.quantile(0.50)), ratio(float64(p50), float64(ref.lat.quantile(0.50))), "", ""},
		{"latency p99", fmtDur(p99), fmtDur(ref.lat.quantile(0.99)), ratio(float64(p99), float64(ref.lat.quantile(0.99))), "≤ 10 ms, ≤ 2× the no-op's", met(p99 <= 10*time.Millisecond && p99 <= 2*ref.lat.quantile(0.99))},
	}
	res.CPU = []cpuTable{
		{Window: "gateway run", Op: "callback", Ops: gw.ops, Rows: gwCPU},
		{Window: "no-op reference", Op: "request", Ops: ref.ops, Rows: refCPU},
		{Window: "bare Redis receiver", Op: "callback", Ops: bareRes.ops, Rows: bareCPU},
	}
	applied := int(after - before)
	res.Notes = append(res.Notes, fmt.Sprintf("%s callbacks answered, %s non-2xx; the replica counted %s applied in the window (every callback is meant to apply).",
		fmtInt(int64(gw.ops)), fmtInt(int64(gw.failures)), fmtInt(int64(applied))))
	if gw.failures > 0 || applied != gw.ops {
		res.Notes = append(res.Notes, "**Not every callback was applied: the figure above is not the full path.**")
	}
	return res, nil
}

// redisPublishRate runs redis-benchmark's PUBLISH of 1 KiB messages on the
// run's Redis, with as many clients as the load has connections.
func redisPublishRate(ctx context.Context, e *env, clients int) (float64, error) {
	n := 200000
	if e.smoke {
		n = 5000
	}
	host, port, _ := net.SplitHostPort(e.redis.addr)
	cmd := exec.CommandContext(ctx, "redis-benchmark", "-h", host, "-p", port, "-c", strconv.Itoa(clients),
		"-n", strconv.Itoa(n), "--csv", "PUBLISH", "bench:publish", strings.Repeat("x", bodySize))
	out, err := cmd.Output()
	if err != nil {
		return 0, fmt.Errorf("redis-benchmark (package redis-tools): %w", err)
	}
	// "test","rps",...; then "PUBLISH bench:publish ...","123456.79",...
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	fields := strings.Split(lines[len(lines)-1], ",")
	if len(fields) < 2 {
		return 0, fmt.Errorf("redis-benchmark printed %q", out)
	}
	return strconv.ParseFloat(strings.Trim(fields[1], `"`), 64)
}

// scrape reads one series from the replica's /metrics.
func scrape(ctx context.Context, g *gateway, series string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+g.httpAddr+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("%s has no series %s", g.name, series)
}
