package runcomfy

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"testing"
	"unicode/utf8"
)

// unmarshalResultWire is the reading decodeObject must match, built from
// encoding/json and checks of its own: the document is accepted when it is one
// JSON object, with only JSON whitespace around it, in valid UTF-8, with no
// escape of a lone surrogate and no name twice in any object; its members are
// then read by exact name, a string field from a JSON string only.
func unmarshalResultWire(data []byte) (resultWire, bool) {
	var w resultWire
	trimmed := bytes.Trim(data, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '{' || !json.Valid(trimmed) || !utf8.Valid(data) ||
		loneSurrogate(trimmed) || duplicateNames(trimmed) {
		return w, false
	}
	var members map[string]json.RawMessage
	if err := json.Unmarshal(trimmed, &members); err != nil {
		return w, false
	}
	for name, raw := range members {
		switch p := w.exact(name).(type) {
		case *string:
			if raw[0] == '"' {
				if err := json.Unmarshal(raw, p); err != nil {
					return w, false
				}
			}
		case *json.RawMessage:
			*p = append(json.RawMessage(nil), raw...)
		}
	}
	return w, true
}

// IsIJSONObject reports whether data is one I-JSON object with only JSON
// whitespace around it, by unmarshalResultWire's reference checks: what
// ParseResult and ParseCallback must accept, and nothing else.
func IsIJSONObject(data []byte) bool {
	_, ok := unmarshalResultWire(data)
	return ok
}

// loneSurrogate reports whether a string of the valid JSON document data holds
// a \u escape of a surrogate that is not half of a pair.
func loneSurrogate(data []byte) bool {
	hex := func(b []byte) (int, bool) {
		if len(b) < 4 {
			return 0, false
		}
		n, err := strconv.ParseUint(string(b[:4]), 16, 16)
		return int(n), err == nil
	}
	inString := false
	for i := 0; i < len(data); i++ {
		switch c := data[i]; {
		case c == '"':
			inString = !inString
		case c == '\\' && inString:
			i++
			if i >= len(data) || data[i] != 'u' {
				continue
			}
			u, ok := hex(data[i+1:])
			if !ok {
				continue
			}
			i += 4
			switch {
			case u >= 0xDC00 && u <= 0xDFFF:
				return true
			case u >= 0xD800 && u <= 0xDBFF:
				if i+2 >= len(data) || data[i+1] != '\\' || data[i+2] != 'u' {
					return true
				}
				if low, ok := hex(data[i+3:]); !ok || low < 0xDC00 || low > 0xDFFF {
					return true
				}
				i += 6
			}
		}
	}
	return false
}

// duplicateNames reports whether any object of the valid JSON document data
// gives a name twice, on encoding/json's tokens.
func duplicateNames(data []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(data))
	type frame struct {
		names map[string]bool // nil in a list
		key   bool
	}
	var stack []frame
	for {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		top := len(stack) - 1
		isKey := top >= 0 && stack[top].names != nil && stack[top].key
		if top >= 0 && stack[top].names != nil {
			stack[top].key = !isKey
		}
		switch t := tok.(type) {
		case json.Delim:
			switch t {
			case '{':
				stack = append(stack, frame{names: map[string]bool{}, key: true})
			case '[':
				stack = append(stack, frame{})
			default:
				stack = stack[:top]
				if top > 0 && stack[top-1].names != nil {
					stack[top-1].key = true
				}
			}
		case string:
			if isKey {
				if stack[top].names[t] {
					return true
				}
				stack[top].names[t] = true
			}
		}
	}
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
// callback accepts exactly the I-JSON objects encoding/json accepts (and
// unmarshalResultWire's checks) and reads the same fields.
func FuzzDecodeObjectMatchesUnmarshal(f *testing.F) {
	AddFuzzSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		want, ok := unmarshalResultWire(data)
		var got resultWire
		err := decodeObject(data, &got)
		if ok != (err == nil) {
			t.Fatalf("decodeObject(%q): error %v, the reference accepts it: %v", data, err, ok)
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
