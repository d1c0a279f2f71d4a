package server

import (
	"context"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// rpcMetrics are the gRPC server's standard series, under the names, labels
// and help texts of go-grpc-middleware's Prometheus provider
// (grpc_server_started_total, grpc_server_handled_total,
// grpc_server_msg_received_total, grpc_server_msg_sent_total,
// grpc_server_handling_seconds), every method's series made at start as the
// provider's InitializeMetrics does.
//
// They are kept here rather than by the provider because a watch stream
// sends every state change of its request: the provider looks each message's
// counter up by its labels (a hash of four strings) and reads the clock
// twice around each send, which came to a tenth of a replica's CPU per
// delivery when a thousand watchers follow one request. Here a call finds
// its method's series once, and a message costs one atomic add.
type rpcMetrics struct {
	started, received, sent *prometheus.CounterVec
	handled                 *prometheus.CounterVec
	handling                *prometheus.HistogramVec

	// methods holds each registered method's series, by full method name;
	// set once by initialize, before the server serves.
	methods atomic.Pointer[map[string]*methodSeries]
}

// methodSeries are one method's series, resolved once.
type methodSeries struct {
	started, received, sent prometheus.Counter
	handling                prometheus.Observer
	handled                 [codes.Unauthenticated + 1]prometheus.Counter
}

func newRPCMetrics(buckets []float64) *rpcMetrics {
	labels := []string{"grpc_type", "grpc_service", "grpc_method"}
	return &rpcMetrics{
		started: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_started_total", Help: "Total number of RPCs started on the server.",
		}, labels),
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_handled_total", Help: "Total number of RPCs completed on the server, regardless of success or failure.",
		}, append(labels[:3:3], "grpc_code")),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_msg_received_total", Help: "Total number of RPC stream messages received on the server.",
		}, labels),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_msg_sent_total", Help: "Total number of gRPC stream messages sent by the server.",
		}, labels),
		handling: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "grpc_server_handling_seconds",
			Help:    "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
			Buckets: buckets,
		}, labels),
	}
}

func (m *rpcMetrics) Describe(ch chan<- *prometheus.Desc) {
	m.started.Describe(ch)
	m.handled.Describe(ch)
	m.received.Describe(ch)
	m.sent.Describe(ch)
	m.handling.Describe(ch)
}

func (m *rpcMetrics) Collect(ch chan<- prometheus.Metric) {
	m.started.Collect(ch)
	m.handled.Collect(ch)
	m.received.Collect(ch)
	m.sent.Collect(ch)
	m.handling.Collect(ch)
}

// initialize makes the series of every method s serves, at zero, and keeps
// them for the interceptors. Call it once, after the services are registered
// and before the server serves.
func (m *rpcMetrics) initialize(s *grpc.Server) {
	methods := map[string]*methodSeries{}
	for service, info := range s.GetServiceInfo() {
		for _, mi := range info.Methods {
			methods["/"+service+"/"+mi.Name] = m.series(rpcType(mi.IsClientStream, mi.IsServerStream), service, mi.Name)
		}
	}
	m.methods.Store(&methods)
}

func (m *rpcMetrics) series(typ, service, method string) *methodSeries {
	ms := &methodSeries{
		started:  m.started.WithLabelValues(typ, service, method),
		received: m.received.WithLabelValues(typ, service, method),
		sent:     m.sent.WithLabelValues(typ, service, method),
		handling: m.handling.WithLabelValues(typ, service, method),
	}
	for c := range ms.handled {
		ms.handled[c] = m.handled.WithLabelValues(typ, service, method, codes.Code(c).String())
	}
	return ms
}

// of returns the series of fullMethod; a method registered after initialize
// (none is) would have its series made on each call.
func (m *rpcMetrics) of(fullMethod string, clientStream, serverStream bool) *methodSeries {
	if methods := m.methods.Load(); methods != nil {
		if ms := (*methods)[fullMethod]; ms != nil {
			return ms
		}
	}
	service, method, _ := strings.Cut(strings.TrimPrefix(fullMethod, "/"), "/")
	return m.series(rpcType(clientStream, serverStream), service, method)
}

func rpcType(clientStream, serverStream bool) string {
	switch {
	case !clientStream && !serverStream:
		return "unary"
	case clientStream && !serverStream:
		return "client_stream"
	case !clientStream:
		return "server_stream"
	}
	return "bidi_stream"
}

// done counts a call's end: its code (as the server would send it, a context
// error included) and its handling time.
func (ms *methodSeries) done(err error, start time.Time) {
	code := status.Code(err)
	if _, ok := status.FromError(err); !ok {
		code = status.FromContextError(err).Code()
	}
	if int(code) < len(ms.handled) {
		ms.handled[code].Inc()
	}
	ms.handling.Observe(time.Since(start).Seconds())
}

func (m *rpcMetrics) unaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		ms := m.of(info.FullMethod, false, false)
		ms.started.Inc()
		ms.received.Inc()
		resp, err := handler(ctx, req)
		if err == nil {
			ms.sent.Inc()
		}
		ms.done(err, start)
		return resp, err
	}
}

func (m *rpcMetrics) streamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		start := time.Now()
		ms := m.of(info.FullMethod, info.IsClientStream, info.IsServerStream)
		ms.started.Inc()
		err := handler(srv, &countedStream{ServerStream: ss, ms: ms})
		ms.done(err, start)
		return err
	}
}

// countedStream counts a stream's messages in its method's series.
type countedStream struct {
	grpc.ServerStream
	ms *methodSeries
}

func (s *countedStream) SendMsg(m any) error {
	err := s.ServerStream.SendMsg(m)
	if err == nil {
		s.ms.sent.Inc()
	}
	return err
}

func (s *countedStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if err == nil {
		s.ms.received.Inc()
	}
	return err
}
