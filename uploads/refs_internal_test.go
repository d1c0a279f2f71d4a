package uploads

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// TestRewrite: each string value that is a reference is replaced, keys and
// other strings are not, and the bytes around stay as they were.
func TestRewrite(t *testing.T) {
	const ref = Scheme + "up_abcdefghijklmnopqrstuvwxyz"
	for _, tc := range []struct{ name, in, want string }{
		{"none", `{"a": "b"}`, `{"a": "b"}`},
		{"a value", `{"a": "` + ref + `"}`, `{"a": "R"}`},
		{"escaped slashes", `{"a": "comfygate:\/\/uploads\/up_abcdefghijklmnopqrstuvwxyz"}`, `{"a": "R"}`},
		{"a key is kept", `{"` + ref + `" : "` + ref + `"}`, `{"` + ref + `" : "R"}`},
		{"in an array, spacing kept", "[ \"" + ref + "\" ,\n\t1.0e3, \"x\"]", "[ \"R\" ,\n\t1.0e3, \"x\"]"},
		{"after an escaped quote", `{"a": "\"` + ref + `", "b": "` + ref + `"}`, `{"a": "\"` + ref + `", "b": "R"}`},
		{"only a prefix", `{"a": "see ` + ref + `"}`, `{"a": "see ` + ref + `"}`},
		{"a bare string", `"` + ref + `"`, `"R"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := rewrite(tc.in, func(r string) (string, error) {
				if r != ref {
					t.Errorf("replace(%q)", r)
				}
				return "R", nil
			})
			if err != nil || out != tc.want {
				t.Errorf("rewrite = %s, %v; want %s", out, err, tc.want)
			}
		})
	}
	// The replacement is a JSON string, & as it is.
	out, err := rewrite(`["`+ref+`"]`, func(string) (string, error) { return `http://s/k?a=1&b="2"`, nil })
	if err != nil || out != `["http://s/k?a=1&b=\"2\""]` {
		t.Errorf("rewrite = %s, %v", out, err)
	}
	boom := errors.New("boom")
	if _, err := rewrite(`["`+ref+`"]`, func(string) (string, error) { return "", boom }); !errors.Is(err, boom) {
		t.Errorf("rewrite = %v, want the replacement's error", err)
	}
}

// substitute is rewrite's meaning on decoded values: every string value
// beginning with Scheme becomes "R".
func substitute(v any) any {
	switch x := v.(type) {
	case string:
		if strings.HasPrefix(x, Scheme) {
			return "R"
		}
	case []any:
		for i := range x {
			x[i] = substitute(x[i])
		}
	case map[string]any:
		for k := range x {
			x[k] = substitute(x[k])
		}
	}
	return v
}

// FuzzRewrite: on any valid JSON, rewrite gives valid JSON whose value is
// the input's with its references replaced.
func FuzzRewrite(f *testing.F) {
	for _, s := range []string{
		`{"a": "comfygate://uploads/x"}`,
		`["comfygate:\/\/uploads\/y", {"comfygate://uploads/k": "comfygate://uploads/"}]`,
		`{"a\"": "\\", "b": ["comfygate://uploads/z\u0000"]}`,
		`"comfygate://uploads/"`, `12`, `{}`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		if !json.Valid([]byte(in)) {
			return
		}
		out, err := rewrite(in, func(string) (string, error) { return "R", nil })
		if err != nil {
			t.Fatal(err)
		}
		// Numbers as their text: valid JSON may hold numbers no float holds.
		decode := func(b []byte) (any, error) {
			d := json.NewDecoder(bytes.NewReader(b))
			d.UseNumber()
			var v any
			err := d.Decode(&v)
			return v, err
		}
		want, err := decode([]byte(in))
		if err != nil {
			t.Fatal(err)
		}
		got, err := decode([]byte(out))
		if err != nil {
			t.Fatalf("rewrite(%q) = %q, not JSON: %v", in, out, err)
		}
		if want = substitute(want); !reflect.DeepEqual(got, want) {
			t.Fatalf("rewrite(%q) = %q", in, out)
		}
	})
}

// TestValidID: ids newID makes are valid; others are not.
func TestValidID(t *testing.T) {
	for range 100 {
		id, err := newID()
		if err != nil || !validID(id) {
			t.Fatalf("newID = %q, %v", id, err)
		}
	}
	for _, id := range []string{"", "up_", "up_ABCDEFGHIJKLMNOPQRSTUVWXYZ", "up_abcdefghijklmnopqrstuvwxy1", "xx_abcdefghijklmnopqrstuvwxyz", "up_abcdefghijklmnopqrstuvwxyz2"} {
		if validID(id) {
			t.Errorf("validID(%q)", id)
		}
	}
}

// TestAgree: the sniffed kind must not contradict the declared one.
func TestAgree(t *testing.T) {
	for _, tc := range []struct {
		declared, sniffed string
		ok                bool
	}{
		{"image/png", "image/png", true},
		{"image/jpg", "image/jpeg", true},
		{"audio/wav", "audio/wave", true},
		{"audio/x-wav", "audio/wave", true},
		{"audio/mp3", "audio/mpeg", true},
		{"audio/ogg", "application/ogg", true},
		{"image/avif", "application/octet-stream", true},
		{"video/quicktime", "application/octet-stream", true},
		{"video/quicktime", "video/mp4", true},
		{"audio/mp4", "video/mp4", true},
		{"audio/webm", "video/webm", true},
		{"application/octet-stream", "text/html; charset=utf-8", true},
		{"image/jpeg", "image/png", false},
		{"image/gif", "image/png", false},
		{"image/svg+xml", "image/png", false},
		{"image/png", "application/octet-stream", false},
		{"image/png", "text/html; charset=utf-8", false},
		{"image/svg+xml", "text/xml; charset=utf-8", false},
		{"video/mp4", "image/png", false},
		{"image/avif", "image/png", false},
		{"image/png", "application/pdf", false},
	} {
		if err := agree(tc.declared, tc.sniffed); (err == nil) != tc.ok {
			t.Errorf("agree(%s, %s) = %v", tc.declared, tc.sniffed, err)
		}
	}
}
