package server

import (
	"encoding/json"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	reqstatus "github.com/comfygate/comfygate/internal/status"
	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
)

func toProtoStatus(s runcomfy.State) comfygatev1.Status { return reqstatus.Of(s).Proto }

func toProtoCancelOutcome(o runcomfy.CancelOutcome) comfygatev1.CancelOutcome {
	switch o {
	case runcomfy.CancelDone:
		return comfygatev1.CancelOutcome_CANCEL_OUTCOME_CANCELLED
	case runcomfy.CancelRequested:
		return comfygatev1.CancelOutcome_CANCEL_OUTCOME_REQUESTED
	case runcomfy.CancelNotCancellable:
		return comfygatev1.CancelOutcome_CANCEL_OUTCOME_NOT_CANCELLABLE
	default:
		return comfygatev1.CancelOutcome_CANCEL_OUTCOME_UNKNOWN
	}
}

// unrecorded is the API view of an upstream answer that is not (or could not
// be) recorded: seq 0.
func unrecorded(u state.Update) *comfygatev1.RequestState {
	return recordToProto(&state.Record{
		RequestID:      u.RequestID,
		DeploymentID:   u.DeploymentID,
		State:          u.State,
		UpstreamStatus: u.UpstreamStatus,
		QueuePosition:  u.QueuePosition,
		InstanceID:     u.InstanceID,
		Outputs:        u.Outputs,
		OutputURLs:     u.OutputURLs,
		Error:          u.Error,
		CreatedAt:      u.CreatedAt,
		StartedAt:      u.StartedAt,
		FinishedAt:     u.FinishedAt,
	})
}

// outputsStruct converts the per-node outputs to a Struct. Outputs hold file
// names, URLs and captions, not numbers that need 64 bits. A document that is not
// an object (never seen upstream) is wrapped as {"output": ...} rather than lost.
func outputsStruct(raw json.RawMessage) *structpb.Struct {
	if len(raw) == 0 {
		return nil
	}
	var s structpb.Struct
	if protojson.Unmarshal(raw, &s) == nil {
		return &s
	}
	var v structpb.Value
	if protojson.Unmarshal(raw, &v) != nil {
		return nil
	}
	return &structpb.Struct{Fields: map[string]*structpb.Value{"output": &v}}
}

func timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// recordToProto is the API view of a record.
func recordToProto(r *state.Record) *comfygatev1.RequestState {
	st := &comfygatev1.RequestState{
		RequestId:      r.RequestID,
		DeploymentId:   r.DeploymentID,
		Status:         toProtoStatus(r.State),
		UpstreamStatus: r.UpstreamStatus,
		InstanceId:     r.InstanceID,
		Outputs:        outputsStruct(r.Outputs),
		OutputUrls:     r.OutputURLs,
		CreatedAt:      timestamp(r.CreatedAt),
		StartedAt:      timestamp(r.StartedAt),
		FinishedAt:     timestamp(r.FinishedAt),
		Seq:            r.Seq,
		Epoch:          r.Epoch,
		SyncedAt:       timestamp(r.SyncedAt),
	}
	if r.QueuePosition != nil && r.State == runcomfy.StateQueued {
		p := int32(min(max(*r.QueuePosition, 0), 1<<31-1))
		st.QueuePosition = &p
	}
	if r.Error != nil {
		st.Error = &comfygatev1.RequestError{Type: r.Error.Type, Message: r.Error.Message, UpstreamCode: r.Error.Code}
	}
	return st
}
