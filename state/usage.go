package state

import (
	"context"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/comfygate/comfygate/runcomfy"
)

// UsageRetention is how long the hourly usage buckets are kept.
const UsageRetention = 90 * 24 * time.Hour

// A request's end is counted once, in the hour it finished, by the save
// that makes its record final-state for the first time (a later save of the
// same record, its outputs' copy say, adds nothing). Each hour of each tenant
// is one bucket of counters, so reading usage costs per hour and deployment,
// never per request:
//
//	<deployment>|n|<state>   requests that ended in the state
//	<deployment>|qc, |qs     requests with a known queue time; their sum in ms
//	<deployment>|qh|<bin>    the queue times' histogram (bins of a quarter
//	                         power of two: about 19% wide)
//	<deployment>|rc, |rs, |rh|<bin>  the same for run times
//
// A store adds UsageIncrements to the bucket of UsageHour in the same atomic
// step as the save.

// UsageIncrement is one counter a request's end adds to.
type UsageIncrement struct {
	Field string
	By    int64
}

// UsageHour is the bucket a final record is counted in: the Unix hour of
// its end.
func UsageHour(r *Record) int64 { return r.FinishedAt.Unix() / 3600 }

// UsageIncrements are the counters r's end adds to; nil when r has not
// ended.
func UsageIncrements(r *Record) []UsageIncrement {
	if !r.Terminal() {
		return nil
	}
	dep := r.DeploymentID
	inc := []UsageIncrement{{dep + "|n|" + listState(r.State).String(), 1}}
	add := func(kind string, d time.Duration) {
		ms := max(d.Milliseconds(), 0)
		inc = append(inc, UsageIncrement{dep + "|" + kind + "c", 1}, UsageIncrement{dep + "|" + kind + "s", ms},
			UsageIncrement{dep + "|" + kind + "h|" + strconv.Itoa(usageBin(ms)), 1})
	}
	switch {
	case r.CreatedAt.IsZero():
	case !r.StartedAt.IsZero():
		add("q", r.StartedAt.Sub(r.CreatedAt))
	case !r.FinishedAt.IsZero():
		add("q", r.FinishedAt.Sub(r.CreatedAt))
	}
	if !r.StartedAt.IsZero() && !r.FinishedAt.IsZero() {
		add("r", r.FinishedAt.Sub(r.StartedAt))
	}
	return inc
}

// usageBin is the histogram bin of a duration in ms: floor(4·log2(ms+1)).
func usageBin(ms int64) int { return int(4 * math.Log2(float64(ms)+1)) }

// binValue is the middle of a bin, in ms.
func binValue(b int) float64 { return math.Pow(2, (float64(b)+0.5)/4) - 1 }

// Dist is a distribution of durations: their count, sum and histogram.
type Dist struct {
	Count, SumMs int64
	Bins         map[int]int64
}

// Quantile is the duration below which a share q of the distribution lies,
// to the precision of its bins (about 10%); 0 for an empty one.
func (d Dist) Quantile(q float64) time.Duration {
	if d.Count == 0 {
		return 0
	}
	bins := make([]int, 0, len(d.Bins))
	for b := range d.Bins {
		bins = append(bins, b)
	}
	sort.Ints(bins)
	need := int64(math.Ceil(q * float64(d.Count)))
	var seen int64
	for _, b := range bins {
		if seen += d.Bins[b]; seen >= need {
			return time.Duration(binValue(b) * float64(time.Millisecond))
		}
	}
	return time.Duration(binValue(bins[len(bins)-1]) * float64(time.Millisecond))
}

// DeploymentUsage is what one deployment's requests that ended in a range
// add up to.
type DeploymentUsage struct {
	DeploymentID string
	Counts       map[runcomfy.State]int64
	Queue, Run   Dist
}

// Usage is a tenant's usage by deployment.
type Usage map[string]*DeploymentUsage

// Add folds one bucket's counters into u, those of deployment only when it
// is set.
func (u Usage) Add(fields map[string]int64, deployment string) {
	for field, v := range fields {
		parts := strings.Split(field, "|")
		if len(parts) < 2 || deployment != "" && parts[0] != deployment {
			continue
		}
		d := u[parts[0]]
		if d == nil {
			d = &DeploymentUsage{DeploymentID: parts[0], Counts: map[runcomfy.State]int64{}}
			u[parts[0]] = d
		}
		dist := &d.Queue
		if strings.HasPrefix(parts[1], "r") {
			dist = &d.Run
		}
		switch {
		case parts[1] == "n" && len(parts) == 3:
			for _, st := range ListStates {
				if st.String() == parts[2] {
					d.Counts[st] += v
				}
			}
		case parts[1] == "qc" || parts[1] == "rc":
			dist.Count += v
		case parts[1] == "qs" || parts[1] == "rs":
			dist.SumMs += v
		case (parts[1] == "qh" || parts[1] == "rh") && len(parts) == 3:
			if b, err := strconv.Atoi(parts[2]); err == nil {
				if dist.Bins == nil {
					dist.Bins = map[int]int64{}
				}
				dist.Bins[b] += v
			}
		}
	}
}

// UsageQuery selects a tenant's usage: the requests that ended in the hours
// from From (its hour included) to To (excluded).
type UsageQuery struct {
	Owner        string
	DeploymentID string
	From, To     time.Time
}

// Hours are the Unix hours q spans.
func (q UsageQuery) Hours() (first, end int64) {
	first = q.From.Unix() / 3600
	end = (q.To.Unix() + 3599) / 3600
	return first, end
}

// UsageReader is a store that keeps usage buckets.
type UsageReader interface {
	Usage(ctx context.Context, q UsageQuery) (Usage, error)
}

// CountsEnd reports whether saving next over cur counts a request's end:
// next is final-state and cur was not (or there was none).
func CountsEnd(cur, next *Record) bool {
	return next.Terminal() && (cur == nil || !cur.Terminal())
}
