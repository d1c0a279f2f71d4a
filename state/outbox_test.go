package state

import (
	"strings"
	"testing"

	"github.com/comfygate/comfygate/runcomfy"
)

func TestParseEventKinds(t *testing.T) {
	tests := []struct {
		in      []string
		want    EventKind
		wantErr string
	}{
		{nil, KindTerminal, ""},
		{[]string{"queued"}, KindQueued, ""},
		{[]string{"Running", " output ", "TERMINAL"}, KindRunning | KindOutput | KindTerminal, ""},
		{[]string{"queued", "queued"}, 0, "twice"},
		{[]string{"finished"}, 0, "unknown event"},
		{[]string{""}, 0, "unknown event"},
	}
	for _, tt := range tests {
		got, err := ParseEventKinds(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseEventKinds(%q) = %v, %v; want error %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseEventKinds(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
	if got := (KindQueued | KindTerminal).Names(); strings.Join(got, ",") != "queued,terminal" {
		t.Errorf("Names = %v", got)
	}
}

func TestEventFor(t *testing.T) {
	all := []WebhookTarget{{URL: "https://a", Kinds: KindQueued | KindRunning | KindOutput | KindTerminal}, {URL: "https://t", Kinds: KindTerminal}, {URL: "https://o", Kinds: KindOutput}}
	rec := func(st runcomfy.State, outputs string, hooks []WebhookTarget) *Record {
		r := &Record{RequestID: "r1", State: st, Seq: 2, Epoch: 5, Owner: "team", Webhooks: hooks}
		if outputs != "" {
			r.Outputs = []byte(outputs)
		}
		return r
	}
	tests := []struct {
		name        string
		prev, next  *Record
		wantType    string // "" for no event
		wantTargets string
	}{
		{"created queued", nil, rec(runcomfy.StateQueued, "", all), "request.queued", "https://a"},
		{"queue position only", rec(runcomfy.StateQueued, "", all), rec(runcomfy.StateQueued, "", all), "", ""},
		{"running", rec(runcomfy.StateQueued, "", all), rec(runcomfy.StateRunning, "", all), "request.running", "https://a"},
		{"success with outputs", rec(runcomfy.StateRunning, "", all), rec(runcomfy.StateSucceeded, `{"1":{}}`, all), "request.succeeded", "https://a,https://t,https://o"},
		{"failed", rec(runcomfy.StateRunning, "", all), rec(runcomfy.StateFailed, "", all), "request.failed", "https://a,https://t"},
		{"cancelled", rec(runcomfy.StateQueued, "", all), rec(runcomfy.StateCancelled, "", all), "request.cancelled", "https://a,https://t"},
		{"outputs while running", rec(runcomfy.StateRunning, "", all), rec(runcomfy.StateRunning, `{"1":{}}`, all), "request.output", "https://a,https://o"},
		{"no target asked", rec(runcomfy.StateQueued, "", all[1:2]), rec(runcomfy.StateRunning, "", all[1:2]), "", ""},
		{"no webhooks", nil, rec(runcomfy.StateQueued, "", nil), "", ""},
		{"targets gained after the end", rec(runcomfy.StateSucceeded, `{"1":{}}`, nil), rec(runcomfy.StateSucceeded, `{"1":{}}`, all[1:2]), "request.succeeded", "https://t"},
		{"same URL twice is sent once", nil, rec(runcomfy.StateQueued, "", []WebhookTarget{{URL: "https://a", Kinds: KindQueued}, {URL: "https://a", Kinds: KindQueued | KindTerminal}}), "request.queued", "https://a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := EventFor(tt.prev, tt.next)
			if tt.wantType == "" {
				if ev != nil {
					t.Fatalf("event %+v, want none", ev)
				}
				return
			}
			if ev == nil {
				t.Fatal("no event")
			}
			if ev.Type != tt.wantType || strings.Join(ev.Targets, ",") != tt.wantTargets {
				t.Errorf("event %s to %v, want %s to %s", ev.Type, ev.Targets, tt.wantType, tt.wantTargets)
			}
			if ev.ID != EventID("r1", 5, 2) || ev.Owner != "team" || ev.Seq != 2 || ev.Epoch != 5 || ev.Record == tt.next {
				t.Errorf("event %+v: id, owner, position or a shared record", ev)
			}
		})
	}
}

func TestEventIDIsStableAndDistinct(t *testing.T) {
	a := EventID("r1", 5, 2)
	if a != EventID("r1", 5, 2) || !strings.HasPrefix(a, "msg_") || len(a) != 4+26 {
		t.Fatalf("EventID = %q", a)
	}
	for _, other := range []string{EventID("r1", 5, 3), EventID("r1", 6, 2), EventID("r2", 5, 2), EventID("r15", 2, 2)} {
		if other == a {
			t.Fatalf("EventID collision: %q", a)
		}
	}
}
