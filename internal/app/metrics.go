package app

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/comfygate/comfygate/internal/version"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/webhook"
)

// newRegistry holds every series /metrics serves, with the Go and process
// collectors and comfygate_build_info, which says which build each replica
// runs.
func newRegistry(build version.Info) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "comfygate_build_info",
			Help:        "Always 1; its labels are the running build's version, commit and Go version.",
			ConstLabels: prometheus.Labels{"version": build.Version, "commit": build.Commit, "goversion": build.Go},
		}, func() float64 { return 1 }))
	return reg
}

// upstreamLatency is the RunComfy call histogram, fed by runcomfy.Config.Observe.
func upstreamLatency(reg *prometheus.Registry) func(op string, code int, d time.Duration) {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "comfygate_runcomfy_request_duration_seconds",
		Help:    "RunComfy API calls (each attempt), by endpoint and HTTP status (0: no answer).",
		Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	}, []string{"endpoint", "code"})
	reg.MustRegister(h)
	return func(op string, code int, d time.Duration) {
		h.WithLabelValues(op, strconv.Itoa(code)).Observe(d.Seconds())
	}
}

// registerStateMetrics exposes counters the parts keep themselves, read at
// scrape time.
func registerStateMetrics(reg *prometheus.Registry, tracker *state.Tracker, reconciler *state.Reconciler, hook *webhook.Handler, reconnects func() int64) {
	counter := func(name, help string, labels prometheus.Labels, f func() float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels}, f)
	}
	reg.MustRegister(
		counter("comfygate_events_published_total", "State changes recorded and published (each applied update).", nil,
			func() float64 { return float64(tracker.Stats().Applied) }),
		counter("comfygate_polls_total", "Status polls the reconciler made to RunComfy.", nil,
			func() float64 { return float64(reconciler.Polls()) }),
		counter("comfygate_records_rebuilt_total", "Records found lost (Redis emptied, evicted) while watched or scheduled, and made again from RunComfy.", nil,
			func() float64 { return float64(reconciler.Rebuilt()) }),
		counter("comfygate_requests_expired_total", "Requests this replica cancelled on RunComfy at their deadline (max_queue_duration or max_run_duration).", nil,
			func() float64 { return float64(reconciler.Expired()) }),
		counter("comfygate_requests_lost_upstream_total", "Requests RunComfy no longer knew, ended FAILED with the error type upstream_lost.", nil,
			func() float64 { return float64(reconciler.LostUpstream()) }),
	)
	if reconnects != nil {
		reg.MustRegister(counter("comfygate_pubsub_reconnects_total", "Times the Redis pub/sub connection was re-established.", nil,
			func() float64 { return float64(reconnects()) }))
	}
	if hook == nil {
		return
	}
	for _, outcome := range []string{"applied", "duplicate", "stale", "unknown"} {
		reg.MustRegister(counter("comfygate_callbacks_total", "Callbacks accepted, by what they did.", prometheus.Labels{"outcome": outcome},
			func() float64 { return float64(hook.Stats().Outcomes[outcome]) }))
	}
	for _, reason := range webhook.Reasons() {
		reg.MustRegister(counter("comfygate_callbacks_rejected_total", "Callbacks refused, by reason.", prometheus.Labels{"reason": reason},
			func() float64 { return float64(hook.Stats().Rejected[reason]) }))
	}
}
