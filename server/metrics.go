package server

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the series the service itself moves; the gRPC server's standard
// ones (grpc_server_handled_total and handling-time histograms) come with them.
type Metrics struct {
	registry  *prometheus.Registry
	grpc      *rpcMetrics
	delivered prometheus.Counter
	watchers  prometheus.Gauge
	delay     prometheus.Histogram
	refusals  *prometheus.CounterVec
}

// NewMetrics registers the server's series on reg.
func NewMetrics(reg *prometheus.Registry) *Metrics {
	m := &Metrics{
		registry: reg,
		grpc:     newRPCMetrics([]float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}),
		delivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "comfygate_events_delivered_total", Help: "State changes sent to watchers (each watcher counts).",
		}),
		watchers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "comfygate_watchers_open", Help: "Open WatchRequest streams on this replica.",
		}),
		delay: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "comfygate_event_delivery_delay_seconds",
			Help:    "From a state change being recorded (a callback's arrival, a poll's answer) to its delivery to a watcher.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
		}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "comfygate_limit_refusals_total", Help: "Calls refused by a per-tenant limit (submit, read, watches), by the bytes in flight (inflight_bytes) or by a deployment's concurrency cap (concurrency_cap).",
		}, []string{"limit"}),
	}
	for _, l := range []string{limitSubmit, limitRead, limitWatches, limitInflight, limitConcurrency} {
		m.refusals.WithLabelValues(l)
	}
	reg.MustRegister(m.grpc, m.delivered, m.watchers, m.delay, m.refusals)
	return m
}

// delivered notes one state change sent to one watcher.
func (m *Metrics) sent(recorded time.Time) {
	if m == nil {
		return
	}
	m.delivered.Inc()
	if !recorded.IsZero() {
		m.delay.Observe(time.Since(recorded).Seconds())
	}
}

func (m *Metrics) watching(delta float64) {
	if m != nil {
		m.watchers.Add(delta)
	}
}

// refused counts one call refused by limit.
func (m *Metrics) refused(limit string) {
	if m != nil {
		m.refusals.WithLabelValues(limit).Inc()
	}
}
