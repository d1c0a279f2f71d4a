package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"time"
)

// result is what one scenario reports: its rows (figure beside reference and
// target), the CPU each process spent per operation, and notes on the setup.
type result struct {
	Name  string
	Setup string
	Rows  []row
	CPU   []cpuTable
	Notes []string
}

// row is one figure. Ratio and Met are empty where they mean nothing.
type row struct {
	Figure, Value, Reference, Ratio, Target, Met string
}

// cpuTable is the CPU accounting of one measured window.
type cpuTable struct {
	Window string
	Op     string // singular
	Ops    int
	Rows   []cpuRow
}

type cpuRow struct {
	Process string
	CPU     time.Duration
	PerOp   float64 // µs
}

type machine struct {
	Cores  int
	CPU    string
	Go     string
	Redis  string
	Kernel string
}

func readMachine(redisVersion string) machine {
	m := machine{Cores: runtime.NumCPU(), Go: runtime.Version(), Redis: redisVersion}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

// writeReport writes BENCHMARKS.md: the machine, the command, one section per
// scenario, then the hand-kept notes (what was changed and why) verbatim.
func writeReport(w io.Writer, m machine, command string, started time.Time, took time.Duration, results []result, notes string) {
	fmt.Fprintf(w, "# Benchmarks\n\n")
	fmt.Fprintf(w, "Written by `%s` (the harness in `bench/`); do not edit by hand, except `bench/NOTES.md`, which is copied at the end.\n\n", command)
	fmt.Fprintf(w, "Every figure stands beside a reference measured in the same run on the same machine: the machine is shared and noisy, so absolute times drift between runs while the ratios hold. ")
	fmt.Fprintf(w, "The load generator, Redis, the simulator and the gateway replicas all share the machine's cores, so each scenario also gives the CPU time each process spent per operation (from `/proc/<pid>/stat`).\n\n")
	fmt.Fprintf(w, "| machine | |\n|---|---|\n")
	fmt.Fprintf(w, "| cores | %d (%s) |\n| Go | %s |\n| Redis | %s |\n| kernel | %s |\n| run | %s, %s |\n\n",
		m.Cores, m.CPU, m.Go, m.Redis, m.Kernel, started.UTC().Format("2006-01-02 15:04 UTC"), took.Round(time.Second))
	fmt.Fprintf(w, "## Summary\n\n| scenario | figure | value | reference | ratio | target | |\n|---|---|---|---|---|---|---|\n")
	for _, r := range results {
		for _, x := range r.Rows {
			if x.Target == "" {
				continue
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n", r.Name, x.Figure, x.Value, x.Reference, x.Ratio, x.Target, x.Met)
		}
	}
	fmt.Fprintln(w)
	for _, r := range results {
		fmt.Fprintf(w, "## %s\n\n%s\n\n", r.Name, r.Setup)
		fmt.Fprintf(w, "| figure | value | reference | ratio | target | |\n|---|---|---|---|---|---|\n")
		for _, x := range r.Rows {
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", x.Figure, x.Value, x.Reference, dash(x.Ratio), dash(x.Target), x.Met)
		}
		fmt.Fprintln(w)
		for _, c := range r.CPU {
			fmt.Fprintf(w, "CPU, %s (%s %s):\n\n| process | CPU time | µs per %s |\n|---|---|---|\n", c.Window, fmtInt(int64(c.Ops)), plural(c.Op), c.Op)
			for _, p := range c.Rows {
				fmt.Fprintf(w, "| %s | %s | %.1f |\n", p.Process, p.CPU.Round(time.Millisecond), p.PerOp)
			}
			fmt.Fprintln(w)
		}
		for _, n := range r.Notes {
			fmt.Fprintf(w, "- %s\n", n)
		}
		if len(r.Notes) > 0 {
			fmt.Fprintln(w)
		}
	}
	if notes != "" {
		fmt.Fprintf(w, "%s\n", strings.TrimSpace(notes))
	}
}

func dash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}

func plural(noun string) string {
	if strings.HasSuffix(noun, "y") {
		return strings.TrimSuffix(noun, "y") + "ies"
	}
	return noun + "s"
}
