package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"
	"io"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// newGateway builds the REST handler. It dials the gRPC server at target like any
// client (never RegisterGatewayServiceHandlerServer, which would bypass the
// interceptors and cannot stream).
func newGateway(target string, maxMsg int, creds credentials.TransportCredentials, h *handoff, extra ...grpc.DialOption) (http.Handler, *grpc.ClientConn, error) {
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	conn, err := grpc.NewClient(target, append([]grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(maxMsg), grpc.MaxCallRecvMsgSize(maxMsg)),
		// A large submit's input goes to the service by reference (handoff.go).
		// and every call carries the gateway's mark: its body was counted
		// when it arrived over HTTP (grpcguard.go).
		grpc.WithChainUnaryInterceptor(h.clientInterceptor()),
		grpc.WithChainStreamInterceptor(h.streamClientInterceptor()),
	}, extra...)...)
	if err != nil {
		return nil, nil, fmt.Errorf("dial gRPC server for REST gateway: %w", err)
	}
	json := &runtime.JSONPb{
		MarshalOptions:   protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true},
		UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
	}
	mux := runtime.NewServeMux(
		runtime.WithMarshalerOption(runtime.MIMEWildcard, &restMarshaler{JSONPb: json}),
		// Keep reserved characters escaped while matching and in path parameters:
		// an id such as "a%2F..%2Fb" then reaches validation as written and is
		// refused there (400), instead of being decoded into extra path segments.
		runtime.WithUnescapingMode(runtime.UnescapingModeAllExceptReserved),
		// A refusal that says when to retry (RetryInfo) says it to HTTP
		// clients too, as Retry-After.
		runtime.WithErrorHandler(func(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
			// A body that outgrew the limit while it was read (sent without a
			// Content-Length) fails in the decoder, which grpc-gateway turns
			// into a plain INVALID_ARGUMENT: say what happened.
			if b, ok := r.Body.(*sizedBody); ok && b.overflow != nil {
				err = (&bodyTooLargeError{limit: b.overflow.Limit}).status().Err()
			}
			st := status.Convert(err)
			setRetryAfter(w.Header(), st)
			if code := restHTTPStatus(st); code != runtime.HTTPStatusFromCode(st.Code()) {
				err = &runtime.HTTPStatusError{HTTPStatus: code, Err: err}
			}
			runtime.DefaultHTTPErrorHandler(ctx, mux, m, w, r, err)
		}),
		runtime.WithStreamErrorHandler(func(ctx context.Context, err error) *status.Status {
			st := status.Convert(err)
			// Called just before a stream's refusal writes its headers, if
			// none were written yet (the guard put them in ctx).
			if h, ok := ctx.Value(responseHeaderKey{}).(http.Header); ok {
				setRetryAfter(h, st)
			}
			return st
		}),
		// Only Idempotency-Key, Prefer, the Comfygate-Webhook and the deadline headers travel as gRPC metadata (grpc-gateway adds
		// Authorization itself). No other header does: neither the
		// Grpc-Metadata-* aliases, which would let a caller set metadata the
		// guard never checked (a second Idempotency-Key, the handoff token),
		// nor the "permanent" headers, which no handler reads.
		// The service's answer metadata is not an HTTP header: what a REST
		// answer needs of it (a status, Preference-Applied) forwardStatus
		// writes.
		runtime.WithOutgoingHeaderMatcher(func(string) (string, bool) { return "", false }),
		runtime.WithForwardResponseOption(forwardStatus),
		runtime.WithIncomingHeaderMatcher(func(h string) (string, bool) {
			if strings.EqualFold(h, "Idempotency-Key") {
				return "idempotency-key", true
			}
			if strings.EqualFold(h, "Prefer") {
				return "prefer", true // a submit's "Prefer: wait=N" (submit_and_wait.go)
			}
			if strings.EqualFold(h, "Comfygate-Webhook") || strings.EqualFold(h, "Comfygate-Webhook-Events") ||
				strings.EqualFold(h, maxQueueHeader) || strings.EqualFold(h, maxRunHeader) {
				return strings.ToLower(h), true
			}
			return "", false
		}),
	)
	if err := comfygatev1.RegisterGatewayServiceHandler(context.Background(), mux, conn); err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("register REST gateway: %w", err)
	}
	return mux, conn, nil
}

// selfTrust is how the REST gateway, which dials its own gRPC listener on
// loopback, trusts it under TLS: by the exact certificate the listener serves,
// since the certificate names the public host, not the loopback address. nil
// without TLS.
func selfTrust(cfg *tls.Config) credentials.TransportCredentials {
	if cfg == nil || len(cfg.Certificates) == 0 || len(cfg.Certificates[0].Certificate) == 0 {
		return nil
	}
	own := cfg.Certificates[0].Certificate[0]
	return credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS12,
		// Chain and name checks are replaced by the pin below.
		InsecureSkipVerify: true, //nolint:gosec // the peer must present our own certificate
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 || !bytes.Equal(raw[0], own) {
				return errors.New("the gRPC listener does not present this gateway's certificate")
			}
			return nil
		},
	})
}

// restMarshaler is the gateway's JSON marshaler, except for the Submit body: that
// body is RunComfy's own submit body, taken verbatim as input_json so that no
// number is re-typed or rounded on the way (protojson would have to parse it into
// some message first). Validation happens in Submit, for both transports alike.
type restMarshaler struct {
	*runtime.JSONPb
}

// NewDecoder returns a decoder that captures the raw body for a SubmitRequest and
// defers to protojson for everything else.
func (m *restMarshaler) NewDecoder(r io.Reader) runtime.Decoder {
	return runtime.DecoderFunc(func(v any) error {
		req, ok := v.(*comfygatev1.SubmitRequest)
		if !ok {
			return m.JSONPb.NewDecoder(r).Decode(v)
		}
		raw, err := readBody(r)
		if err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				return fmt.Errorf("request body is larger than %d bytes", tooBig.Limit)
			}
			if errors.Is(err, errBodyTimeout) {
				return err
			}
			return fmt.Errorf("reading request body: %w", err)
		}
		// gRPC refuses to carry a string field that is not UTF-8; say so plainly
		// instead of failing later with an encoding error.
		if !utf8.ValidString(raw) {
			return errors.New("request body is not valid UTF-8 JSON")
		}
		req.InputJson = raw
		return nil
	})
}

// StreamContentType is the media type of server streams (WatchRequest): one JSON
// object per line.
func (m *restMarshaler) StreamContentType(any) string { return "application/x-ndjson" }

// readBody reads a request body into a string, copied once: into a buffer of
// its declared size when the guard knows it (sizedBody), and never copied
// again, since the string takes the buffer over.
func readBody(r io.Reader) (string, error) {
	var b strings.Builder
	if s, ok := r.(*sizedBody); ok {
		// One more byte than declared, so a body that ends where it says
		// reads its end without growing the buffer.
		b.Grow(int(s.size) + 1)
	}
	if _, err := io.Copy(&b, r); err != nil {
		return "", err
	}
	return b.String(), nil
}

// responseHeaderKey holds, in a REST call's context, its response's header,
// for the stream error handler, which is given no ResponseWriter.
type responseHeaderKey struct{}

// setRetryAfter sets Retry-After from st's RetryInfo, if it carries one.
func setRetryAfter(h http.Header, st *status.Status) {
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay() != nil {
			h.Set("Retry-After", retryAfterSeconds(ri.GetRetryDelay().AsDuration()))
			return
		}
	}
}
