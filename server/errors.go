package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/hooks"
	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/uploads"
)

// errorDomain names RunComfy in ErrorInfo details, so clients can tell upstream
// failures from the gateway's own.
const errorDomain = "runcomfy.net"

// gatewayDomain is the ErrorInfo domain of the gateway's own reasons, below.
const gatewayDomain = "comfygate"

// The ErrorInfo reasons the gateway itself gives.
const (
	// reasonDraining: a watch ends because its replica shuts down; resume
	// elsewhere from last_epoch and last_seq.
	reasonDraining = "DRAINING"
	// reasonNoAnswer: a submit reached RunComfy and got no answer naming a
	// request: a job may exist (job_may_exist).
	reasonNoAnswer = "UPSTREAM_NO_ANSWER"
	// reasonBodyTooLarge: a request body is over --max-body-bytes; REST
	// answers it 413.
	reasonBodyTooLarge = "BODY_TOO_LARGE"
	// reasonUnsupportedType: an upload's content type is not taken, or its
	// bytes are of another kind; REST answers it 415.
	reasonUnsupportedType = "UNSUPPORTED_MEDIA_TYPE"
	// reasonConcurrencyCap: a submit would pass one of its deployment's
	// concurrency caps (the deployments file); nothing was sent to RunComfy.
	reasonConcurrencyCap = "CONCURRENCY_CAP"
)

// storeRetryDelay is the RetryInfo hint when the object store failed: a
// store that refused a connection is usually back within seconds.
const storeRetryDelay = 5 * time.Second

// defaultRetryDelay is the RetryInfo hint when RunComfy rate limits without a
// Retry-After header.
const defaultRetryDelay = time.Second

// drainingError ends a watch stream because this replica is shutting down.
type drainingError struct {
	last state.Position
	// status is that of the last state sent (or named by the resume), unset
	// when there was none.
	status comfygatev1.Status
}

func (e *drainingError) Error() string {
	msg := fmt.Sprintf("this replica is shutting down; reconnect with after_epoch=%d after_seq=%d", e.last.Epoch, e.last.Seq)
	if e.status != comfygatev1.Status_STATUS_UNSPECIFIED {
		msg += " after_status=" + e.status.String()
	}
	return msg
}

// fieldError is a client input the gateway refuses before calling anything.
type fieldError struct {
	field  string
	reason string
}

func (e *fieldError) Error() string { return e.field + ": " + e.reason }

// isSubmit reports whether method submits a job: Submit, or SubmitAndWait.
func isSubmit(method string) bool {
	return method == comfygatev1.GatewayService_Submit_FullMethodName || method == comfygatev1.GatewayService_SubmitAndWait_FullMethodName
}

// toStatus is the one place where domain errors become gRPC statuses. Handlers
// return plain errors; the unary and stream interceptors call toStatus once. An
// error that is already a status (from gRPC itself) passes through; anything
// unknown becomes Internal with a generic message, logged in full here.
func toStatus(ctx context.Context, log *slog.Logger, method string, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var de *drainingError
	if errors.As(err, &de) {
		md := map[string]string{
			"last_seq":   strconv.FormatInt(de.last.Seq, 10),
			"last_epoch": strconv.FormatInt(de.last.Epoch, 10),
		}
		if de.status != comfygatev1.Status_STATUS_UNSPECIFIED {
			md["last_status"] = de.status.String()
		}
		return withDetails(status.New(codes.Unavailable, de.Error()), &errdetails.ErrorInfo{
			Reason: reasonDraining, Domain: gatewayDomain, Metadata: md,
		})
	}
	var ce *state.CapError
	if errors.As(err, &ce) {
		scope := "deployment"
		if ce.PerTenant {
			scope = "tenant"
		}
		return withDetails(status.New(codes.ResourceExhausted, ce.Error()), &errdetails.ErrorInfo{
			Reason: reasonConcurrencyCap, Domain: gatewayDomain,
			Metadata: map[string]string{
				"deployment_id": ce.DeploymentID,
				"scope":         scope,
				"limit":         strconv.Itoa(ce.Limit),
			},
		})
	}
	var rl *rateLimitedError
	if errors.As(err, &rl) {
		return withDetails(status.New(codes.ResourceExhausted, rl.Error()),
			&errdetails.RetryInfo{RetryDelay: durationpb.New(rl.retry)})
	}
	var tooLarge *bodyTooLargeError
	if errors.As(err, &tooLarge) {
		return tooLarge.status().Err()
	}
	var crossOrigin *crossOriginError
	if errors.As(err, &crossOrigin) {
		return status.Error(codes.PermissionDenied, crossOrigin.Error())
	}
	if st := submitWithoutAnswer(ctx, log, method, err); st != nil {
		return st.Err()
	}
	var fe *fieldError
	if errors.As(err, &fe) {
		st := status.New(codes.InvalidArgument, fe.Error())
		return withDetails(st, &errdetails.BadRequest{
			FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: fe.field, Description: fe.reason}},
		})
	}
	switch {
	case errors.Is(err, errIdempotencyMismatch):
		return status.Error(codes.AlreadyExists, errIdempotencyMismatch.Error())
	case errors.Is(err, errIdempotencyUnanswered):
		return withDetails(status.New(codes.FailedPrecondition, errIdempotencyUnanswered.Error()), &errdetails.ErrorInfo{
			Reason: reasonNoAnswer, Domain: gatewayDomain,
			Metadata: map[string]string{"job_may_exist": "true"},
		})
	case errors.Is(err, errWebhooksOff), errors.Is(err, errNoSigningSecret):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, errNoListing):
		return status.Error(codes.Unimplemented, errNoListing.Error())
	case errors.Is(err, errNoUploads):
		return status.Error(codes.FailedPrecondition, errNoUploads.Error())
	case errors.Is(err, uploads.ErrType):
		return withDetails(status.New(codes.InvalidArgument, err.Error()), &errdetails.ErrorInfo{
			Reason: reasonUnsupportedType, Domain: gatewayDomain,
		})
	case errors.Is(err, uploads.ErrEmpty), errors.Is(err, uploads.ErrSizeMismatch):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, uploads.ErrBusy):
		return status.Error(codes.ResourceExhausted, uploads.ErrBusy.Error())
	case errors.Is(err, uploads.ErrStore):
		return withDetails(status.New(codes.Unavailable, uploads.ErrStore.Error()),
			&errdetails.RetryInfo{RetryDelay: durationpb.New(storeRetryDelay)})
	case errors.Is(err, errNoSuchEvent):
		return status.Error(codes.NotFound, errNoSuchEvent.Error())
	case errors.Is(err, hooks.ErrBusy):
		return status.Error(codes.Unavailable, "the request's events are being delivered right now; retry")
	case errors.Is(err, errInflightFull):
		return status.Error(codes.Unavailable, errInflightFull.Error())
	case errors.Is(err, errPublicBusy):
		return status.Error(codes.ResourceExhausted, errPublicBusy.Error())
	case errors.Is(err, errUnauthenticated):
		return status.Error(codes.Unauthenticated, errUnauthenticated.Error())
	case errors.Is(err, state.ErrNotFound):
		return errNoSuchRequest()
	case errors.Is(err, state.ErrFollowUnsure):
		log.WarnContext(ctx, "watch ended: the record's current incarnation is unknown", "method", method, "error", err)
		return status.Error(codes.Unavailable, "the gateway could not read the request's current state; resume with after_epoch and after_seq")
	case errors.Is(err, state.ErrUnavailable):
		log.WarnContext(ctx, "state backend unavailable", "method", method, "error", err)
		return status.Error(codes.Unavailable, "the gateway's state backend is unavailable; retry later")
	case errors.Is(err, context.DeadlineExceeded):
		var apiErr *runcomfy.APIError
		if errors.As(err, &apiErr) {
			// --upstream-timeout ran out on every attempt: RunComfy's fault,
			// so it says so in the detail, as its other failures do.
			info := errorInfo(apiErr)
			info.Reason = "UPSTREAM_TIMEOUT"
			log.WarnContext(ctx, "RunComfy did not answer in time", "method", method, "error", err)
			return withDetails(status.New(codes.DeadlineExceeded, "RunComfy did not answer in time"), info)
		}
		// The caller's deadline: nothing upstream to report.
		return status.Error(codes.DeadlineExceeded, "deadline exceeded before RunComfy answered")
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "call cancelled")
	}

	var apiErr *runcomfy.APIError
	if !errors.As(err, &apiErr) {
		log.ErrorContext(ctx, "internal error", "method", method, "error", err)
		return status.Error(codes.Internal, "internal error")
	}
	var (
		code codes.Code
		msg  string
	)
	switch {
	case errors.Is(err, runcomfy.ErrInvalidInput):
		code, msg = codes.InvalidArgument, "RunComfy rejected the input: "+upstreamMessage(apiErr)
	case errors.Is(err, runcomfy.ErrNotFound) && !isSubmit(method):
		// A request RunComfy does not know (only a caller that may attach
		// gets it asked) is answered as one the gateway does not know, and as
		// another tenant's: any upstream detail would tell them apart.
		return errNoSuchRequest()
	case errors.Is(err, runcomfy.ErrNotFound):
		// Submit: the deployment is unknown upstream; no request is involved.
		code, msg = codes.NotFound, "not found on RunComfy: "+apiErr.Message
	case errors.Is(err, runcomfy.ErrInsufficientFunds):
		code, msg = codes.FailedPrecondition, "the RunComfy account has insufficient funds: "+apiErr.Message
	case errors.Is(err, runcomfy.ErrDeploymentDisabled):
		code, msg = codes.FailedPrecondition, "the deployment is disabled: "+apiErr.Message
	case errors.Is(err, runcomfy.ErrDeploymentDeleted):
		code, msg = codes.FailedPrecondition, "the deployment was deleted: "+apiErr.Message
	case errors.Is(err, runcomfy.ErrRateLimited):
		delay := apiErr.RetryAfter
		if delay <= 0 {
			delay = defaultRetryDelay
		}
		st := status.New(codes.ResourceExhausted, "RunComfy is rate limiting; retry after "+delay.String())
		return withDetails(st, errorInfo(apiErr), &errdetails.RetryInfo{RetryDelay: durationpb.New(delay)})
	case errors.Is(err, runcomfy.ErrUnauthorized):
		// The client can do nothing about the gateway's credentials; the operator
		// must, so the detail goes to the log and the client learns only that the
		// gateway is at fault.
		log.ErrorContext(ctx, "RunComfy rejected the gateway's API token: check RUNCOMFY_API_TOKEN",
			"method", method, "error", err)
		// The upstream code still reaches the client (UPSTREAM_401001), so a
		// program can tell this from the gateway's own faults; the token
		// never does.
		return withDetails(status.New(codes.Internal, "the gateway is misconfigured; its operator has been told"), errorInfo(apiErr))
	default: // runcomfy.ErrUnavailable and anything unclassified
		code, msg = codes.Unavailable, "RunComfy is unavailable: "+unavailableReason(apiErr)
		log.WarnContext(ctx, "RunComfy unavailable", "method", method, "error", err)
	}
	return withDetails(status.New(code, msg), errorInfo(apiErr))
}

// errNoSuchRequest is the one NotFound of a request, whatever the cause: no
// record and no permission to attach, another tenant's request, an ownerless
// one the caller may not claim, or one RunComfy does not know. Code, message
// and details (none) are the same for all, on gRPC and so on REST, so that no
// answer tells a tenant whether an id exists.
func errNoSuchRequest() error {
	return status.Error(codes.NotFound, "no such request")
}

// submitWithoutAnswer is the status of a submit RunComfy may have received
// and started a job for without the gateway learning its id, or nil for any
// other error: the wait ran out (DEADLINE_EXCEEDED, 504), the connection
// broke before or during the answer, the answer was a success the gateway
// could not use, or a proxy in front of RunComfy answered in its place
// (HTTP 502; HTTP 504 is a timeout). RunComfy may bill that job: the error
// says so, so that the caller does not submit again blindly.
func submitWithoutAnswer(ctx context.Context, log *slog.Logger, method string, err error) *status.Status {
	var apiErr *runcomfy.APIError
	if !isSubmit(method) || !errors.As(err, &apiErr) || !submitMayHaveStarted(apiErr) {
		return nil
	}
	log.WarnContext(ctx, "RunComfy did not answer a submit: a job may exist", "method", method, "error", err)
	code, what := codes.Unavailable, "the connection to RunComfy broke before its answer"
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		code, what = codes.DeadlineExceeded, "RunComfy did not answer the submit in time"
	case apiErr.HTTPStatus == http.StatusGatewayTimeout:
		code, what = codes.DeadlineExceeded, "a proxy in front of RunComfy gave up waiting for its answer (HTTP 504)"
	case apiErr.HTTPStatus == http.StatusBadGateway:
		what = "a proxy in front of RunComfy got no usable answer from it (HTTP 502)"
	case apiErr.HTTPStatus != 0 && apiErr.Err != nil:
		what = fmt.Sprintf("RunComfy's answer (HTTP %d) broke off", apiErr.HTTPStatus)
	case apiErr.HTTPStatus != 0:
		what = fmt.Sprintf("RunComfy's answer (HTTP %d) named no request the gateway could read", apiErr.HTTPStatus)
	}
	info := errorInfo(apiErr)
	info.Reason = reasonNoAnswer
	info.Metadata["job_may_exist"] = "true"
	st, _ := status.New(code, what+"; a job may have started and be billed: "+noAnswerAdvice).WithDetails(info)
	return st
}

// noAnswerAdvice tells the caller of a submit without an answer what to do.
// The gateway keeps the submit's idempotency key, marked unanswered: a retry
// with it is refused, one without a key is a new submit to RunComfy.
const noAnswerAdvice = "do not retry blindly: a retry without an idempotency key submits again; one with this submit's key is refused, never sent twice"

// submitMayHaveStarted reports whether a failed submit may still have
// started a job: it was sent (the failure is not a dial or a refused
// connection) and no usable answer came back, or RunComfy's answer was lost
// to a proxy. An answer that carries an error code, or any other error
// status, says that no job started.
func submitMayHaveStarted(e *runcomfy.APIError) bool {
	success := e.HTTPStatus >= 200 && e.HTTPStatus < 300
	switch {
	case e.Err != nil:
		// Nothing came back, or a success broke off before its end.
		return !neverSent(e) && (e.HTTPStatus == 0 || success)
	case e.Code != 0:
		return false
	case success:
		// A success whose body could not be decoded, or named no request.
		return true
	}
	return e.HTTPStatus == http.StatusBadGateway || e.HTTPStatus == http.StatusGatewayTimeout
}

// unavailableReason describes an upstream outage without transport details (the
// upstream address is the operator's business, and is logged instead).
func unavailableReason(e *runcomfy.APIError) string {
	switch {
	case e.HTTPStatus != 0 && e.Err != nil:
		return fmt.Sprintf("its answer (HTTP %d) broke off", e.HTTPStatus)
	case e.HTTPStatus != 0:
		return fmt.Sprintf("it answered HTTP %d: %s", e.HTTPStatus, e.Message)
	case neverSent(e):
		return "it could not be reached"
	}
	return "the connection to it broke before its answer"
}

// neverSent reports whether a call failed before it reached RunComfy: the
// connection could not be made (refused, no route, DNS).
func neverSent(e *runcomfy.APIError) bool {
	var op *net.OpError
	return e.HTTPStatus == 0 && errors.As(e.Err, &op) && op.Op == "dial"
}

func upstreamMessage(e *runcomfy.APIError) string {
	if len(e.Detail) == 0 {
		return e.Message
	}
	return fmt.Sprintf("%s (detail: %s)", e.Message, e.Detail)
}

// errorInfo carries the upstream code and HTTP status for programs that branch on
// them.
func errorInfo(e *runcomfy.APIError) *errdetails.ErrorInfo {
	md := map[string]string{"http_status": strconv.Itoa(e.HTTPStatus)}
	reason := "UPSTREAM_UNAVAILABLE"
	if e.Code != 0 {
		md["upstream_code"] = strconv.FormatInt(e.Code, 10)
		reason = "UPSTREAM_" + strconv.FormatInt(e.Code, 10)
	} else if e.HTTPStatus != 0 {
		reason = "UPSTREAM_HTTP_" + strconv.Itoa(e.HTTPStatus)
	}
	return &errdetails.ErrorInfo{Reason: reason, Domain: errorDomain, Metadata: md}
}

func withDetails(st *status.Status, details ...protoadapt.MessageV1) error {
	withD, err := st.WithDetails(details...)
	if err != nil {
		return st.Err()
	}
	return withD.Err()
}

// status is the refusal of a body over the limit: INVALID_ARGUMENT with the
// reason BODY_TOO_LARGE and the limit, which REST answers 413.
func (e *bodyTooLargeError) status() *status.Status {
	st, err := status.New(codes.InvalidArgument, e.Error()).WithDetails(&errdetails.ErrorInfo{
		Reason: reasonBodyTooLarge, Domain: gatewayDomain,
		Metadata: map[string]string{"limit": strconv.FormatInt(e.limit, 10)},
	})
	if err != nil {
		return status.New(codes.InvalidArgument, e.Error())
	}
	return st
}

// restHTTPStatus is the HTTP status REST answers st with: grpc-gateway's
// mapping of its code, but 413 for a body over the limit and 415 for an
// upload of a type not taken, which HTTP clients and proxies know by those
// statuses.
func restHTTPStatus(st *status.Status) int {
	for _, d := range st.Details() {
		ei, ok := d.(*errdetails.ErrorInfo)
		if !ok || ei.GetDomain() != gatewayDomain {
			continue
		}
		switch ei.GetReason() {
		case reasonBodyTooLarge:
			return http.StatusRequestEntityTooLarge
		case reasonUnsupportedType:
			return http.StatusUnsupportedMediaType
		}
	}
	return runtime.HTTPStatusFromCode(st.Code())
}

// undecodable holds the request messages of the gateway's service that the
// codec could not decode, each with the error to answer it with, from the
// codec's Unmarshal to the method's decoding (desc). grpc-go answers any
// codec error INTERNAL, and writes that status at once; but a message that
// does not decode (not protobuf, a string that is not UTF-8, one larger than
// any of its kind) is the caller's error, not the server's, and must neither
// look like a fault in the gateway nor page whoever watches its INTERNAL
// rate. So the codec reports success and the method's decoding, which comes
// next, fails the call with the precise code.
type undecodable struct{ m sync.Map } // message (a pointer) -> error

// served reports whether pkg is the protobuf package of a service
// registered with its decoding wrapped (desc, decodingRegistrar): the
// gateway's, health or reflection. A failure is kept only for their
// messages, which are taken back; any other's would be kept for good.
func served(pkg protoreflect.FullName) bool {
	switch pkg {
	case "comfygate.v1", "grpc.health.v1", "grpc.reflection.v1", "grpc.reflection.v1alpha":
		return true
	}
	return false
}

// put keeps the decoding error of v, and reports whether it did: only for
// the messages of the services served, which desc's methods take back.
func (u *undecodable) put(v any, err error) bool {
	m, ok := v.(proto.Message)
	if !ok || !served(m.ProtoReflect().Descriptor().ParentFile().Package()) {
		return false
	}
	var tooLarge *messageTooLargeError
	if errors.As(err, &tooLarge) {
		err = status.Error(codes.ResourceExhausted, tooLarge.Error())
	} else {
		err = status.Error(codes.InvalidArgument, "the request message does not decode: "+err.Error())
	}
	u.m.Store(v, err)
	return true
}

// take returns (and forgets) the decoding error of v, if any.
func (u *undecodable) take(v any) error {
	if err, ok := u.m.LoadAndDelete(v); ok {
		return err.(error)
	}
	return nil
}

// after is the error of receiving v, whose receipt ended with err: err,
// or else v's decoding error. v's is taken either way: a receipt that fails
// after the codec (a second message where one is due) leaves nothing kept.
func (u *undecodable) after(err error, v any) error {
	if failed := u.take(v); err == nil {
		return failed
	}
	return err
}

// desc is the service desc with each method's decoding, unary or streamed,
// failing with the error put for its message.
func (u *undecodable) desc(desc *grpc.ServiceDesc) *grpc.ServiceDesc {
	d := *desc
	d.Methods = make([]grpc.MethodDesc, len(desc.Methods))
	for i, m := range desc.Methods {
		h := m.Handler
		m.Handler = func(srv any, ctx context.Context, dec func(any) error, ic grpc.UnaryServerInterceptor) (any, error) {
			return h(srv, ctx, func(v any) error { return u.after(dec(v), v) }, ic)
		}
		d.Methods[i] = m
	}
	d.Streams = make([]grpc.StreamDesc, len(desc.Streams))
	for i, sd := range desc.Streams {
		h := sd.Handler
		sd.Handler = func(srv any, stream grpc.ServerStream) error { return h(srv, decodingStream{stream, u}) }
		d.Streams[i] = sd
	}
	return &d
}

// decodingRegistrar registers services on the server with their decoding
// wrapped (desc), for registrations done by other packages (health,
// reflection).
type decodingRegistrar struct {
	*grpc.Server
	failed *undecodable
}

func (r decodingRegistrar) RegisterService(desc *grpc.ServiceDesc, impl any) {
	r.Server.RegisterService(r.failed.desc(desc), impl)
}

// decodingStream is a server stream whose messages received fail as
// undecodable says.
type decodingStream struct {
	grpc.ServerStream
	failed *undecodable
}

func (s decodingStream) RecvMsg(m any) error { return s.failed.after(s.ServerStream.RecvMsg(m), m) }
