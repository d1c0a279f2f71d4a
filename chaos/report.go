package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strings"
	"time"
)

// table renders a result as markdown: every count, with what it must be.
func (r *result) table() string {
	var b strings.Builder
	row := func(what string, n any, must string) { fmt.Fprintf(&b, "| %s | %v | %s |\n", what, n, must) }
	b.WriteString("| counted | value | must be |\n|---|---|---|\n")
	row("requests submitted (answered with a request id)", r.submitted, "")
	row("submit attempts (retried with the same idempotency key on any error)", r.submitAttempts, "")
	row("submits abandoned after three minutes of retries", r.gaveUp, "0")
	row("longest wait from a submit's first attempt to its answer", r.slowestAnswer.Round(time.Millisecond), "")
	row("jobs created on RunComfy", r.jobs, "")
	row("requests that reached a terminal state on RunComfy", r.upstreamTerminal, "")
	row("of those, terminal state recorded by the gateway (GetStatus)", r.recorded, fmt.Sprint(r.upstreamTerminal))
	row("recorded with another final status than RunComfy's", r.recordedWrong, "0")
	row("watchers (1 to 5 per request; "+r.viaSummary()+")", r.watchers, "")
	row("watchers that ended with the final state", r.watchersEnded, fmt.Sprint(r.watchers))
	row("watchers still without it when the run ended", r.watchersUnfinished, "0")
	row("watch streams that ended as complete without the final state", r.streamsWithoutFinal, "0")
	row("resumes with the last (epoch, seq) (hang-ups and broken streams)", r.watcherResumes, "")
	row("epoch changes seen by watchers (records made again)", r.epochChanges, "")
	row("events sent twice to one watcher", r.dups, "0")
	row("events sent out of order to one watcher", r.backward, "0")
	row("events of an earlier state than one the watcher had been sent (across epochs and resumes)", r.regressed, "0")
	row("idempotency keys billed more than once", r.billedTwice, "0")
	row("jobs billed for submits never answered", r.billedUnanswered, "0")
	row("submits refused for good: the first attempt reached RunComfy and its replica was killed before the answer (`FAILED_PRECONDITION`, a job may exist)", r.refusedUnanswered, "")
	row("terminal webhooks missing", r.hooksMissing, "0")
	row("terminal webhooks with another status", r.hooksWrong, "0")
	row("webhooks with a bad signature or body", r.hooksBad, "0")
	row("webhooks of an earlier state than one the endpoint had received (across epochs)", r.hooksRegressed, "0")
	row(fmt.Sprintf("webhook deliveries received (%d refused with 503 on purpose, retried)", r.hooksRefuse), r.hooksTotal, "")
	row(fmt.Sprintf("outputs of succeeded requests checked in S3 (%d)", r.outputsChecked), r.outputsChecked-r.outputsMissing-r.outputsWrong, fmt.Sprint(r.outputsChecked))
	row("stored outputs missing", r.outputsMissing, "0")
	row("stored outputs with wrong bytes", r.outputsWrong, "0")
	p := func(q float64) string {
		if len(r.latencies) == 0 {
			return "-"
		}
		return r.latencies[min(len(r.latencies)-1, int(q*float64(len(r.latencies))))].Round(time.Millisecond).String()
	}
	row(fmt.Sprintf("RunComfy's end to the final state at a live watcher, p50 / p99 / max (%d watchers)", len(r.latencies)),
		p(0.5)+" / "+p(0.99)+" / "+p(1), "")
	row("time to settle after the load and the faults stopped", r.settled.Round(time.Second), "")
	if r.lost != (struct{ records, hooks, outputs, billing int }{}) {
		row("went with Redis's data when it restarted empty, beyond what the replicas remembered: finished records / terminal webhooks / stored outputs / idempotency keys (then billed twice)",
			fmt.Sprintf("%d / %d / %d / %d", r.lost.records, r.lost.hooks, r.lost.outputs, r.lost.billing), "documented")
	}
	if len(r.submitErrs) > 0 {
		var errs []string
		for code, n := range r.submitErrs {
			errs = append(errs, fmt.Sprintf("%s %d", code, n))
		}
		sort.Strings(errs)
		row("submit attempts refused, by code (then retried)", strings.Join(errs, ", "), "")
	}
	b.WriteString("\n| replica | runs | peak RSS | peak heap | peak goroutines | goroutines before / after the load (and idle pooled HTTP connections after) | heap before / after (after GC) | goroutines back to baseline |\n|---|---|---|---|---|---|---|---|\n")
	for _, s := range r.replicas {
		fmt.Fprintf(&b, "| %s | %d | %s | %s | %d | %d / %d (+ %d) | %s / %s | %s |\n", s.name, s.runs, mib(s.peakRSS), mib(s.peakHeap), s.peakGoroutines,
			s.baseGoroutines, s.endGoroutines, s.idleConns, mib(s.baseHeap), mib(s.endHeap), yes(s.returned))
	}
	b.WriteString("\n| fault | times | total time |\n|---|---|---|\n")
	type tally struct {
		n     int
		total time.Duration
		fails int
	}
	by := map[string]*tally{}
	var kinds []string
	for _, f := range r.faults {
		t := by[f.kind]
		if t == nil {
			t = &tally{}
			by[f.kind] = t
			kinds = append(kinds, f.kind)
		}
		t.n++
		t.total += f.lasts
		if f.err != nil {
			t.fails++
		}
	}
	sort.Strings(kinds)
	for _, k := range kinds {
		t := by[k]
		note := ""
		if t.fails > 0 {
			note = fmt.Sprintf(" (%d did not heal cleanly: see the log)", t.fails)
		}
		fmt.Fprintf(&b, "| %s | %d%s | %v |\n", k, by[k].n, note, t.total.Round(100*time.Millisecond))
	}
	return b.String()
}

func (r *result) viaSummary() string {
	return fmt.Sprintf("gRPC %d, NDJSON %d, SSE %d", r.byVia[viaGRPC], r.byVia[viaNDJSON], r.byVia[viaSSE])
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func yes(b bool) string {
	if b {
		return "yes"
	}
	return "**no**"
}

// machine describes where the run ran.
func machine() string {
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	redis := "redis-server (version unknown)"
	if out, err := exec.Command("redis-server", "--version").Output(); err == nil {
		redis = strings.TrimSpace(string(out))
	}
	kernel := ""
	if out, err := exec.Command("uname", "-sr").Output(); err == nil {
		kernel = strings.TrimSpace(string(out))
	}
	return fmt.Sprintf("%d × %s, %s, %s, %s", runtime.NumCPU(), cpu, kernel, runtime.Version(), redis)
}

// writeReport writes RELIABILITY.md.
func writeReport(path string, o options, results []*result) error {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# Reliability under fire\n\n")
	fmt.Fprintf(&b, "Written by `make chaos` (`go run ./chaos -duration %v -seed %d -out RELIABILITY.md`) on %s.\n", o.duration, o.seed, time.Now().UTC().Format("2006-01-02"))
	fmt.Fprintf(&b, "Machine: %s.\n\n", machine())
	b.WriteString(`Three gateway processes share the state backend, behind a load balancer for
RunComfy's callbacks; the RunComfy simulator, an S3 server (versitygw) and the
tenants' webhook receivers run beside them. A steady load submits over three
tenants and four deployments (one job in ten fails on purpose) and follows
every request with one to five watchers over gRPC, NDJSON and Server-Sent
Events on random replicas; a third of the watchers start late and a third
hang up on purpose and resume with their last (epoch, seq). A broken stream
is resumed on a random replica. Faults come at random times from a seeded
schedule (the same seed gives the same schedule); when the load stops, every
fault is healed and the run waits for the system to settle before counting.
A run with any must-be-zero counter above zero fails, and so does one in
which a replica's goroutines do not come back to their count before the load.
` + "`make chaos-smoke`" + ` (in CI) first runs a gateway built with the ` + "`chaosfault`" + ` tag that ends
every third watch stream without its final state, and fails unless that is
caught; then it soaks one Redis for a minute.

`)
	for _, r := range results {
		fmt.Fprintf(&b, "## %s: %v at %.0f submits/s, seed %d\n\n", modeTitle(r.mode), r.duration, r.rate, r.seed)
		if broken := r.broken(); len(broken) > 0 {
			fmt.Fprintf(&b, "**This run failed:** %s.\n\n", strings.Join(broken, "; "))
		} else {
			b.WriteString("Every promise held.\n\n")
		}
		b.WriteString(r.table())
		b.WriteString("\n")
	}
	return os.WriteFile(path, b.Bytes(), 0o644)
}

func modeTitle(mode string) string {
	if mode == modeCluster {
		return "Redis Cluster (3 masters, 1 replica each)"
	}
	return "One Redis (AOF, appendfsync always) behind a proxy that can stall"
}
