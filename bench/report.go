package main

import (
	"crypto/sha256"
	"fmt"
	"io"
	"net"
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
	// Speed is a fixed CPU-bound task's rate at the start and at the end of
	// the run: the same machine runs at quite different speeds from one hour
	// to the next, and this says which kind of hour a report comes from.
	SpeedStart, SpeedEnd float64 // MB/s of SHA-256 on one core
	// TripsStart, TripsEnd: 1-byte round trips per second over one loopback
	// TCP connection, which system calls and scheduling dominate, as they do
	// every figure here.
	TripsStart, TripsEnd float64
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
	fmt.Fprintf(w, "| cores | %d (%s) |\n| Go | %s |\n| Redis | %s |\n| kernel | %s |\n| run | %s, %s |\n",
		m.Cores, m.CPU, m.Go, m.Redis, m.Kernel, started.UTC().Format("2006-01-02 15:04 UTC"), took.Round(time.Second))
	fmt.Fprintf(w, "| machine speed, start → end of the run: SHA-256 on one core | %.0f → %.0f MB/s |\n", m.SpeedStart, m.SpeedEnd)
	fmt.Fprintf(w, "| machine speed, start → end of the run: 1-byte round trips on one loopback TCP connection | %s → %s |\n\n", fmtRate(m.TripsStart), fmtRate(m.TripsEnd))
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

// cpuSpeed hashes 64 MiB with SHA-256 on one core and returns MB/s: a fixed
// task whose rate tracks how fast the machine runs at the moment.
func cpuSpeed() float64 {
	buf := make([]byte, 1<<20)
	h := sha256.New()
	start := time.Now()
	for range 64 {
		h.Write(buf)
	}
	h.Sum(nil)
	return 64 * (1 << 20) / 1e6 / time.Since(start).Seconds()
}

// loopbackTrips is how many 1-byte round trips one loopback TCP connection
// makes in half a second, echoed by a goroutine of this process.
func loopbackTrips() float64 {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, c)
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		return 0
	}
	defer c.Close()
	b := []byte{1}
	n := 0
	start := time.Now()
	for time.Since(start) < 500*time.Millisecond {
		if _, err := c.Write(b); err != nil {
			return 0
		}
		if _, err := io.ReadFull(c, b); err != nil {
			return 0
		}
		n++
	}
	return float64(n) / time.Since(start).Seconds()
}
