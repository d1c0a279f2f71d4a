package runcomfy_test

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"

	"github.com/comfygate/comfygate/runcomfy"
)

// seedCorpus adds every webhook fixture and a few hostile shapes, so the fuzzer
// starts from what RunComfy really sends (runcomfy.AddFuzzSeeds, shared with
// the package's own fuzz tests).
func seedCorpus(f *testing.F) {
	f.Helper()
	runcomfy.AddFuzzSeeds(f)
}

// stringsIn returns every string token (keys and values) of data, read the same
// lenient way CollectURLs reads: up to the first syntax error.
func stringsIn(data []byte) map[string]bool {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	set := map[string]bool{}
	for {
		tok, err := dec.Token()
		if err != nil {
			return set
		}
		if s, ok := tok.(string); ok {
			set[s] = true
		}
	}
}

func FuzzParseResult(f *testing.F) {
	seedCorpus(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := runcomfy.ParseResult(data)
		if !runcomfy.IsIJSONObject(data) {
			if err == nil {
				t.Fatalf("ParseResult(%q) = %+v, want an error for a non-object", data, r)
			}
			return
		}
		// The doc promises: it fails only when data is not a JSON object.
		if err != nil {
			t.Fatalf("ParseResult(%q) error = %v, want success for a JSON object", data, err)
		}
		if r.State != runcomfy.ParseState(r.Status) {
			t.Errorf("State = %v, want ParseState(%q) = %v", r.State, r.Status, runcomfy.ParseState(r.Status))
		}
		if r.Outputs != nil {
			if !json.Valid(r.Outputs) {
				t.Errorf("Outputs = %q is not valid JSON", r.Outputs)
			}
			if got, want := r.OutputURLs, runcomfy.CollectURLs(r.Outputs); !reflect.DeepEqual(got, want) {
				t.Errorf("OutputURLs = %q, want CollectURLs(Outputs) = %q", got, want)
			}
		} else if r.OutputURLs != nil {
			t.Errorf("OutputURLs = %q without Outputs", r.OutputURLs)
		}
		in := stringsIn(data)
		for _, u := range r.OutputURLs {
			if !in[u] {
				t.Errorf("URL %q is not a string of the input %q", u, data)
			}
		}
	})
}

func FuzzCollectURLs(f *testing.F) {
	seedCorpus(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		urls := runcomfy.CollectURLs(data)
		in := stringsIn(data)
		for _, u := range urls {
			if u == "" {
				t.Errorf("CollectURLs(%q) returned an empty URL", data)
			}
			if !in[u] {
				t.Errorf("URL %q is not a string of the input %q", u, data)
			}
		}
		// Deterministic: the same input always gives the same URLs in the same order.
		if again := runcomfy.CollectURLs(data); !reflect.DeepEqual(again, urls) {
			t.Errorf("CollectURLs not deterministic: %q then %q", urls, again)
		}
	})
}
