package server_test

import (
	"cmp"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// getJSON GETs path over REST as the tenant of key (rawCall) and decodes
// the answer into out; it returns the status and the body.
func (g *gateway) getJSON(t *testing.T, key, path string, out any) (int, []byte) {
	t.Helper()
	a := g.rawCall(t.Context(), t, key, http.MethodGet, path)
	if err := json.Unmarshal(a.body, out); err != nil {
		t.Fatalf("GET %s: %d, not JSON: %s", path, a.http, a.body)
	}
	return a.http, a.body
}

// listIDs reads every page of req as the tenant of key and returns the ids.
func listIDs(t *testing.T, g *gateway, key string, req *comfygatev1.ListRequestsRequest) []string {
	t.Helper()
	ctx := ctxT(t)
	var ids []string
	for range 100 {
		resp, err := g.client.ListRequests(as(ctx, key), req)
		if err != nil {
			t.Fatalf("ListRequests(%v): %v", req, err)
		}
		for _, r := range resp.GetRequests() {
			ids = append(ids, r.GetRequestId())
		}
		if resp.GetNextPageToken() == "" {
			return ids
		}
		req.PageToken = resp.GetNextPageToken()
	}
	t.Fatal("the listing did not end")
	return nil
}

// TestListRequests: a tenant lists its own requests, newest first, by
// deployment and status, in pages; another tenant's never appear; REST
// serves the same on both routes.
func TestListRequests(t *testing.T) {
	g := startGateway(t, withKeys(t))
	ctx := ctxT(t)
	var states []*comfygatev1.RequestState
	for i := range 7 {
		dep := []string{"dep-1", "dep-2"}[i%2]
		sub, err := g.client.Submit(as(ctx, keyA), &comfygatev1.SubmitRequest{DeploymentId: dep, InputJson: `{}`})
		if err != nil {
			t.Fatal(err)
		}
		states = append(states, sub.GetRequest())
	}
	// Newest first: by creation (ms), then by id, both descending.
	slices.SortFunc(states, func(a, b *comfygatev1.RequestState) int {
		if c := cmp.Compare(b.GetCreatedAt().AsTime().UnixMilli(), a.GetCreatedAt().AsTime().UnixMilli()); c != 0 {
			return c
		}
		return cmp.Compare(b.GetRequestId(), a.GetRequestId())
	})
	var mine, dep1 []string
	for _, st := range states {
		mine = append(mine, st.GetRequestId())
		if st.GetDeploymentId() == "dep-1" {
			dep1 = append(dep1, st.GetRequestId())
		}
	}
	theirs := g.submitAs(ctx, t, keyB)
	// One of A's finishes.
	done := dep1[1] // on dep-1, as stepAs reads
	g.stepAs(ctx, t, keyA, done)
	g.stepAs(ctx, t, keyA, done)

	if got := listIDs(t, g, keyA, &comfygatev1.ListRequestsRequest{PageSize: 2}); !slices.Equal(got, mine) {
		t.Errorf("A's requests in pages of 2: %v, want %v", got, mine)
	}
	if got := listIDs(t, g, keyB, &comfygatev1.ListRequestsRequest{}); !slices.Equal(got, []string{theirs}) {
		t.Errorf("B's requests: %v, want only [%s]", got, theirs)
	}
	if got := listIDs(t, g, keyA, &comfygatev1.ListRequestsRequest{DeploymentId: "dep-1", PageSize: 3}); !slices.Equal(got, dep1) {
		t.Errorf("A's requests on dep-1: %v, want %v", got, dep1)
	}
	if got := listIDs(t, g, keyA, &comfygatev1.ListRequestsRequest{Statuses: []comfygatev1.Status{comfygatev1.Status_STATUS_SUCCEEDED}}); !slices.Equal(got, []string{done}) {
		t.Errorf("A's succeeded requests: %v, want [%s]", got, done)
	}
	queued := slices.DeleteFunc(slices.Clone(mine), func(id string) bool { return id == done })
	if got := listIDs(t, g, keyA, &comfygatev1.ListRequestsRequest{Statuses: []comfygatev1.Status{comfygatev1.Status_STATUS_QUEUED, comfygatev1.Status_STATUS_RUNNING}}); !slices.Equal(got, queued) {
		t.Errorf("A's unfinished requests: %v, want %v", got, queued)
	}
	future := timestamppb.New(time.Now().Add(time.Hour))
	if got := listIDs(t, g, keyA, &comfygatev1.ListRequestsRequest{CreatedAfter: future}); len(got) != 0 {
		t.Errorf("A's requests created in the future: %v", got)
	}

	// REST: both routes, with the query parameters.
	for _, tc := range []struct {
		path string
		want []string
	}{
		{"/v1/requests?page_size=50", mine},
		{"/v1/deployments/dep-1/requests", dep1},
		{"/v1/requests?statuses=STATUS_SUCCEEDED", []string{done}},
	} {
		var page struct {
			Requests []struct {
				RequestID string `json:"request_id"`
			} `json:"requests"`
			NextPageToken string `json:"next_page_token"`
		}
		if code, body := g.getJSON(t, keyA, tc.path, &page); code != http.StatusOK {
			t.Fatalf("GET %s: %d %s", tc.path, code, body)
		}
		var got []string
		for _, r := range page.Requests {
			got = append(got, r.RequestID)
		}
		if !slices.Equal(got, tc.want) || page.NextPageToken != "" {
			t.Errorf("GET %s: %v (next %q), want %v", tc.path, got, page.NextPageToken, tc.want)
		}
	}
}

// TestListRequestsRefuses: bad filters and tokens are INVALID_ARGUMENT,
// naming the field, and a call without a key is UNAUTHENTICATED.
func TestListRequestsRefuses(t *testing.T) {
	g := startGateway(t, withKeys(t))
	ctx := ctxT(t)
	for range 3 {
		g.submitAs(ctx, t, keyA)
	}
	first, err := g.client.ListRequests(as(ctx, keyA), &comfygatev1.ListRequestsRequest{PageSize: 1})
	if err != nil || first.GetNextPageToken() == "" {
		t.Fatalf("first page: %v, %v", first, err)
	}
	now := timestamppb.Now()
	for _, tc := range []struct {
		name  string
		req   *comfygatev1.ListRequestsRequest
		field string
	}{
		{"malformed deployment", &comfygatev1.ListRequestsRequest{DeploymentId: "dep/1"}, "deployment_id"},
		{"negative page size", &comfygatev1.ListRequestsRequest{PageSize: -1}, "page_size"},
		{"unspecified status", &comfygatev1.ListRequestsRequest{Statuses: []comfygatev1.Status{0}}, "statuses"},
		{"unknown status number", &comfygatev1.ListRequestsRequest{Statuses: []comfygatev1.Status{42}}, "statuses"},
		{"empty range", &comfygatev1.ListRequestsRequest{CreatedAfter: now, CreatedBefore: now}, "created_before"},
		{"invalid time", &comfygatev1.ListRequestsRequest{CreatedAfter: &timestamppb.Timestamp{Nanos: -1}}, "created_after"},
		{"garbage token", &comfygatev1.ListRequestsRequest{PageToken: "not a token"}, "page_token"},
		{"the first of all times", &comfygatev1.ListRequestsRequest{CreatedBefore: timestamppb.New(time.Time{})}, "created_before"},
		{"after 9000", &comfygatev1.ListRequestsRequest{CreatedAfter: timestamppb.New(time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC))}, "created_after"},
		{"token of other filters", &comfygatev1.ListRequestsRequest{PageToken: first.GetNextPageToken(), DeploymentId: "dep-2"}, "page_token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := g.client.ListRequests(as(ctx, keyA), tc.req)
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), tc.field) {
				t.Errorf("ListRequests = %v, want INVALID_ARGUMENT about %s", err, tc.field)
			}
		})
	}
	if _, err := g.client.ListRequests(ctx, &comfygatev1.ListRequestsRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("without a key: %v", err)
	}
	// A page size over the maximum is read as the maximum.
	if resp, err := g.client.ListRequests(as(ctx, keyA), &comfygatev1.ListRequestsRequest{PageSize: 100000}); err != nil || len(resp.GetRequests()) != 3 {
		t.Errorf("page size 100000: %v, %v", resp, err)
	}
}
