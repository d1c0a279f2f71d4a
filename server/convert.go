package server

import (
	"encoding/json"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"
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
	}, nil)
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

// ObjectURLs gives callers a URL for a stored output: presigned for a
// while, or under the bucket's public base (expires zero).
type ObjectURLs interface {
	ObjectURL(key string) (url string, expires time.Time, err error)
}

// recordToProto is the API view of a record; urls, when set, signs the
// stored outputs' URLs.
func recordToProto(r *state.Record, urls ObjectURLs) *comfygatev1.RequestState {
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
	st.Storage = storageToProto(r.Storage, urls)
	st.QueuedAt = st.CreatedAt
	if d, ok := queueDuration(r); ok {
		st.QueueDuration = durationpb.New(d)
	}
	if !r.StartedAt.IsZero() && !r.FinishedAt.IsZero() {
		st.RunDuration = durationpb.New(max(r.FinishedAt.Sub(r.StartedAt), 0))
	}
	if r.MaxQueue > 0 {
		st.MaxQueueDuration = durationpb.New(r.MaxQueue)
	}
	if r.MaxRun > 0 {
		st.MaxRunDuration = durationpb.New(r.MaxRun)
	}
	if at, kind := r.Deadline(); kind != "" {
		st.Deadline = timestamppb.New(at)
	}
	st.Cancelling = !r.Terminal() && (r.Cancelling || r.Expired != "")
	return st
}

// queueDuration is how long r waited for an instance: until it started, or
// until it ended without starting. Clocks of RunComfy and the gateway may
// disagree by a little: a negative wait is none.
func queueDuration(r *state.Record) (time.Duration, bool) {
	switch {
	case r.CreatedAt.IsZero():
		return 0, false
	case !r.StartedAt.IsZero():
		return max(r.StartedAt.Sub(r.CreatedAt), 0), true
	case !r.FinishedAt.IsZero():
		return max(r.FinishedAt.Sub(r.CreatedAt), 0), true
	}
	return 0, false
}

var storageStates = map[state.StorageState]comfygatev1.StorageState{
	state.StoragePending: comfygatev1.StorageState_STORAGE_STATE_PENDING,
	state.StorageStored:  comfygatev1.StorageState_STORAGE_STATE_STORED,
	state.StorageFailed:  comfygatev1.StorageState_STORAGE_STATE_FAILED,
}

// storageToProto is the API view of the copy of the outputs. A URL that
// cannot be signed is left out: the object is there, and the next read
// signs it again.
func storageToProto(s *state.Storage, urls ObjectURLs) *comfygatev1.OutputStorage {
	if s == nil {
		return nil
	}
	out := &comfygatev1.OutputStorage{State: storageStates[s.State], Error: s.Error, Attempts: int32(min(s.Attempts, 1<<31-1))}
	for _, o := range s.Objects {
		so := &comfygatev1.StoredOutput{Node: o.Node, File: o.File, Key: o.Key, Size: o.Size, ContentType: o.ContentType, Sha256: o.SHA256}
		if urls != nil {
			if u, exp, err := urls.ObjectURL(o.Key); err == nil {
				so.Url, so.UrlExpiresAt = u, timestamp(exp)
			}
		}
		out.Objects = append(out.Objects, so)
	}
	return out
}
