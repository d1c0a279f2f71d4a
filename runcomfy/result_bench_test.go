package runcomfy_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/comfygate/comfygate/runcomfy"
)

// callbackBodies are callbacks of the three phases of a request as RunComfy
// sends them (the documented fields, indented), padded to 1 KiB (where shorter) as the bench
// harness's are.
func callbackBodies() map[string][]byte {
	const rid, dep = "4f1c2b7e-9a3d-4e8f-b2c1-7d6e5f4a3b2c", "d3b8a1f0-6c2e-4b7d-9e1a-2f3c4d5e6f70"
	base := "https://api.runcomfy.net/prod/v1/deployments/" + dep + "/requests/" + rid
	tail := `  "status_url": "` + base + `/status",
  "result_url": "` + base + `/result",
  "cancel_url": "` + base + `/cancel",
  "created_at": "2026-11-18T10:00:00Z"`
	head := "{\n  \"request_id\": \"" + rid + "\",\n  \"deployment_id\": \"" + dep + "\",\n"
	var urls []string
	for i := range 4 {
		urls = append(urls, fmt.Sprintf(`      "https://cdn.runcomfy.net/outputs/%s/ComfyUI_%05d_.png"`, rid, i+1))
	}
	pad := func(s string) []byte {
		return []byte(s + strings.Repeat(" ", max(0, 1024-len(s)-2)) + "\n}")
	}
	return map[string][]byte{
		"queued":  pad(head + "  \"status\": \"in_queue\",\n  \"queue_position\": 3,\n" + tail),
		"running": pad(head + "  \"status\": \"in_progress\",\n  \"instance_id\": \"inst-0b1f\",\n  \"started_at\": \"2026-11-18T10:01:00Z\",\n" + tail),
		"succeeded": pad(head + "  \"status\": \"succeeded\",\n  \"instance_id\": \"inst-0b1f\",\n  \"output\": {\n    \"images\": [\n" +
			strings.Join(urls, ",\n") + "\n    ]\n  },\n  \"started_at\": \"2026-11-18T10:01:00Z\",\n  \"finished_at\": \"2026-11-18T10:08:30Z\",\n" + tail),
	}
}

// BenchmarkParseCallback measures the lenient parse of a callback body beside
// json.Valid on the same body, the least any reader of it does.
func BenchmarkParseCallback(b *testing.B) {
	for _, phase := range []string{"queued", "running", "succeeded"} {
		body := callbackBodies()[phase]
		b.Run(phase+"/json.Valid", func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				if !json.Valid(body) {
					b.Fatal("invalid")
				}
			}
		})
		b.Run(phase+"/ParseCallback", func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := runcomfy.ParseCallback(body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestCallbackBodiesParse keeps the benchmark's bodies honest: each reads as
// the phase it stands for.
func TestCallbackBodiesParse(t *testing.T) {
	for phase, want := range map[string]runcomfy.State{"queued": runcomfy.StateQueued, "running": runcomfy.StateRunning, "succeeded": runcomfy.StateSucceeded} {
		cb, err := runcomfy.ParseCallback(callbackBodies()[phase])
		if err != nil {
			t.Fatalf("%s: %v", phase, err)
		}
		if cb.State != want {
			t.Errorf("%s: state %v, want %v", phase, cb.State, want)
		}
		if phase == "succeeded" && len(cb.OutputURLs) != 4 {
			t.Errorf("succeeded: %d output URLs, want 4", len(cb.OutputURLs))
		}
	}
}
