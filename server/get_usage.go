package server

import (
	"context"
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
)

// UsageReader sums a tenant's usage; both state backends provide it.
type UsageReader interface {
	Usage(ctx context.Context, q state.UsageQuery) (state.Usage, error)
}

// defaultUsageRange is the range of a GetUsage that names no start.
const defaultUsageRange = 24 * time.Hour

// GetUsage sums the caller's usage from the hourly counters the saves
// keep: its cost grows with the hours and deployments, never with the
// number of requests.
func (s *Service) GetUsage(ctx context.Context, req *comfygatev1.GetUsageRequest) (*comfygatev1.GetUsageResponse, error) {
	if s.usage == nil {
		return nil, errNoListing
	}
	q := state.UsageQuery{Owner: tenantOf(ctx), DeploymentID: req.GetDeploymentId(), To: s.now()}
	if q.DeploymentID != "" {
		if err := validateID("deployment_id", q.DeploymentID); err != nil {
			return nil, err
		}
	}
	until, err := requestTime("end", req.GetEnd())
	if err != nil {
		return nil, err
	}
	if !until.IsZero() {
		q.To = until
	}
	q.From = q.To.Add(-defaultUsageRange)
	since, err := requestTime("start", req.GetStart())
	if err != nil {
		return nil, err
	}
	if !since.IsZero() {
		q.From = since
	}
	switch {
	case q.From.Before(earliestTime):
		return nil, &fieldError{field: "end", reason: "is less than a day after 1970: give start"}
	case !q.From.Before(q.To):
		return nil, &fieldError{field: "end", reason: "is not after start"}
	case q.To.Sub(q.From) > state.UsageRetention:
		return nil, &fieldError{field: "start", reason: fmt.Sprintf("is more than %v before end: usage is kept %v", state.UsageRetention, state.UsageRetention)}
	}
	u, err := s.usage.Usage(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("usage: %w", err)
	}
	first, end := q.Hours()
	resp := &comfygatev1.GetUsageResponse{
		Start: timestamppb.New(time.Unix(first*3600, 0)),
		End:   timestamppb.New(time.Unix(end*3600, 0)),
	}
	total := &state.DeploymentUsage{Counts: map[runcomfy.State]int64{}}
	deps := make([]string, 0, len(u))
	for dep := range u {
		deps = append(deps, dep)
	}
	slices.Sort(deps)
	for _, dep := range deps {
		d := u[dep]
		resp.Deployments = append(resp.Deployments, usageToProto(d))
		for st, n := range d.Counts {
			total.Counts[st] += n
		}
		total.Queue = mergeDist(total.Queue, d.Queue)
		total.Run = mergeDist(total.Run, d.Run)
	}
	resp.Total = usageToProto(total)
	return resp, nil
}

func mergeDist(a, b state.Dist) state.Dist {
	out := state.Dist{Count: a.Count + b.Count, SumMs: a.SumMs + b.SumMs, Bins: map[int]int64{}}
	for k, v := range a.Bins {
		out.Bins[k] += v
	}
	for k, v := range b.Bins {
		out.Bins[k] += v
	}
	return out
}

func usageToProto(d *state.DeploymentUsage) *comfygatev1.DeploymentUsage {
	stats := func(x state.Dist) *comfygatev1.DurationStats {
		return &comfygatev1.DurationStats{
			Count: x.Count, Sum: durationpb.New(time.Duration(x.SumMs) * time.Millisecond),
			P50: durationpb.New(x.Quantile(0.5)), P95: durationpb.New(x.Quantile(0.95)),
		}
	}
	return &comfygatev1.DeploymentUsage{
		DeploymentId: d.DeploymentID,
		Succeeded:    d.Counts[runcomfy.StateSucceeded],
		Failed:       d.Counts[runcomfy.StateFailed],
		Cancelled:    d.Counts[runcomfy.StateCancelled],
		Unknown:      d.Counts[runcomfy.StateUnknown],
		Queue:        stats(d.Queue),
		Run:          stats(d.Run),
	}
}
