// Command bench measures comfygate on the machine it runs on: callback ingest,
// end-to-end latency across replicas, idle watchers, fan-out and proxy
// overhead, and fan-out and ingest on a Redis Cluster, each beside a
// reference measured in the same run, and writes BENCHMARKS.md. It reports;
// it asserts nothing.
//
//	go run ./bench -out BENCHMARKS.md   # make bench
//	go run ./bench -smoke               # make bench-smoke: every scenario, tiny
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// scenario is one measured figure and its reference.
type scenario struct {
	name string
	run  func(ctx context.Context, e *env) (result, error)
}

func scenarios() []scenario {
	return []scenario{
		{"callback ingest", ingest},
		{"end-to-end latency", latency},
		{"idle watchers", idleWatchers},
		{"fan-out", fanOut},
		{"proxy overhead", proxyOverhead},
		{"webhook delivery", webhookDelivery},
		{"output copies", outputCopies},
		{"redis cluster", redisClusterScenario},
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	smoke := fs.Bool("smoke", false, "run every scenario at a tiny size, in seconds (checks the harness, measures nothing)")
	out := fs.String("out", "", "write the report to this `file` (BENCHMARKS.md)")
	only := fs.String("only", "", "run only the scenarios whose name contains this `text`")
	profile := fs.Bool("profile", false, "record CPU profiles of the gateway replicas in the run directory (kept)")
	keep := fs.Bool("keep", false, "keep the run directory (process logs, profiles)")
	idle := fs.Int("idle-streams", 100_000, "streams the idle-watchers scenario holds (the target is stated for 100,000)")
	centrifugo := fs.Bool("centrifugo", true, "fan-out: measure Centrifugo "+centrifugoVersion+" beside comfygate in the same run (built once with go install, which takes minutes; never with -smoke)")
	notes := fs.String("notes", "bench/NOTES.md", "hand-kept `file` appended to the report")
	role := fs.String("role", "", "internal: run as a reference server (noop-http, bare-ingest, bare-grpc or bare-proxy)")
	addr := fs.String("addr", "", "internal: the reference server's listen address")
	upstream := fs.String("upstream", "", "internal: the simulator's URL, for the bare-proxy reference, or Redis's address, for bare-ingest")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *role != "" {
		return serveRole(ctx, *role, *addr, *upstream)
	}

	started := time.Now()
	dir, err := os.MkdirTemp("", "comfygate-bench-")
	if err != nil {
		return err
	}
	if *keep || *profile {
		fmt.Printf("run directory: %s\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	e := &env{dir: dir, smoke: *smoke, profile: *profile, idleStreams: *idle, centrifugo: *centrifugo}
	fmt.Println("building the gateway and the simulator")
	if e.gatewayBin, e.simBin, err = buildBinaries(ctx, dir); err != nil {
		return err
	}
	if e.selfBin, err = os.Executable(); err != nil {
		return err
	}
	if e.redis, err = startRedis(ctx, dir); err != nil {
		return err
	}
	defer e.redis.stop()

	speedStart, tripsStart := cpuSpeed(), loopbackTrips()
	var results []result
	for _, s := range scenarios() {
		if *only != "" && !strings.Contains(s.name, *only) {
			continue
		}
		fmt.Printf("== %s\n", s.name)
		t0 := time.Now()
		res, err := s.run(ctx, e)
		if err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		res.Name = s.name
		for i := range res.Rows {
			if *smoke {
				// A tiny run says the harness works, nothing about the targets.
				res.Rows[i].Met = ""
			}
		}
		for _, r := range res.Rows {
			fmt.Printf("   %-44s %-16s ref %-16s %-8s %s %s\n", r.Figure, r.Value, r.Reference, r.Ratio, r.Target, r.Met)
		}
		fmt.Printf("   (%s)\n", time.Since(t0).Round(time.Second))
		results = append(results, res)
	}
	if *out == "" {
		return nil
	}
	handKept, err := os.ReadFile(*notes)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	f, err := os.Create(*out)
	if err != nil {
		return err
	}
	command := "make bench"
	if *smoke {
		command = "make bench-smoke"
	}
	m := readMachine(e.redis.version)
	m.SpeedStart, m.SpeedEnd = speedStart, cpuSpeed()
	m.TripsStart, m.TripsEnd = tripsStart, loopbackTrips()
	writeReport(f, m, command, started, time.Since(started), results, string(handKept))
	if err := f.Close(); err != nil {
		return err
	}
	fmt.Printf("wrote %s\n", *out)
	return nil
}
