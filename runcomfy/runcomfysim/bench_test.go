package runcomfysim_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
)

// BenchmarkSubmitAndStatus measures the simulator's own cost per request, without
// TCP, so benchmarks of the gateway can tell how much of their time it takes.
func BenchmarkSubmitAndStatus(b *testing.B) {
	sim := runcomfysim.New(runcomfysim.Options{Token: testToken, Manual: true, SubmitHistory: -1})
	defer sim.Close()
	h := sim.Handler()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req := httptest.NewRequest(http.MethodPost, "/prod/v1/deployments/d/inference", strings.NewReader(`{"overrides":{}}`))
			req.Header.Set("Authorization", "Bearer "+testToken)
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != http.StatusOK {
				b.Fatalf("submit: %d", rec.Code)
			}
			id := rec.Body.String()[strings.Index(rec.Body.String(), `"request_id":"`)+14:][:36]
			req = httptest.NewRequest(http.MethodGet, reqPath("v1", "d", id, "status"), nil)
			req.Header.Set("Authorization", "Bearer "+testToken)
			rec = httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != http.StatusOK {
				b.Fatalf("status: %d", rec.Code)
			}
		}
	})
}
