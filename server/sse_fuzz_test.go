package server

import (
	"net/http"
	"net/http/httptest"
	"testing"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// FuzzResumePosition: a Last-Event-ID is refused or read as a position of
// whole numbers and a status; an id the stream wrote for that position and
// status reads back as the same.
func FuzzResumePosition(f *testing.F) {
	for _, s := range []string{"", "0", "7", "1-0", "12-3", "12-3-running", "12-3-succeeded", "12-3-unknown", "12-3-", "12-3-done",
		"-1", "1--2", "+1-2", "1-+2", "a-1", "1-2-3", "1-2-running-x", "99999999999999999999-1", " 5-6-queued "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		req.Header.Set("Last-Event-ID", id)
		if req.Header.Get("Last-Event-ID") != id {
			t.Skip("not a header value")
		}
		pos, seen, err := resumePosition(req)
		if err != nil {
			return
		}
		if pos.Epoch < 0 || pos.Seq < 0 {
			t.Fatalf("%q read as %+v", id, pos)
		}
		if _, ok := comfygatev1.Status_name[int32(seen)]; !ok {
			t.Fatalf("%q read as status %d", id, seen)
		}
		if pos.Epoch == 0 && seen != comfygatev1.Status_STATUS_UNSPECIFIED {
			return // "0-<seq>-<status>" is taken, but the stream never writes one
		}
		again := httptest.NewRequest(http.MethodGet, "/", nil)
		st := seen
		if st == comfygatev1.Status_STATUS_UNSPECIFIED {
			st = comfygatev1.Status_STATUS_QUEUED
		}
		written := eventID(pos, st)
		again.Header.Set("Last-Event-ID", written)
		pos2, seen2, err := resumePosition(again)
		if err != nil {
			t.Fatalf("%q (written for %+v %v) refused: %v", written, pos, st, err)
		}
		wantSeen := st
		if pos.Epoch == 0 {
			wantSeen = comfygatev1.Status_STATUS_UNSPECIFIED // a bare seq carries no status
		}
		if pos2 != pos || seen2 != wantSeen {
			t.Fatalf("%q read back as %+v %v, want %+v %v", written, pos2, seen2, pos, wantSeen)
		}
	})
}
