package cli

import (
	"context"
	"io"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// scriptedWatches answers each WatchRequest with the next script: its states,
// then its end (nil: the stream ends OK), and keeps every request.
type scriptedWatches struct {
	comfygatev1.GatewayServiceClient
	scripts  []watchScript
	requests []*comfygatev1.WatchRequestRequest
}

type watchScript struct {
	states []*comfygatev1.RequestState
	end    error
}

func (s *scriptedWatches) WatchRequest(_ context.Context, req *comfygatev1.WatchRequestRequest, _ ...grpc.CallOption) (grpc.ServerStreamingClient[comfygatev1.WatchRequestResponse], error) {
	s.requests = append(s.requests, req)
	sc := s.scripts[0]
	s.scripts = s.scripts[1:]
	return &scriptedStream{script: sc}, nil
}

type scriptedStream struct {
	grpc.ClientStream
	script watchScript
}

func (s *scriptedStream) Recv() (*comfygatev1.WatchRequestResponse, error) {
	if len(s.script.states) == 0 {
		if s.script.end == nil {
			return nil, io.EOF
		}
		return nil, s.script.end
	}
	st := s.script.states[0]
	s.script.states = s.script.states[1:]
	return &comfygatev1.WatchRequestResponse{Request: st}, nil
}

// TestFollowResumesWithTheLastState: a watch that breaks with UNAVAILABLE
// resumes with the epoch, seq and status of the last state it showed, so the
// gateway never sends it an earlier state (after_status), even of a record
// made again meanwhile.
func TestFollowResumesWithTheLastState(t *testing.T) {
	running := &comfygatev1.RequestState{RequestId: "r", Epoch: 7, Seq: 2, Status: comfygatev1.Status_STATUS_RUNNING}
	done := &comfygatev1.RequestState{RequestId: "r", Epoch: 9, Seq: 2, Status: comfygatev1.Status_STATUS_SUCCEEDED}
	client := &scriptedWatches{scripts: []watchScript{
		{states: []*comfygatev1.RequestState{running}, end: status.Error(codes.Unavailable, "this replica is shutting down")},
		{states: []*comfygatev1.RequestState{done}},
	}}
	events := make(chan watchEvent, 8)
	last, err := follow(t.Context(), client, "dep", "r", nil, events)
	if err != nil || last != done {
		t.Fatalf("follow = %v, %v; want the success", last, err)
	}
	if len(client.requests) != 2 {
		t.Fatalf("%d watch calls, want 2", len(client.requests))
	}
	if got := client.requests[0]; got.GetAfterSeq() != 0 || got.GetAfterEpoch() != 0 || got.GetAfterStatus() != comfygatev1.Status_STATUS_UNSPECIFIED {
		t.Errorf("first call resumes after %d/%d/%v, want nothing", got.GetAfterEpoch(), got.GetAfterSeq(), got.GetAfterStatus())
	}
	if got := client.requests[1]; got.GetAfterSeq() != 2 || got.GetAfterEpoch() != 7 || got.GetAfterStatus() != comfygatev1.Status_STATUS_RUNNING {
		t.Errorf("resumed after %d/%d/%v, want 7/2/STATUS_RUNNING", got.GetAfterEpoch(), got.GetAfterSeq(), got.GetAfterStatus())
	}
}
