package hooks

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// The outcomes of a delivery (deliveries_total) and the results of an attempt
// (attempts_total). The sets are fixed and small so that a receiver cannot
// grow the metrics' cardinality: every status is folded into its class, 410
// alone kept apart because it ends deliveries.
const (
	outcomeDelivered = "delivered"
	outcomeFailed    = "failed"
	outcomeGone      = "gone"

	result2xx       = "2xx"
	result3xx       = "3xx"
	result4xx       = "4xx"
	result5xx       = "5xx"
	result410       = "410"
	resultTimeout   = "timeout"
	resultError     = "error"
	resultForbidden = "forbidden"
	// resultUnsigned: nothing was sent, the tenant has no signing secret.
	resultUnsigned = "unsigned"
)

// metrics are the deliverer's Prometheus metrics. They exist (and count)
// whether or not they are registered, so the code that updates them never
// checks.
type metrics struct {
	deliveries *prometheus.CounterVec
	attempts   *prometheus.CounterVec
	depth      *prometheus.GaugeVec
	latency    prometheus.Histogram
}

// newMetrics makes the metrics and registers them with reg unless it is nil.
// On a registration error nothing stays registered, so a caller may fix the
// problem and try again with the same registry.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "comfygate_webhook_deliveries_total",
			Help: "Webhook deliveries (one event to one endpoint) that ended, by outcome: delivered, failed (retry horizon passed) or gone (the endpoint answered 410).",
		}, []string{"outcome"}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "comfygate_webhook_attempts_total",
			Help: "Webhook delivery attempts, by result: the status class (410 apart), timeout, error, forbidden (address refused by the guard) or unsigned (the tenant has no secret, nothing sent).",
		}, []string{"result"}),
		depth: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "comfygate_webhook_queue_depth",
			Help: "Webhook work waiting: jobs queued and not done, and requests waiting for a retry.",
		}, []string{"queue"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "comfygate_webhook_delivery_latency_seconds",
			Help: "Time from a change of a request to its webhook being accepted by the endpoint, retries included.",
			// From a prompt delivery to one that needed a day of retries.
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600},
		}),
	}
	// Every series exists from the start, so a rate over a counter that
	// has not moved yet is 0 rather than absent.
	for _, o := range []string{outcomeDelivered, outcomeFailed, outcomeGone} {
		m.deliveries.WithLabelValues(o)
	}
	for _, r := range []string{result2xx, result3xx, result4xx, result5xx, result410, resultTimeout, resultError, resultForbidden, resultUnsigned} {
		m.attempts.WithLabelValues(r)
	}
	m.depth.WithLabelValues("jobs")
	m.depth.WithLabelValues("retries")
	if reg == nil {
		return m, nil
	}
	cs := []prometheus.Collector{m.deliveries, m.attempts, m.depth, m.latency}
	for i, c := range cs {
		if err := reg.Register(c); err != nil {
			for _, done := range cs[:i] {
				reg.Unregister(done)
			}
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, fmt.Errorf("hooks: webhook metrics are already registered (one Deliverer per registry): %w", err)
			}
			return nil, fmt.Errorf("hooks: registering webhook metrics: %w", err)
		}
	}
	return m, nil
}
