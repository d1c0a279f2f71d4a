package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	reqstatus "github.com/comfygate/comfygate/internal/status"
	"github.com/comfygate/comfygate/state"
)

// Run-and-wait bounds: load balancers commonly end a request after a few
// minutes, and a caller that waits longer should watch.
const (
	defaultSubmitWait = 60 * time.Second
	maxSubmitWait     = 300 * time.Second
)

// httpCodeHeader carries a REST answer's status from Submit to the REST
// gateway (forwardStatus), which removes it.
const httpCodeHeader = "x-comfygate-http-code"

// SubmitAndWait submits, then waits for the request's end on the hub, as a
// watch does (no polling of its own: the reconciler is told the request is
// watched, so a lost callback is made up for as for any watcher).
func (s *Service) SubmitAndWait(ctx context.Context, req *comfygatev1.SubmitAndWaitRequest) (*comfygatev1.SubmitAndWaitResponse, error) {
	wait := defaultSubmitWait
	if d := req.GetWait(); d != nil {
		if err := d.CheckValid(); err != nil || d.AsDuration() < 0 {
			return nil, &fieldError{field: "wait", reason: "is not a positive duration"}
		}
		if d.AsDuration() > 0 {
			wait = min(d.AsDuration(), maxSubmitWait)
		}
	}
	if req.GetSubmit() == nil {
		return nil, &fieldError{field: "submit", reason: "is required"}
	}
	sub, err := s.Submit(ctx, req.GetSubmit())
	if err != nil {
		return nil, err
	}
	st, done := s.waitForEnd(ctx, sub.GetRequest(), wait)
	return &comfygatev1.SubmitAndWaitResponse{Request: st, Done: done}, nil
}

// waitForEnd waits up to wait (and no longer than ctx) for the request
// that st describes to end, and returns its latest state and whether it
// ended. A failure to watch is not the caller's error: the submit
// succeeded, and the state it has is answered.
func (s *Service) waitForEnd(ctx context.Context, st *comfygatev1.RequestState, wait time.Duration) (*comfygatev1.RequestState, bool) {
	if ended := reqstatus.OfProto(st.GetStatus()).Terminal(); ended || st.GetSeq() == 0 {
		// Ended already, or not recorded (nothing to follow).
		return st, ended
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	dep, rid := st.GetDeploymentId(), st.GetRequestId()
	w, err := s.watches.Watch(ctx, rid)
	if err != nil {
		s.log.WarnContext(ctx, "submit and wait: the request could not be watched; answering its state", "request_id", rid, "error", err)
		return st, false
	}
	defer w.Close()
	last, err := s.lookup(ctx, dep, rid)
	if err != nil {
		return st, false
	}
	if last.Terminal() {
		return recordToProto(last, s.urls), true
	}
	s.watches.Describe(rid, last.DeploymentID, last.Owner, last.OwnerAttached)
	if s.expedite != nil {
		s.expedite.Watched(ctx, rid)
	}
	for {
		recs, err := w.Next(ctx)
		if err != nil {
			// The wait ended (its time, the caller, the drain): the latest
			// state known is the answer.
			return recordToProto(last, s.urls), false
		}
		for _, r := range recs {
			if supersedes(last, r) {
				last = r
			}
		}
		if last.Terminal() {
			return recordToProto(last, s.urls), true
		}
	}
}

// supersedes reports whether r, from the hub, says more of its request than
// last: a later seq of the same epoch, or a record of another epoch (made
// again after a loss) that does not stand at an earlier state, as one put back
// by a replica that remembered less may, for a moment.
func supersedes(last, r *state.Record) bool {
	if r.Epoch == last.Epoch {
		return r.Seq > last.Seq
	}
	return state.Rank(r.State) >= state.Rank(last.State)
}

// preferredWait is the wait a REST submit asks for with "Prefer: wait=N"
// (RFC 7240), at most maxSubmitWait; 0 when it asks for none. The REST
// gateway passes the header on as "prefer" metadata.
func preferredWait(ctx context.Context) time.Duration {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("prefer") {
		for pref := range strings.SplitSeq(v, ",") {
			pref, _, _ = strings.Cut(pref, ";") // a preference's parameters
			name, val, ok := strings.Cut(strings.TrimSpace(pref), "=")
			if !ok || !strings.EqualFold(strings.TrimSpace(name), "wait") {
				continue
			}
			secs, err := strconv.ParseInt(strings.Trim(strings.TrimSpace(val), `"`), 10, 64)
			var numErr *strconv.NumError
			switch {
			case errors.As(err, &numErr) && errors.Is(numErr.Err, strconv.ErrRange) && !strings.HasPrefix(strings.TrimSpace(val), "-"):
				return maxSubmitWait // more than any wait: the longest
			case err != nil || secs <= 0:
				return 0
			}
			return min(time.Duration(min(secs, int64(maxSubmitWait/time.Second)))*time.Second, maxSubmitWait)
		}
	}
	return 0
}

// waitPreferred applies a REST submit's "Prefer: wait": the answer becomes
// the state the wait ended with, and its HTTP status 200 when the request
// ended, 202 when it has not (the caller watches it then).
func (s *Service) waitPreferred(ctx context.Context, resp *comfygatev1.SubmitResponse) *comfygatev1.SubmitResponse {
	wait := preferredWait(ctx)
	if wait == 0 || resp.GetRequest() == nil {
		return resp
	}
	st, done := s.waitForEnd(ctx, resp.GetRequest(), wait)
	code := http.StatusAccepted
	if done {
		code = http.StatusOK
	}
	_ = grpc.SetHeader(ctx, metadata.Pairs(httpCodeHeader, strconv.Itoa(code),
		"preference-applied", fmt.Sprintf("wait=%d", int(wait/time.Second))))
	return &comfygatev1.SubmitResponse{Request: st}
}

// forwardStatus is the REST gateway's forward-response option: it writes
// the status a handler chose (waitPreferred) and the Preference-Applied
// header, and keeps the carrier metadata out of the answer.
func forwardStatus(ctx context.Context, w http.ResponseWriter, _ proto.Message) error {
	md, ok := runtime.ServerMetadataFromContext(ctx)
	if !ok {
		return nil
	}
	if v := md.HeaderMD.Get("preference-applied"); len(v) > 0 {
		w.Header().Set("Preference-Applied", v[0])
	}
	v := md.HeaderMD.Get(httpCodeHeader)
	if len(v) == 0 {
		return nil
	}
	code, err := strconv.Atoi(v[0])
	if err != nil {
		return errors.New("bad status from the service")
	}
	w.WriteHeader(code)
	return nil
}
