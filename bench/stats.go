package main

import (
	"fmt"
	"slices"
	"time"
)

// samples holds every latency of a run; runs are short enough that keeping
// them all (8 bytes each) is cheaper and more exact than a histogram.
type samples []time.Duration

// quantile returns the q-quantile (0..1) by the nearest-rank method.
func (s samples) quantile(q float64) time.Duration {
	if len(s) == 0 {
		return 0
	}
	i := int(q*float64(len(s))+0.5) - 1
	return s[max(0, min(i, len(s)-1))]
}

func (s samples) sorted() samples {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}

func merge(parts []samples) samples {
	var all samples
	for _, p := range parts {
		all = append(all, p...)
	}
	slices.Sort(all)
	return all
}

// fmtDur prints a latency in µs below 10ms, else in ms.
func fmtDur(d time.Duration) string {
	if d < 10*time.Millisecond {
		return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
	}
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}

// fmtMicros prints a CPU time per operation, in µs.
func fmtMicros(us float64) string { return fmt.Sprintf("%.2f µs", us) }

// fmtRate prints a count per second with thousands separators.
func fmtRate(r float64) string { return fmtInt(int64(r+0.5)) + "/s" }

func fmtInt(n int64) string {
	s := fmt.Sprint(n)
	if n < 0 {
		return "-" + fmtInt(-n)
	}
	var out []byte
	for i, c := range []byte(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, c)
	}
	return string(out)
}

func fmtBytes(b float64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.2f GiB", b/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", b/(1<<20))
	default:
		return fmt.Sprintf("%.1f KiB", b/(1<<10))
	}
}

func ratio(a, b float64) string {
	if b == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

func pct(a, b float64) string {
	if b == 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f%%", 100*a/b)
}

func met(ok bool) string {
	if ok {
		return "met"
	}
	return "**missed**"
}
