package runcomfy_test

import (
	"context"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/comfygate/comfygate/runcomfy"
)

func utc(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return t.UTC()
}

// resultView is the part of a ResultResponse a case pins; Outputs is compared as a
// JSON value, since it is kept raw.
type resultView struct {
	RequestID  string
	Status     string
	State      runcomfy.State
	HasOutputs bool
	OutputURLs []string
	Error      *runcomfy.JobError
	InstanceID string
	CreatedAt  time.Time
	StartedAt  time.Time
	FinishedAt time.Time
}

func viewOf(r *runcomfy.ResultResponse) resultView {
	return resultView{
		RequestID:  r.RequestID,
		Status:     r.Status,
		State:      r.State,
		HasOutputs: r.Outputs != nil,
		OutputURLs: r.OutputURLs,
		Error:      r.Error,
		InstanceID: r.InstanceID,
		CreatedAt:  r.CreatedAt,
		StartedAt:  r.StartedAt,
		FinishedAt: r.FinishedAt,
	}
}

type resultCase struct {
	name string
	body string
	want resultView
	// wantOutputs, when set, is the outputs document Outputs must equal as JSON.
	wantOutputs string
}

func resultCases(t *testing.T) []resultCase {
	const storage = "https://serverless-api-storage.runcomfy.net/deployment_requests/{request_id}/output/ComfyUI_00010_.png"
	return []resultCase{
		{
			name: "fixture 01 in_queue has no status",
			body: string(fixture(t, "01_in_queue.json")),
			want: resultView{RequestID: "{request_id}", State: runcomfy.StateUnknown},
		},
		{
			name: "fixture 02 in_progress",
			body: string(fixture(t, "02_in_progress.json")),
			want: resultView{
				RequestID: "{request_id}", Status: "in_progress", State: runcomfy.StateRunning, InstanceID: "{instance_id}",
				CreatedAt: utc("2025-11-18T10:00:00Z"), StartedAt: utc("2025-11-18T10:01:00Z"),
			},
		},
		{
			name: "fixture 03 callback output singular with bare URLs",
			body: string(fixture(t, "03_succeeded.json")),
			want: resultView{
				RequestID: "{request_id}", Status: "succeeded", State: runcomfy.StateSucceeded, InstanceID: "{instance_id}",
				HasOutputs: true, OutputURLs: []string{"https://example.com/output-1.png", "https://example.com/output-2.png"},
				CreatedAt: utc("2025-11-18T10:00:00Z"), StartedAt: utc("2025-11-18T10:01:12Z"), FinishedAt: utc("2025-11-18T10:08:30Z"),
			},
			wantOutputs: `{"images":["https://example.com/output-1.png","https://example.com/output-2.png"]}`,
		},
		{
			name: "fixture 04 seed-style error object",
			body: string(fixture(t, "04_failed.json")),
			want: resultView{
				RequestID: "{request_id}", Status: "failed", State: runcomfy.StateFailed, InstanceID: "{instance_id}",
				Error: &runcomfy.JobError{
					Type:    "ExampleErrorType",
					Message: "This is an example error message explaining the failure.",
					Code:    "12345",
				},
				CreatedAt: utc("2025-11-18T10:00:00Z"), StartedAt: utc("2025-11-18T10:01:12Z"), FinishedAt: utc("2025-11-18T10:08:30Z"),
			},
		},
		{
			name: "fixture 05 outputs by node, composite id, text channel",
			body: string(fixture(t, "05_result_outputs_by_node.json")),
			want: resultView{
				Status: "succeeded", State: runcomfy.StateSucceeded,
				HasOutputs: true, OutputURLs: []string{storage},
				CreatedAt:  time.Date(2025, 7, 1, 12, 0, 0, 123456000, time.UTC),
				FinishedAt: time.Date(2025, 7, 1, 12, 1, 10, 654321000, time.UTC),
			},
			wantOutputs: `{"58":{"images":[{"filename":"ComfyUI_00010_.png","subfolder":"","type":"output","url":"` + storage + `"}]},"38:42":{"text":[["a caption"]]}}`,
		},
		{
			name: "outputs in document order across nodes and channels",
			body: `{"status":"succeeded","outputs":{
				"9":{"images":[{"url":"https://c/9a.png","filename":"https://not-a-url-field/9a.png"},{"url":"https://c/9b.png"}]},
				"10":{"gifs":[{"url":"https://c/10.gif","format":"image/gif"}],"text":["https://looks-like-a-url-but-is-text"]},
				"2":{"video":[{"type":"output","url":"https://c/2.mp4"}],"text":["a caption", "http://c/caption-url"]}}}`,
			want: resultView{
				Status: "succeeded", State: runcomfy.StateSucceeded, HasOutputs: true,
				OutputURLs: []string{"https://c/9a.png", "https://c/9b.png", "https://c/10.gif", "https://looks-like-a-url-but-is-text", "https://c/2.mp4", "http://c/caption-url"},
			},
		},
		{
			name: "text channel with plain strings collects nothing",
			body: `{"status":"succeeded","outputs":{"7":{"text":["hello", ["nested", "ftp://x"]], "numbers":[1, 2.5, true, null]}}}`,
			want: resultView{Status: "succeeded", State: runcomfy.StateSucceeded, HasOutputs: true},
		},
		{
			name: "empty url skipped",
			body: `{"status":"succeeded","outputs":{"7":{"images":[{"url":""},{"url":"https://c/x.png"},{"url":null},{"url":5}]}}}`,
			want: resultView{Status: "succeeded", State: runcomfy.StateSucceeded, HasOutputs: true, OutputURLs: []string{"https://c/x.png"}},
		},
		{
			name: "outputs wins over output",
			body: `{"status":"succeeded","outputs":{"1":{"images":["https://c/outputs.png"]}},"output":{"images":["https://c/output.png"]}}`,
			want: resultView{Status: "succeeded", State: runcomfy.StateSucceeded, HasOutputs: true, OutputURLs: []string{"https://c/outputs.png"}},
		},
		{
			name: "outputs null falls back to output",
			body: `{"status":"succeeded","outputs":null,"output":{"images":["https://c/output.png"]}}`,
			want: resultView{Status: "succeeded", State: runcomfy.StateSucceeded, HasOutputs: true, OutputURLs: []string{"https://c/output.png"}},
		},
		{
			// Empty or scalar outputs name none: the success is then
			// completed from /result, and a later answer that has them
			// fills them in.
			name: "outputs empty object",
			body: `{"status":"succeeded","outputs":{ }}`,
			want: resultView{Status: "succeeded", State: runcomfy.StateSucceeded},
		},
		{
			name: "outputs empty list, a number, a string",
			body: `{"status":"succeeded","outputs":[],"output":5}`,
			want: resultView{Status: "succeeded", State: runcomfy.StateSucceeded},
		},
		{
			name: "empty outputs, output with content",
			body: `{"status":"succeeded","outputs":{},"output":{"images":["https://c/1.png"]}}`,
			want: resultView{Status: "succeeded", State: runcomfy.StateSucceeded, HasOutputs: true, OutputURLs: []string{"https://c/1.png"}},
		},
		{
			name: "text outputs only",
			body: `{"status":"succeeded","outputs":{"9":{"text":["a caption"]}}}`,
			want: resultView{Status: "succeeded", State: runcomfy.StateSucceeded, HasOutputs: true},
		},
		{
			name: "error object type/message",
			body: `{"status":"failed","error":{"type":"OutOfMemoryError","message":"CUDA out of memory"}}`,
			want: resultView{Status: "failed", State: runcomfy.StateFailed, Error: &runcomfy.JobError{Type: "OutOfMemoryError", Message: "CUDA out of memory"}},
		},
		{
			name: "error object with string code",
			body: `{"status":"failed","error":{"error":"ValueError","details":"bad seed","debugInfo":"trace","errorCode":"E42"}}`,
			want: resultView{Status: "failed", State: runcomfy.StateFailed, Error: &runcomfy.JobError{Type: "ValueError", Message: "bad seed", Code: "E42"}},
		},
		{
			name: "error array joins messages, first type wins",
			body: `{"status":"failed","error":[{"type":"NodeError","message":"node 9 failed"},{"error":"Other","details":"then node 10"}]}`,
			want: resultView{Status: "failed", State: runcomfy.StateFailed, Error: &runcomfy.JobError{Type: "NodeError", Message: "node 9 failed; then node 10"}},
		},
		{
			name: "error array of one",
			body: `{"status":"failed","error":[{"type":"T","message":"m","code":7}]}`,
			want: resultView{Status: "failed", State: runcomfy.StateFailed, Error: &runcomfy.JobError{Type: "T", Message: "m", Code: "7"}},
		},
		{
			name: "error array with nulls and strings",
			body: `{"status":"failed","error":[null,"first words",{"message":"second"}]}`,
			want: resultView{Status: "failed", State: runcomfy.StateFailed, Error: &runcomfy.JobError{Message: "first words; second"}},
		},
		{
			name: "error empty array",
			body: `{"status":"failed","error":[]}`,
			want: resultView{Status: "failed", State: runcomfy.StateFailed},
		},
		{
			name: "error as string",
			body: `{"status":"failed","error":"Workflow validation failed"}`,
			want: resultView{Status: "failed", State: runcomfy.StateFailed, Error: &runcomfy.JobError{Message: "Workflow validation failed"}},
		},
		{
			name: "error null",
			body: `{"status":"succeeded","error":null}`,
			want: resultView{Status: "succeeded", State: runcomfy.StateSucceeded},
		},
		{
			name: "error empty string",
			body: `{"status":"succeeded","error":""}`,
			want: resultView{Status: "succeeded", State: runcomfy.StateSucceeded},
		},
		{
			name: "error object of unknown shape kept as text",
			body: `{"status":"failed","error":{"reason":"gpu lost"}}`,
			want: resultView{Status: "failed", State: runcomfy.StateFailed, Error: &runcomfy.JobError{Message: `{"reason":"gpu lost"}`}},
		},
		{
			name: "status via outcome",
			body: `{"request_id":"req-7","outcome":"succeeded","outputs":{"1":{"images":[{"url":"https://c/1.png"}]}}}`,
			want: resultView{RequestID: "req-7", Status: "succeeded", State: runcomfy.StateSucceeded, HasOutputs: true, OutputURLs: []string{"https://c/1.png"}},
		},
		{
			name: "status wins over outcome",
			body: `{"status":"in_progress","outcome":"failed"}`,
			want: resultView{Status: "in_progress", State: runcomfy.StateRunning},
		},
		{
			name: "status completed",
			body: `{"status":"completed"}`,
			want: resultView{Status: "completed", State: runcomfy.StateSucceeded},
		},
		{
			name: "status upper case",
			body: `{"status":"SUCCEEDED"}`,
			want: resultView{Status: "SUCCEEDED", State: runcomfy.StateSucceeded},
		},
		{
			name: "status canceled",
			body: `{"status":"canceled"}`,
			want: resultView{Status: "canceled", State: runcomfy.StateCancelled},
		},
		{
			name: "status cancelled",
			body: `{"status":"Cancelled"}`,
			want: resultView{Status: "Cancelled", State: runcomfy.StateCancelled},
		},
		{
			name: "status unknown kept raw",
			body: `{"status":"paused_by_operator"}`,
			want: resultView{Status: "paused_by_operator", State: runcomfy.StateUnknown},
		},
		{
			name: "timestamps: microseconds and +00:00, Z, no zone",
			body: `{"status":"succeeded","created_at":"2025-07-01T12:00:00.123456+00:00","started_at":"2025-07-01T12:00:05Z","finished_at":"2025-07-01T12:01:10.654321"}`,
			want: resultView{
				Status: "succeeded", State: runcomfy.StateSucceeded,
				CreatedAt:  time.Date(2025, 7, 1, 12, 0, 0, 123456000, time.UTC),
				StartedAt:  time.Date(2025, 7, 1, 12, 0, 5, 0, time.UTC),
				FinishedAt: time.Date(2025, 7, 1, 12, 1, 10, 654321000, time.UTC),
			},
		},
		{
			name: "timestamps: other offset, space separator, no fraction without zone",
			body: `{"status":"succeeded","created_at":"2025-07-01T14:00:00.5+02:00","started_at":"2025-07-01 12:00:05.25","finished_at":"2025-07-01T12:01:10"}`,
			want: resultView{
				Status: "succeeded", State: runcomfy.StateSucceeded,
				CreatedAt:  time.Date(2025, 7, 1, 12, 0, 0, 500000000, time.UTC),
				StartedAt:  time.Date(2025, 7, 1, 12, 0, 5, 250000000, time.UTC),
				FinishedAt: time.Date(2025, 7, 1, 12, 1, 10, 0, time.UTC),
			},
		},
		{
			name: "timestamps: unreadable or empty give zero",
			body: `{"status":"succeeded","created_at":"yesterday","started_at":"","finished_at":null}`,
			want: resultView{Status: "succeeded", State: runcomfy.StateSucceeded},
		},
		{
			name: "timestamps: unix seconds in a string",
			body: `{"status":"succeeded","created_at":"1751371200"}`,
			want: resultView{Status: "succeeded", State: runcomfy.StateSucceeded, CreatedAt: time.Date(2025, 7, 1, 12, 0, 0, 0, time.UTC)},
		},
		{
			// Parse loosely: a field of an unexpected type is dropped, not fatal.
			name: "wrongly typed known fields are dropped",
			body: `{"status":"succeeded","request_id":12,"created_at":1751371200,"instance_id":{"id":"i"},"outputs":{"1":{"images":["https://c/1.png"]}}}`,
			want: resultView{Status: "succeeded", State: runcomfy.StateSucceeded, HasOutputs: true, OutputURLs: []string{"https://c/1.png"}},
		},
		{
			name: "unknown fields ignored",
			body: `{"status":"succeeded","deployment_id":"dep","progress":{"node":"9","value":0.5},"queue_position":null}`,
			want: resultView{Status: "succeeded", State: runcomfy.StateSucceeded},
		},
	}
}

// TestParseResult runs every variant through ParseResult directly and through
// Client.Result over a real connection: both paths must agree.
func TestParseResult(t *testing.T) {
	for _, tt := range resultCases(t) {
		t.Run(tt.name, func(t *testing.T) {
			got, err := runcomfy.ParseResult([]byte(tt.body))
			if err != nil {
				t.Fatalf("ParseResult: %v", err)
			}
			if !reflect.DeepEqual(viewOf(got), tt.want) {
				t.Errorf("ParseResult() =\n%+v\nwant\n%+v", viewOf(got), tt.want)
			}
			if tt.wantOutputs != "" && !jsonEqual(t, got.Outputs, []byte(tt.wantOutputs)) {
				t.Errorf("Outputs = %s, want %s", got.Outputs, tt.wantOutputs)
			}

			u := newUpstream(t, always(answer{body: tt.body}))
			c := newClient(t, u.URL, nil)
			// Asked for the request the answer is about (an answer about
			// another is refused: TestAnswerAboutAnotherRequest).
			want := tt.want
			if want.RequestID == "" {
				want.RequestID = "req-1" // the client fills in the id it asked for
			}
			viaClient, err := c.Result(context.Background(), "dep-1", want.RequestID)
			if err != nil {
				t.Fatalf("Result: %v", err)
			}
			if !reflect.DeepEqual(viewOf(viaClient), want) {
				t.Errorf("Result() =\n%+v\nwant\n%+v", viewOf(viaClient), want)
			}
		})
	}
}

// TestResultFixture05Nodes pins that node ids, composite ones included, survive in
// Outputs untouched, channel by channel.
func TestResultFixture05Nodes(t *testing.T) {
	got, err := runcomfy.ParseResult(fixture(t, "05_result_outputs_by_node.json"))
	if err != nil {
		t.Fatalf("ParseResult: %v", err)
	}
	var nodes map[string]map[string]json.RawMessage
	if err := json.Unmarshal(got.Outputs, &nodes); err != nil {
		t.Fatalf("Outputs is not a node map: %v", err)
	}
	text, ok := nodes["38:42"]["text"]
	if !ok {
		t.Fatalf("Outputs = %s, want node \"38:42\" with a text channel", got.Outputs)
	}
	if !jsonEqual(t, text, []byte(`[["a caption"]]`)) {
		t.Errorf("38:42 text = %s, want %s", text, `[["a caption"]]`)
	}
	if _, ok := nodes["58"]["images"]; !ok {
		t.Errorf("Outputs = %s, want node \"58\" with an images channel", got.Outputs)
	}
}

func TestParseResultRejects(t *testing.T) {
	tests := []struct {
		name string
		body string
	}{
		{"empty", ``},
		{"spaces", "  \n\t"},
		{"null", `null`},
		{"array", `[{"status":"succeeded"}]`},
		{"string", `"succeeded"`},
		{"number", `42`},
		{"truncated", `{"status":"succeeded","outputs":{`},
		{"trailing garbage", `{"status":"succeeded"} x`},
		{"second object", `{"status":"succeeded"}{"status":"failed"}`},
		{"trailing brace", `{"status":"succeeded"}}`},
		{"trailing bracket", `{"status":"succeeded"}]`},
		{"html", `<html>502</html>`},
		{"not JSON inside", `{status: succeeded}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := runcomfy.ParseResult([]byte(tt.body))
			if err == nil {
				t.Errorf("ParseResult(%q) = %+v, want an error", tt.body, got)
			}
		})
	}

	// Through the client a body that is no object is an upstream failure.
	for _, tt := range tests[2:] {
		t.Run("client/"+tt.name, func(t *testing.T) {
			u := newUpstream(t, always(answer{body: tt.body}))
			c := newClient(t, u.URL, noRetries)
			if _, err := c.Result(context.Background(), "dep-1", "req-1"); err == nil {
				t.Errorf("Result() of %q succeeded, want an error", tt.body)
			}
		})
	}
}

func TestParseState(t *testing.T) {
	tests := []struct {
		raw  string
		want runcomfy.State
	}{
		{"in_queue", runcomfy.StateQueued},
		{"IN_QUEUE", runcomfy.StateQueued},
		{"in_progress", runcomfy.StateRunning},
		{"In_Progress", runcomfy.StateRunning},
		{"completed", runcomfy.StateSucceeded},
		{"succeeded", runcomfy.StateSucceeded},
		{"SUCCEEDED", runcomfy.StateSucceeded},
		{" succeeded\n", runcomfy.StateSucceeded},
		{"failed", runcomfy.StateFailed},
		{"cancelled", runcomfy.StateCancelled},
		{"canceled", runcomfy.StateCancelled},
		{"CANCELED", runcomfy.StateCancelled},
		{"", runcomfy.StateUnknown},
		{"cancellation_requested", runcomfy.StateUnknown},
		{"warming_up", runcomfy.StateUnknown},
	}
	for _, tt := range tests {
		t.Run(tt.raw, func(t *testing.T) {
			if got := runcomfy.ParseState(tt.raw); got != tt.want {
				t.Errorf("ParseState(%q) = %v, want %v", tt.raw, got, tt.want)
			}
		})
	}
}

// TestStateOrder pins the rank order that keeps request state monotonic.
func TestStateOrder(t *testing.T) {
	if !(runcomfy.StateUnknown < runcomfy.StateQueued && runcomfy.StateQueued < runcomfy.StateRunning && runcomfy.StateRunning < runcomfy.StateSucceeded) {
		t.Errorf("states out of lifecycle order")
	}
	for _, tt := range []struct {
		s    runcomfy.State
		name string
		term bool
	}{
		{runcomfy.StateUnknown, "unknown", false},
		{runcomfy.StateQueued, "queued", false},
		{runcomfy.StateRunning, "running", false},
		{runcomfy.StateSucceeded, "succeeded", true},
		{runcomfy.StateFailed, "failed", true},
		{runcomfy.StateCancelled, "cancelled", true},
	} {
		if got := tt.s.String(); got != tt.name {
			t.Errorf("State(%d).String() = %q, want %q", tt.s, got, tt.name)
		}
		if got := tt.s.Terminal(); got != tt.term {
			t.Errorf("%v.Terminal() = %v, want %v", tt.s, got, tt.term)
		}
	}
}

func TestCollectURLs(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{"nil", ``, nil},
		{"null", `null`, nil},
		{"bare list", `["https://a/1.png","http://a/2.png","ftp://a/3.png","a/4.png"]`, []string{"https://a/1.png", "http://a/2.png"}},
		{"url member anywhere", `{"a":{"b":[{"c":{"url":"s3://bucket/x"}}]}}`, []string{"s3://bucket/x"}},
		{"escaped url", `{"n":{"images":[{"url":"https:\/\/a\/\u00e9.png"}]}}`, []string{"https://a/é.png"}},
		{"url key nested value is not a url", `{"url":{"href":"https://a/x"}}`, nil},
		{"key named like a url is not collected", `{"https://a/key":1}`, nil},
		{"object string values other than url skipped", `{"filename":"https://a/f.png","subfolder":"https://a/"}`, nil},
		{"truncated keeps what was read", `{"1":{"images":[{"url":"https://a/1.png"},{"url":"https://a/2`, []string{"https://a/1.png"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := runcomfy.CollectURLs(json.RawMessage(tt.in))
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("CollectURLs(%s) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}
