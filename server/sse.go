package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	reqstatus "github.com/comfygate/comfygate/internal/status"
	"github.com/comfygate/comfygate/state"
)

// eventsRoute is WatchRequest as Server-Sent Events (text/event-stream), the
// form a browser's EventSource reads. Its wildcards are written as OpenAPI
// writes them, so the route is also its OpenAPI path (openapi.go).
const eventsRoute = "GET /v1/deployments/{deployment_id}/requests/{request_id}/events"

// sseKeepAlive is how long an events stream stays silent before a comment goes
// out: proxies and load balancers commonly close a response idle for 30-60 s.
const sseKeepAlive = 15 * time.Second

// Event types on the stream. EventSource hands "state" and "end" only to
// listeners registered for them; "error" also reaches onerror, where a server
// error is told from a broken connection by its data.
const (
	eventState = "state"
	eventEnd   = "end"
	eventError = "error"
)

// marshalJSON is the REST gateway's JSON (gateway.go): proto field names, unset
// fields included, so an event's data is what GET .../requests/{id} answers in
// "request", and an error is what a REST call answers.
func marshalJSON(m proto.Message) ([]byte, error) {
	return protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}.Marshal(m)
}

// eventsHandler serves eventsRoute by calling WatchRequest through the REST
// gateway's client connection, so authentication, tenant isolation, the
// interceptors (access log, metrics, traces) and the drain treat it exactly as
// a gRPC or REST watch; the handler only changes the framing.
//
// Framing: one "state" event per state change, with its position and status
// as id (eventID) and the RequestState JSON as data; after the terminal state
// an "end" event, on which clients close the EventSource (it would otherwise reconnect). Errors before
// the first event are HTTP statuses as REST answers them (a reconnect after the
// end is 204, which stops EventSource); errors after it are an "error" event
// carrying the google.rpc.Status JSON, and the stream closes.
type eventsHandler struct {
	client    comfygatev1.GatewayServiceClient
	log       *slog.Logger
	keepAlive time.Duration
}

func newEventsHandler(client comfygatev1.GatewayServiceClient, log *slog.Logger) *eventsHandler {
	return &eventsHandler{client: client, log: log, keepAlive: sseKeepAlive}
}

// received is one result of the watch stream's Recv.
type received struct {
	msg *comfygatev1.WatchRequestResponse
	err error
}

func (h *eventsHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	dep, rid := r.PathValue("deployment_id"), r.PathValue("request_id")
	after, seen, err := resumePosition(r)
	if err == nil {
		err = carriable(dep, rid)
	}
	if err != nil {
		refuse(w, status.Convert(toStatus(ctx, h.log, comfygatev1.GatewayService_WatchRequest_FullMethodName, err)))
		return
	}
	ctx = metadata.NewOutgoingContext(ctx, callMetadata(r.Header))
	stream, err := h.client.WatchRequest(ctx, &comfygatev1.WatchRequestRequest{DeploymentId: dep, RequestId: rid, AfterSeq: after.Seq, AfterEpoch: after.Epoch, AfterStatus: seen})
	if err != nil {
		refuse(w, status.Convert(err))
		return
	}

	// Recv blocks; a goroutine feeds it to the loop below, which also keeps the
	// connection alive. It ends when the stream ends or ctx does, and the
	// handler waits for it.
	results := make(chan received)
	recvDone := make(chan struct{})
	go func() {
		defer close(recvDone)
		for {
			msg, err := stream.Recv()
			select {
			case results <- received{msg: msg, err: err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	defer func() {
		cancel()
		<-recvDone
	}()

	out := &sseWriter{w: w, rc: http.NewResponseController(w)}
	last := after
	idle := time.NewTimer(h.keepAlive)
	defer idle.Stop()
	for {
		var err error
		select {
		case <-ctx.Done():
			return
		case <-idle.C:
			// Also what opens a stream that has nothing to send yet (a resume at
			// the latest seq): headers cannot wait for the next change forever.
			err = out.comment("keepalive")
		case res := <-results:
			switch {
			case res.err == nil:
				st := res.msg.GetRequest()
				data, merr := marshalJSON(st)
				if merr != nil {
					h.log.ErrorContext(ctx, "encoding a state event", "request_id", rid, "error", merr)
					_ = out.event("", eventError, statusJSON(status.New(codes.Internal, "internal error")))
					return
				}
				last = state.Position{Epoch: st.GetEpoch(), Seq: st.GetSeq()}
				err = out.event(eventID(last, st.GetStatus()), eventState, data)
			case errors.Is(res.err, io.EOF) && !out.open:
				// Nothing after the resume point and the request has ended: the
				// client reconnected after the end. 204 stops EventSource.
				w.WriteHeader(http.StatusNoContent)
				return
			case errors.Is(res.err, io.EOF):
				_ = out.event("", eventEnd, endData(last))
				return
			case ctx.Err() != nil:
				return // the client left
			default:
				st := status.Convert(res.err)
				// A drain is the one error EventSource should recover from by
				// itself, which it does only from an open stream: every other
				// refusal ends it (as 4xx/5xx do).
				if !out.open && !draining(st) {
					refuse(w, st)
					return
				}
				_ = out.event("", eventError, statusJSON(st))
				return
			}
		}
		if err != nil {
			return // the client is gone; cancel ends the watch
		}
		idle.Reset(h.keepAlive)
	}
}

// eventID is the SSE id of the state at p, whose status is st:
// "<epoch>-<seq>-<status>" (the status as a word, "running"), so that a
// resume is never sent an earlier state (WatchRequestRequest.after_status);
// or "<seq>" for a state recorded before epochs existed (epoch 0).
func eventID(p state.Position, st comfygatev1.Status) string {
	if p.Epoch == 0 {
		return strconv.FormatInt(p.Seq, 10)
	}
	return strconv.FormatInt(p.Epoch, 10) + "-" + strconv.FormatInt(p.Seq, 10) + "-" + reqstatus.OfProto(st).Word
}

// endData is the data of the "end" event: the position of the last state,
// as the resume fields name it (no epoch for a state from before epochs).
func endData(p state.Position) []byte {
	if p.Epoch == 0 {
		return fmt.Appendf(nil, `{"last_seq":"%d"}`, p.Seq)
	}
	return fmt.Appendf(nil, `{"last_seq":"%d","last_epoch":"%d"}`, p.Seq, p.Epoch)
}

// resumePosition is the state the client has already seen: the Last-Event-ID
// header, which EventSource sends when it reconnects, else the last_event_id
// query parameter (a page resuming from an id it stored), else none. The
// header wins, since it is the later of the two on a reconnect of a URL that
// carried both. An id is "<epoch>-<seq>-<status>" as eventID writes it,
// "<epoch>-<seq>" (ids sent before statuses were part of them), or a bare
// "<seq>" (ids sent before epochs existed), which compares seqs alone; the
// status, when there is one, is that of the state the client saw.
func resumePosition(r *http.Request) (state.Position, comfygatev1.Status, error) {
	field, v := "Last-Event-ID", strings.TrimSpace(r.Header.Get("Last-Event-ID"))
	if v == "" {
		field, v = "last_event_id", r.URL.Query().Get("last_event_id")
	}
	if v == "" {
		return state.Position{}, comfygatev1.Status_STATUS_UNSPECIFIED, nil
	}
	bad := &fieldError{field: field, reason: `must be the id of an event: "<epoch>-<seq>-<status>", "<epoch>-<seq>" or "<seq>", whole numbers, 0 or more, and a status word`}
	epoch, seq, found := strings.Cut(v, "-")
	if !found {
		epoch, seq = "0", v
	}
	seq, word, withStatus := strings.Cut(seq, "-")
	e, err := strconv.ParseInt(epoch, 10, 64)
	if err != nil || e < 0 || epoch == "" || epoch[0] == '+' {
		return state.Position{}, 0, bad
	}
	n, err := strconv.ParseInt(seq, 10, 64)
	if err != nil || n < 0 || seq == "" || seq[0] == '+' {
		return state.Position{}, 0, bad
	}
	seen := comfygatev1.Status_STATUS_UNSPECIFIED
	if withStatus {
		i, ok := reqstatus.OfWord(word)
		if !ok {
			return state.Position{}, 0, bad
		}
		seen = i.Proto
	}
	return state.Position{Epoch: e, Seq: n}, seen, nil
}

// carriable refuses ids that gRPC cannot carry at all (strings must be UTF-8),
// which would otherwise fail in the client as INTERNAL; everything else about
// ids is the service's to check, as for the other transports.
func carriable(dep, rid string) error {
	for _, f := range [...]struct{ field, id string }{{"deployment_id", dep}, {"request_id", rid}} {
		if !utf8.ValidString(f.id) {
			return &fieldError{field: f.field, reason: "may contain only letters, digits, '-' and '_'"}
		}
	}
	return nil
}

// callMetadata is the call's metadata: the Authorization header, as the REST
// gateway forwards it. A value gRPC may not carry in metadata (anything but
// printable ASCII) cannot be a key either; it is dropped, and the call is then
// refused as unauthenticated rather than failing in the client.
func callMetadata(h http.Header) metadata.MD {
	md := metadata.MD{}
	for _, v := range h.Values("Authorization") {
		if printableASCII(v) {
			md.Append("authorization", v)
		}
	}
	return md
}

func printableASCII(s string) bool {
	for i := range len(s) {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// draining tells whether st ends a watch because its replica drains.
func draining(st *status.Status) bool {
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetReason() == reasonDraining && info.GetDomain() == gatewayDomain {
			return true
		}
	}
	return false
}

// statusJSON is st as REST error bodies carry it: {"code", "message", "details"}.
func statusJSON(st *status.Status) []byte {
	b, err := marshalJSON(st.Proto())
	if err != nil {
		return fmt.Appendf(nil, `{"code":%d,"message":"internal error"}`, codes.Internal)
	}
	return b
}

// refuse answers a call refused before its first event with the HTTP status
// and body REST gives the same gRPC status.
func refuse(w http.ResponseWriter, st *status.Status) {
	w.Header().Set("Content-Type", "application/json")
	if st.Code() == codes.Unauthenticated {
		w.Header().Set("WWW-Authenticate", `Bearer realm="comfygate"`)
	}
	setRetryAfter(w.Header(), st)
	w.WriteHeader(restHTTPStatus(st))
	_, _ = w.Write(statusJSON(st))
}

// sseWriter writes the text/event-stream framing, flushing each event so it
// leaves at once. The headers go out with the first event or comment.
type sseWriter struct {
	w    http.ResponseWriter
	rc   *http.ResponseController
	open bool
}

func (s *sseWriter) start() {
	h := s.w.Header()
	h.Set("Content-Type", "text/event-stream")
	// Every event is news: no cache may answer a reconnect, and nginx must not
	// buffer the stream (X-Accel-Buffering).
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	s.w.WriteHeader(http.StatusOK)
	s.open = true
}

// event writes one event. data is single-line JSON; a line break in it would
// still be framed correctly, as several data lines.
func (s *sseWriter) event(id, typ string, data []byte) error {
	var b []byte
	if id != "" {
		b = append(b, "id: "+id+"\n"...)
	}
	b = append(b, "event: "+typ+"\n"...)
	for line := range strings.SplitSeq(string(data), "\n") {
		b = append(b, "data: "+strings.TrimSuffix(line, "\r")+"\n"...)
	}
	return s.write(append(b, '\n'))
}

// comment writes a comment line, which EventSource ignores and proxies see as
// traffic.
func (s *sseWriter) comment(text string) error {
	return s.write([]byte(": " + text + "\n\n"))
}

func (s *sseWriter) write(b []byte) error {
	if !s.open {
		s.start()
	}
	if _, err := s.w.Write(b); err != nil {
		return fmt.Errorf("write event: %w", err)
	}
	if err := s.rc.Flush(); err != nil {
		return fmt.Errorf("flush event: %w", err)
	}
	return nil
}

// tokenFromQuery lets a browser's EventSource, which cannot send headers,
// authenticate on eventsRoute: it moves the access_token query parameter (RFC
// 6750 §2.3) into the Authorization header, on that route only. It wraps the
// whole HTTP handler, so no span, log line or later handler ever sees the key in
// a URL. A request that also sends the header keeps the header.
func tokenFromQuery(routes *http.ServeMux, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.RawQuery == "" {
			next.ServeHTTP(w, r)
			return
		}
		if _, pattern := routes.Handler(r); pattern != eventsRoute {
			next.ServeHTTP(w, r)
			return
		}
		q := r.URL.Query()
		if !q.Has("access_token") {
			next.ServeHTTP(w, r)
			return
		}
		token := q.Get("access_token")
		q.Del("access_token")
		r = r.Clone(r.Context())
		r.URL.RawQuery = q.Encode()
		r.RequestURI = r.URL.RequestURI()
		if token != "" && r.Header.Get("Authorization") == "" {
			r.Header.Set("Authorization", "Bearer "+token)
		}
		next.ServeHTTP(w, r)
	})
}
