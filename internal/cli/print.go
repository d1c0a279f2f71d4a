package cli

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	reqstatus "github.com/comfygate/comfygate/internal/status"
)

// writeJSON writes the state as one line of JSON, in the REST API's encoding
// (proto field names, every field present) so that a script reads the same
// shape from both. protojson's compact form never holds a newline.
func writeJSON(w *errWriter, st proto.Message) {
	b, err := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}.Marshal(st)
	if err != nil {
		// A state that cannot be encoded is a bug; say so rather than print
		// half a line.
		if w.err == nil {
			w.err = fmt.Errorf("encoding the state as JSON: %w", err)
		}
		return
	}
	_, _ = w.Write(append(b, '\n'))
}

// statusName is the status's word: "queued".
func statusName(s comfygatev1.Status) string { return reqstatus.OfProto(s).Word }

// terminalStatus reports whether s is a terminal status.
func terminalStatus(s comfygatev1.Status) bool { return reqstatus.OfProto(s).Terminal() }

// watchExitCode is the exit code of a watch that ended in st.
func watchExitCode(st *comfygatev1.RequestState) int {
	switch st.GetStatus() {
	case comfygatev1.Status_STATUS_SUCCEEDED:
		return ExitOK
	case comfygatev1.Status_STATUS_CANCELLED:
		return ExitCancelled
	default:
		return ExitFailed
	}
}

// stateSummary is the state in a few words: "queued, position 3".
func stateSummary(st *comfygatev1.RequestState) string {
	s := statusName(st.GetStatus())
	switch {
	case st.GetStatus() == comfygatev1.Status_STATUS_QUEUED && st.QueuePosition != nil:
		s += fmt.Sprintf(", position %d", st.GetQueuePosition())
	case st.GetStatus() == comfygatev1.Status_STATUS_UNKNOWN:
		s += fmt.Sprintf(" (RunComfy said %q)", st.GetUpstreamStatus())
	}
	if st.GetCancelling() {
		s += ", cancelling"
	}
	return s
}

// errorText is a failed request's error on one line.
func errorText(e *comfygatev1.RequestError) string {
	var parts []string
	if e.GetType() != "" {
		parts = append(parts, e.GetType())
	}
	if e.GetMessage() != "" {
		parts = append(parts, e.GetMessage())
	}
	s := strings.Join(parts, ": ")
	if s == "" {
		s = "no description"
	}
	if c := e.GetUpstreamCode(); c != "" && c != "0" { // 0: RunComfy gave none
		s += fmt.Sprintf(" (RunComfy code %s)", c)
	}
	return s
}

// cancelText says what RunComfy did with a cancel.
func cancelText(resp *comfygatev1.CancelResponse) string {
	switch resp.GetOutcome() {
	case comfygatev1.CancelOutcome_CANCEL_OUTCOME_CANCELLED, comfygatev1.CancelOutcome_CANCEL_OUTCOME_REQUESTED:
		if resp.GetRequest().GetStatus() == comfygatev1.Status_STATUS_CANCELLED {
			return "cancelled"
		}
		return "accepted; the request stops shortly"
	case comfygatev1.CancelOutcome_CANCEL_OUTCOME_NOT_CANCELLABLE:
		return "not cancellable: the request has finished or cannot be stopped"
	default:
		return fmt.Sprintf("unknown outcome (RunComfy said %q)", resp.GetUpstreamOutcome())
	}
}

// writeState writes a state as aligned "key value" lines, one output URL a line,
// headed by note when there is one (cancel's outcome).
func writeState(w io.Writer, st *comfygatev1.RequestState, note string) {
	row := func(k, v string) { fmt.Fprintf(w, "%-10s%s\n", k, v) }
	if note != "" {
		row("cancel", note)
	}
	row("request", st.GetRequestId())
	row("status", stateSummary(st))
	if st.GetInstanceId() != "" {
		row("instance", st.GetInstanceId())
	}
	for _, t := range []struct {
		k  string
		ts *timestamppb.Timestamp
	}{{"created", st.GetCreatedAt()}, {"started", st.GetStartedAt()}, {"finished", st.GetFinishedAt()}} {
		if t.ts != nil {
			row(t.k, t.ts.AsTime().Local().Format(time.RFC3339))
		}
	}
	if e := st.GetError(); e != nil {
		row("error", errorText(e))
	}
	for _, u := range st.GetOutputUrls() {
		row("output", u)
	}
}

// grpcStatus finds the gRPC status in err, wrapped or not.
func grpcStatus(err error) (*status.Status, bool) {
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		return se.GRPCStatus(), true
	}
	return nil, false
}

// isUnavailable reports whether err is, or wraps, a gRPC UNAVAILABLE.
func isUnavailable(err error) bool {
	st, ok := grpcStatus(err)
	return ok && st.Code() == codes.Unavailable
}

// describeError is err for a person: a gRPC status reads "NotFound: no such request"
// rather than "rpc error: code = NotFound desc = ...", with the details that
// help (a retry delay, RunComfy's own error code).
func describeError(err error) string {
	st, ok := grpcStatus(err)
	if !ok {
		return err.Error()
	}
	text := fmt.Sprintf("%s: %s", st.Code(), st.Message())
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.RetryInfo:
			text += fmt.Sprintf(" (retry after %s)", d.GetRetryDelay().AsDuration())
		case *errdetails.ErrorInfo:
			if code := d.GetMetadata()["upstream_code"]; code != "" {
				text += fmt.Sprintf(" (RunComfy code %s)", code)
			}
		}
	}
	// Keep what wrapped the status ("gave up reconnecting ...: ").
	return strings.Replace(err.Error(), st.Err().Error(), text, 1)
}
