// Command chaos is comfygate's soak under fire: three gateway processes, Redis
// (or a local Redis Cluster), the RunComfy simulator, an S3 server and the
// tenants' webhook receivers, under a steady load of submits and watchers,
// while faults are injected at random times from a seeded schedule. At the
// end it counts every promise (terminal states recorded, watchers ended with
// their final state, nothing out of order or twice, nothing billed twice, no
// webhook or stored output missing) and fails when one was broken.
//
//	go run ./chaos -duration 10m -out RELIABILITY.md   # make chaos
//	go run ./chaos -smoke                               # make chaos-smoke
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		os.Exit(1)
	}
}

// options are a run's settings; a soak is the same run with another seed.
type options struct {
	duration time.Duration // of the load; the settling comes after it
	seed     int64
	rate     float64 // submits per second
	modes    []string
	out      string // RELIABILITY.md, when set
	smoke    bool
	keep     bool // keep the run's directory (logs) after a run that passed
	// dropFinalEvery builds the gateway broken on purpose (the chaosfault
	// tag) so that every nth watch stream ends without its final state.
	dropFinalEvery int
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	var o options
	fs := flag.NewFlagSet("chaos", flag.ContinueOnError)
	fs.DurationVar(&o.duration, "duration", 10*time.Minute, "how long the load and the faults run, split evenly between the modes")
	fs.Int64Var(&o.seed, "seed", 0, "seed of the fault schedule and of the load's choices; 0 picks one from the clock (printed, so a run can be repeated)")
	fs.Float64Var(&o.rate, "rate", 50, "submits per second")
	mode := fs.String("mode", "redis,cluster", "comma-separated state backends to soak in turn: redis (one Redis server behind a proxy that can stall) and cluster (a local Redis Cluster of 3 masters with a replica each)")
	fs.StringVar(&o.out, "out", "", "write the report to this file (RELIABILITY.md)")
	fs.BoolVar(&o.smoke, "smoke", false, "the CI run: first show that a gateway built to drop every third final state is caught, then soak one Redis for -duration (60s unless given) at -rate (20/s unless given)")
	fs.BoolVar(&o.keep, "keep", false, "keep the run's directory of logs even when every promise held")
	fs.IntVar(&o.dropFinalEvery, "drop-final-every", 0, "build the gateway with the chaosfault tag and have it end every nth watch stream without its final state (the soak must then fail)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if o.smoke && !flagGiven(fs, "duration") {
		o.duration = 60 * time.Second
	}
	if o.smoke && !flagGiven(fs, "mode") {
		*mode = "redis"
	}
	if o.smoke && !flagGiven(fs, "rate") {
		o.rate = 20 // CI shares its two cores with the whole system
	}
	for m := range strings.SplitSeq(*mode, ",") {
		switch m = strings.TrimSpace(m); m {
		case modeRedis, modeCluster:
			o.modes = append(o.modes, m)
		default:
			return fmt.Errorf("-mode: unknown backend %q (redis or cluster)", m)
		}
	}
	if o.seed == 0 {
		o.seed = time.Now().UnixNano() % 1_000_000
	}
	if o.duration < 10*time.Second || o.rate <= 0 {
		return errors.New("-duration must be at least 10s and -rate positive")
	}

	bins, err := buildAll(ctx)
	if err != nil {
		return err
	}
	defer bins.remove()

	if o.smoke {
		if err := canary(ctx, bins, o, stdout); err != nil {
			return err
		}
	}
	var results []*result
	per := o.duration / time.Duration(len(o.modes))
	for i, m := range o.modes {
		ro := o
		ro.duration = per
		ro.seed = o.seed + int64(i)
		res, err := soak(ctx, bins, ro, m, stdout)
		if err != nil {
			return fmt.Errorf("%s soak: %w", m, err)
		}
		results = append(results, res)
	}
	if o.out != "" {
		if err := writeReport(o.out, o, results); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s\n", o.out)
	}
	var broken []string
	for _, r := range results {
		for _, b := range r.broken() {
			broken = append(broken, r.mode+": "+b)
		}
	}
	if len(broken) > 0 {
		return fmt.Errorf("promises broken (seed %d):\n  %s", o.seed, strings.Join(broken, "\n  "))
	}
	fmt.Fprintf(stdout, "every promise held (seed %d)\n", o.seed)
	return nil
}

// canary runs a short soak of a gateway built to drop every third final
// state, with no faults, and fails unless the soak catches it: a harness
// that cannot see a broken gateway proves nothing when it passes.
func canary(ctx context.Context, bins *binaries, o options, stdout io.Writer) error {
	co := o
	co.duration = 15 * time.Second
	co.rate = min(o.rate, 20)
	co.dropFinalEvery = 3
	co.keep = false
	fmt.Fprintln(stdout, "== canary: a gateway that drops every third final state must be caught")
	res, err := soak(ctx, bins, co, modeRedis, stdout)
	if err != nil {
		return fmt.Errorf("canary: %w", err)
	}
	broken := res.broken()
	if res.streamsWithoutFinal == 0 || res.watchersEnded == res.watchers {
		return fmt.Errorf("canary: the soak did not catch a gateway that drops every third final state (%d streams ended without it, %d of %d watchers ended with it)",
			res.streamsWithoutFinal, res.watchersEnded, res.watchers)
	}
	fmt.Fprintf(stdout, "canary caught: %s\n", strings.Join(broken, "; "))
	return nil
}

func flagGiven(fs *flag.FlagSet, name string) bool {
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == name })
	return given
}
