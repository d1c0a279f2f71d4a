package runcomfy_test

import (
	"encoding/json"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/comfygate/comfygate/runcomfy"
)

// fixtureIDs returns the ids the webhook fixtures carry: the placeholders as
// written, the same fields filled with realistic values, and every path segment
// of their RunComfy URLs.
func fixtureIDs(f *testing.F) []string {
	f.Helper()
	paths, err := filepath.Glob(filepath.Join("testdata", "webhooks", "*.json"))
	if err != nil || len(paths) == 0 {
		f.Fatalf("no fixtures found: %v", err)
	}
	placeholder := regexp.MustCompile(`\{[a-z_]+\}`)
	fill := strings.NewReplacer(
		"{request_id}", "3f2a9c1e-7b4d-4e8a-9c0f-1d2e3f4a5b6c",
		"{deployment_id}", "6f1c3b7e-2d4a-4c5b-9e8f-0a1b2c3d4e5f",
		"{instance_id}", "inst_01",
	)
	var ids []string
	for _, p := range paths {
		tmpl, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		ids = append(ids, placeholder.FindAllString(string(tmpl), -1)...)
		var v map[string]any
		if err := json.Unmarshal([]byte(fill.Replace(string(tmpl))), &v); err != nil {
			f.Fatalf("%s: %v", p, err)
		}
		for key, val := range v {
			s, ok := val.(string)
			if !ok {
				continue
			}
			switch {
			case strings.HasSuffix(key, "_id"):
				ids = append(ids, s)
			case strings.HasSuffix(key, "_url"):
				u, err := url.Parse(s)
				if err != nil {
					f.Fatalf("%s: %s: %v", p, key, err)
				}
				ids = append(ids, strings.Split(strings.Trim(u.Path, "/"), "/")...)
			}
		}
	}
	return ids
}

var idAlphabet = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

func FuzzValidID(f *testing.F) {
	for _, id := range fixtureIDs(f) {
		f.Add(id)
	}
	for _, s := range []string{
		"00000000-0000-0000-0000-000000000000",
		"6F1C3B7E-2D4A-4C5B-9E8F-0A1B2C3D4E5F",
		"{6f1c3b7e-2d4a-4c5b-9e8f-0a1b2c3d4e5f}",
		"urn:uuid:6f1c3b7e-2d4a-4c5b-9e8f-0a1b2c3d4e5f",
		"", ".", "..", "../..", "../../v2/deployments", `..\..\x`, "a/b", "/a", "a/",
		"%2e%2e%2f", "a%2Fb", "%00", "a\x00b", "a\nb", "a\rb", "a b", "a\tb",
		"a?webhook=https://evil.example", "a#b", "a:cancel", "a;b", "a+b=c", "a&b",
		"dép", "ａ", "a\u200bb", "a\xffb", "\xc0\xaf",
		strings.Repeat("a", runcomfy.MaxIDLen), strings.Repeat("a", runcomfy.MaxIDLen+1),
		"-", "_", "--", "A_b-9",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		ok := runcomfy.ValidID(id)
		// Oracle: the documented rule, written independently.
		want := len(id) >= 1 && len(id) <= runcomfy.MaxIDLen && idAlphabet.MatchString(id)
		if ok != want {
			t.Fatalf("ValidID(%q) = %v, want %v", id, ok, want)
		}
		if !ok {
			return
		}
		if n := len(id); n < 1 || n > 128 {
			t.Fatalf("ValidID(%q) accepted %d bytes", id, n)
		}
		if esc := url.PathEscape(id); esc != id {
			t.Fatalf("ValidID(%q) accepted an id that PathEscape changes to %q", id, esc)
		}
		if esc := url.QueryEscape(id); esc != id {
			t.Fatalf("ValidID(%q) accepted an id that QueryEscape changes to %q", id, esc)
		}
		if strings.ContainsAny(id, "/?#%.\\ \x00") {
			t.Fatalf("ValidID(%q) accepted a path, query, fragment, escape, dot, space or NUL", id)
		}
	})
}
