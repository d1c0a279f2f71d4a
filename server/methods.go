package server

import (
	"fmt"
	"io"
	"net/http"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// allowedMethods are the methods an API path takes (http.yaml, and the
// routes of sse.go and upload.go), as the Allow header lists them, or ""
// for a path that is not one of the API's: that is grpc-gateway's to answer
// (404).
func allowedMethods(path string) string {
	switch path {
	case "/v1/requests":
		return http.MethodGet // ListRequests
	case "/v1/usage":
		return http.MethodGet // GetUsage
	case uploadsPath:
		return http.MethodPost // Upload
	}
	rest, ok := strings.CutPrefix(path, "/v1/deployments/")
	if !ok {
		return ""
	}
	seg := strings.Split(rest, "/")
	for _, s := range seg {
		if s == "" {
			return ""
		}
	}
	switch {
	case len(seg) == 2 && seg[1] == "requests":
		return http.MethodGet + ", " + http.MethodPost // ListRequests, Submit
	case len(seg) == 3 && seg[1] == "requests" && strings.HasSuffix(seg[2], ":cancel"):
		return http.MethodPost // Cancel
	case len(seg) == 3 && seg[1] == "requests":
		return http.MethodGet // GetStatus, and WatchRequest as ":watch"
	case len(seg) == 4 && seg[1] == "requests" && (seg[3] == "result" || seg[3] == "events" || seg[3] == "deliveries"):
		return http.MethodGet // GetResult, WatchRequest as Server-Sent Events, ListDeliveries
	case len(seg) == 5 && seg[1] == "requests" && seg[3] == "deliveries" && strings.HasSuffix(seg[4], ":redeliver"):
		return http.MethodPost // RedeliverEvent
	}
	return ""
}

// allows reports whether the Allow list allow has method.
func allows(allow, method string) bool {
	for m := range strings.SplitSeq(allow, ", ") {
		if m == method {
			return true
		}
	}
	return false
}

// restMethods answers a call to an API path with a method the path does not
// take: 405 with the Allow header (RFC 9110), where grpc-gateway would say
// 501 or, for GET on a ":cancel" path, read it as a malformed request id.
func restMethods(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		allow := allowedMethods(r.URL.Path)
		if allow == "" || allows(allow, r.Method) {
			next.ServeHTTP(w, r)
			return
		}
		w.Header().Set("Allow", allow)
		w.Header().Set("Content-Type", "application/json")
		if hasBody(r) {
			w.Header().Set("Connection", "close")
		}
		w.WriteHeader(http.StatusMethodNotAllowed)
		st := status.New(codes.Unimplemented, fmt.Sprintf("method %s is not allowed on this path; it takes %s", r.Method, allow))
		_, _ = w.Write(statusJSON(st))
	})
}

// limitOtherBodies refuses, with 413, a body over maxBody sent to a route
// that takes none (health, metrics, the OpenAPI document): the API routes
// and the callbacks bound their bodies themselves, after authentication. A
// GET's body sent in chunks is read (never kept) up to the limit, and over
// it refused the same way.
func limitOtherBodies(next http.Handler, maxBody int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v1/") || strings.HasPrefix(r.URL.Path, "/webhooks/") || !hasBody(r) {
			next.ServeHTTP(w, r)
			return
		}
		tooLarge := r.ContentLength > maxBody
		if !tooLarge && r.ContentLength < 0 && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
			n, _ := io.CopyN(io.Discard, r.Body, maxBody+1)
			tooLarge = n > maxBody
			r.Body = http.NoBody
		}
		if tooLarge {
			w.Header().Set("Connection", "close")
			writePlain(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body is larger than %d bytes", maxBody))
			return
		}
		next.ServeHTTP(w, r)
	})
}
