package runcomfy

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// unmarshalResultWire is the reading decodeObject must match: encoding/json's
// Unmarshal into resultWire, a member of another type left empty.
func unmarshalResultWire(data []byte) (resultWire, bool) {
	var w resultWire
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return w, false
	}
	var typeErr *json.UnmarshalTypeError
	if err := json.Unmarshal(trimmed, &w); err != nil && !errors.As(err, &typeErr) {
		return w, false
	}
	return w, true
}

// collectURLsV1 is the walk CollectURLs must match, on encoding/json's tokens.
func collectURLsV1(outputs json.RawMessage) []string {
	dec := json.NewDecoder(bytes.NewReader(outputs))
	dec.UseNumber()
	var urls []string
	type frame struct{ object, key bool }
	var stack []frame
	lastKey := ""
	for {
		tok, err := dec.Token()
		if err != nil {
			return urls
		}
		inObject := len(stack) > 0 && stack[len(stack)-1].object
		isKey := inObject && stack[len(stack)-1].key
		switch t := tok.(type) {
		case json.Delim:
			switch t {
			case '{', '[':
				if inObject {
					stack[len(stack)-1].key = true
				}
				stack = append(stack, frame{object: t == '{', key: t == '{'})
			default:
				stack = stack[:len(stack)-1]
			}
			continue
		case string:
			switch {
			case isKey:
				lastKey = t
				stack[len(stack)-1].key = false
				continue
			case inObject && lastKey == "url":
				if t != "" {
					urls = append(urls, t)
				}
			case !inObject && isHTTPURL(t):
				urls = append(urls, t)
			}
		}
		if inObject {
			stack[len(stack)-1].key = true
		}
	}
}

// nullAsAbsent makes a member that was JSON null and one that was absent
// compare equal: encoding/json keeps the bytes "null", decodeObject may too,
// and every reader of resultWire treats both alike (isNull).
func nullAsAbsent(w resultWire) resultWire {
	for _, p := range []*json.RawMessage{&w.Outputs, &w.Output, &w.Error, &w.QueuePosition} {
		if isNull(*p) {
			*p = nil
		}
	}
	return w
}

// AddFuzzSeeds adds every webhook fixture and hostile shapes of a JSON
// document to f's corpus: the seeds of every fuzz test of RunComfy's answers
// and callbacks, this package's and its external tests'.
func AddFuzzSeeds(f *testing.F) {
	f.Helper()
	paths, err := filepath.Glob(filepath.Join("testdata", "webhooks", "*.json"))
	if err != nil || len(paths) == 0 {
		f.Fatalf("no fixtures found: %v", err)
	}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{
		``, `null`, `[]`, `"x"`, `{}`, `{}}`, `{"a":1}]`, `{"a":1} {"b":2}`, " \u00a0{}", `{"status":"a","status":"b"}`,
		`{"status":"failed","error":[{"type":"T","message":"m"},"s",null,[{"error":"E"}]]}`,
		`{"outputs":{"1":{"images":["https://a/1.png",{"url":"https://a/2.png"}]}},"output":null}`,
		`{"status":5,"created_at":1751371200,"outputs":"https://a"}`,
		`{"url":"https://a","outputs":{"url":{"url":"u"}}}`,
		`[[[[[[[[[[[[[[[[[[[[[[[[["https://deep"]]]]]]]]]]]]]]]]]]]]]]]]]`,
		`{"outputs":{"1":{"images":[{"url":"https:\/\/a\/\u00e9"}]}}}`,
		`{"STATUS":"x","Request_ID":"r","request_ıd":"dotless","ſtatus":"long s"}`,
		`{"status":5,"created_at":null,"outputs":"https://a","error":[1,"e"],"queue_position":"3"}`,
		`{"request_id":"\ud800\u00e9\"","output":{"a":["https://x\u0000"]}}`,
		"{\"request_id\":\"\xff\xfe\",\"outputs\":[\"http://\xc3\"]}",
		`{"url":"https://a","outputs":{"url":{"url":"u"},"k":[{"url":""},{"url":"v"}]}}`,
		`{"a":[[[[[[[[[[[[[[[[[[[[[[[[["https://deep"]]]]]]]]]]]]]]]]]]]]]]]]]}`,
		`{"status":"ok",}`, `{"status" "ok"}`, `{"status":"ok"`, `{'status':'ok'}`,
	} {
		f.Add([]byte(s))
	}
}

// FuzzDecodeObjectMatchesUnmarshal pins that the one-pass reading of a result or
// callback accepts exactly what encoding/json accepts and reads the same fields.
func FuzzDecodeObjectMatchesUnmarshal(f *testing.F) {
	AddFuzzSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		want, ok := unmarshalResultWire(data)
		var got resultWire
		err := decodeObject(data, &got)
		if ok != (err == nil) {
			t.Fatalf("decodeObject(%q): error %v, encoding/json accepts it: %v", data, err, ok)
		}
		if !ok {
			return
		}
		if g, w := nullAsAbsent(got), nullAsAbsent(want); !reflect.DeepEqual(g, w) {
			t.Fatalf("decodeObject(%q)\n got %+v\nwant %+v", data, g, w)
		}
	})
}

// FuzzCollectURLsMatchesV1 pins that the walk finds the URLs encoding/json's
// tokens give, in the same order, in any valid document.
func FuzzCollectURLsMatchesV1(f *testing.F) {
	AddFuzzSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		if !json.Valid(data) {
			return
		}
		if got, want := CollectURLs(data), collectURLsV1(data); !reflect.DeepEqual(got, want) {
			t.Fatalf("CollectURLs(%q) = %q, encoding/json's tokens give %q", data, got, want)
		}
	})
}
