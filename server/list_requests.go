package server

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	reqstatus "github.com/comfygate/comfygate/internal/status"
	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
)

// Page sizes of ListRequests.
const (
	defaultPageSize = 50
	maxPageSize     = 500
)

// Lister lists a tenant's requests; both state backends provide it.
type Lister interface {
	List(ctx context.Context, q state.ListQuery) (state.ListPage, error)
}

// errNoListing: a service built without a Lister or a UsageReader.
var errNoListing = fmt.Errorf("listing requests and usage is not available on this gateway")

// ListRequests lists the caller's requests, newest first, from the state
// backend's indexes: no call reaches RunComfy.
func (s *Service) ListRequests(ctx context.Context, req *comfygatev1.ListRequestsRequest) (*comfygatev1.ListRequestsResponse, error) {
	if s.lister == nil {
		return nil, errNoListing
	}
	q, err := listQuery(req)
	if err != nil {
		return nil, err
	}
	q.Owner = tenantOf(ctx)
	page, err := s.lister.List(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("list requests: %w", err)
	}
	resp := &comfygatev1.ListRequestsResponse{Requests: make([]*comfygatev1.RequestState, 0, len(page.Records))}
	for _, r := range page.Records {
		resp.Requests = append(resp.Requests, recordToProto(r, s.urls))
	}
	if !page.Next.IsZero() {
		resp.NextPageToken = encodePageToken(page.Next, filterHash(req))
	}
	return resp, nil
}

// listQuery checks a ListRequestsRequest and turns it into a query (the
// owner aside).
func listQuery(req *comfygatev1.ListRequestsRequest) (state.ListQuery, error) {
	q := state.ListQuery{DeploymentID: req.GetDeploymentId(), Limit: int(req.GetPageSize())}
	if q.DeploymentID != "" {
		if err := validateID("deployment_id", q.DeploymentID); err != nil {
			return q, err
		}
	}
	switch {
	case q.Limit < 0:
		return q, &fieldError{field: "page_size", reason: "is negative"}
	case q.Limit == 0:
		q.Limit = defaultPageSize
	case q.Limit > maxPageSize:
		q.Limit = maxPageSize
	}
	for _, st := range req.GetStatuses() {
		info := reqstatus.OfProto(st)
		if st == comfygatev1.Status_STATUS_UNSPECIFIED || info.Proto != st {
			return q, &fieldError{field: "statuses", reason: fmt.Sprintf("%v is not a status", st)}
		}
		if !slices.Contains(q.States, info.State) {
			q.States = append(q.States, info.State)
		}
	}
	var err error
	if q.From, err = requestTime("created_after", req.GetCreatedAfter()); err != nil {
		return q, err
	}
	if q.To, err = requestTime("created_before", req.GetCreatedBefore()); err != nil {
		return q, err
	}
	if !q.From.IsZero() && !q.To.IsZero() && !q.From.Before(q.To) {
		return q, &fieldError{field: "created_before", reason: "is not after created_after"}
	}
	if tok := req.GetPageToken(); tok != "" {
		after, filter, err := decodePageToken(tok)
		if err != nil {
			return q, &fieldError{field: "page_token", reason: "is not a token this gateway gave"}
		}
		if filter != filterHash(req) {
			return q, &fieldError{field: "page_token", reason: "was given for other filters: send the same deployment, statuses and times as the first page"}
		}
		q.After = after
	}
	return q, nil
}

// earliestTime and latestTime bound the times a listing or usage query
// takes: no request was made before 1970, and none after 9000 (the bounds
// keep an hour's rounding inside what a Timestamp can say).
var (
	earliestTime = time.Unix(0, 0)
	latestTime   = time.Date(9000, 1, 1, 0, 0, 0, 0, time.UTC)
)

// requestTime is a filter's time: zero when t is not set, refused when it
// is not a valid time between 1970 and 9000.
func requestTime(field string, t *timestamppb.Timestamp) (time.Time, error) {
	if t == nil {
		return time.Time{}, nil
	}
	if err := t.CheckValid(); err != nil {
		return time.Time{}, &fieldError{field: field, reason: err.Error()}
	}
	at := t.AsTime()
	if at.Before(earliestTime) || at.After(latestTime) {
		return time.Time{}, &fieldError{field: field, reason: "is before 1970 or after 9000"}
	}
	return at, nil
}

// pageToken is what a page token holds: where the page ended, and which
// filters it was for. It is opaque to callers (base64url of this JSON).
type pageToken struct {
	CreatedMs int64  `json:"m"`
	ID        string `json:"i"`
	Filter    string `json:"f"`
}

func encodePageToken(c state.ListCursor, filter string) string {
	b, _ := json.Marshal(pageToken{CreatedMs: c.CreatedMs, ID: c.ID, Filter: filter}) // plain fields always encode
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodePageToken(tok string) (state.ListCursor, string, error) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return state.ListCursor{}, "", err
	}
	var p pageToken
	if err := json.Unmarshal(b, &p); err != nil {
		return state.ListCursor{}, "", err
	}
	if !runcomfy.ValidID(p.ID) {
		return state.ListCursor{}, "", fmt.Errorf("page token: bad id")
	}
	return state.ListCursor{CreatedMs: p.CreatedMs, ID: p.ID}, p.Filter, nil
}

// filterHash names a request's filters, so that a token is refused with
// other ones (the listing it continues would not be the same).
func filterHash(req *comfygatev1.ListRequestsRequest) string {
	h := fnv.New64a()
	fmt.Fprintf(h, "%s|", req.GetDeploymentId())
	sts := slices.Clone(req.GetStatuses())
	slices.Sort(sts)
	for _, st := range slices.Compact(sts) {
		fmt.Fprintf(h, "%d,", st)
	}
	for _, t := range []*timestamppb.Timestamp{req.GetCreatedAfter(), req.GetCreatedBefore()} {
		if t != nil {
			fmt.Fprintf(h, "|%d", t.AsTime().UnixMilli())
		} else {
			h.Write([]byte("|-"))
		}
	}
	return strconv.FormatUint(h.Sum64(), 36)
}
