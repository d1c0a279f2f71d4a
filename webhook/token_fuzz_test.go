package webhook_test

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

// fuzzSecrets are the signer's secrets in FuzzVerify: the first signs, the
// second is a retired one that still verifies (a rotation in progress).
var fuzzSecrets = []string{"new-secret-9876543210", "old-secret-0123456789"}

// fixtureIDs returns every string a seed fixture in testdata uses as a
// deployment or request id, with the placeholders both left in and filled.
func fixtureIDs(f *testing.F) []string {
	f.Helper()
	paths, err := filepath.Glob(filepath.Join("testdata", "0*.json"))
	if err != nil || len(paths) == 0 {
		f.Fatalf("no fixtures found: %v", err)
	}
	placeholder := regexp.MustCompile(`\{[a-z_]+\}`)
	var ids []string
	for _, p := range paths {
		tmpl, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		ids = append(ids, placeholder.FindAllString(string(tmpl), -1)...)
		var v map[string]any
		if err := json.Unmarshal(fill(string(tmpl), "req-fuzz", depID), &v); err != nil {
			f.Fatalf("%s: %v", p, err)
		}
		for _, k := range []string{"request_id", "deployment_id", "instance_id"} {
			if s, ok := v[k].(string); ok {
				ids = append(ids, s)
			}
		}
	}
	return ids
}

// FuzzVerify checks the callback token against an independent oracle: Verify
// never panics, accepts exactly the tokens Token makes under one of the signer's
// secrets (a second signer with the same secrets and a signer with the retired
// secret alone compute them), and always accepts its own Token.
func FuzzVerify(f *testing.F) {
	s := mustSigner(f, fuzzSecrets...)
	same := mustSigner(f, fuzzSecrets...)
	old := mustSigner(f, fuzzSecrets[1])

	data, err := os.ReadFile(filepath.Join("testdata", "token_vectors.json"))
	if err != nil {
		f.Fatal(err)
	}
	var vectors []tokenVector
	if err := json.Unmarshal(data, &vectors); err != nil || len(vectors) == 0 {
		f.Fatalf("token_vectors.json: %d vectors, %v", len(vectors), err)
	}
	for _, v := range vectors {
		f.Add(v.DeploymentID, v.Token) // another secret's token: must be refused
		f.Add(v.DeploymentID, s.Token(v.DeploymentID))
		f.Add(v.DeploymentID, old.Token(v.DeploymentID))
	}
	for _, id := range fixtureIDs(f) {
		tok := s.Token(id)
		raw, _ := base64.RawURLEncoding.DecodeString(tok)
		f.Add(id, tok)
		f.Add(id, old.Token(id))
		f.Add(id, tok+"=")
		f.Add(id, tok[:len(tok)-1])
		f.Add(id, base64.StdEncoding.EncodeToString(raw))
		f.Add(id, base64.URLEncoding.EncodeToString(raw))
		f.Add(id, "")
	}
	f.Add("", s.Token(""))
	f.Add("dep-1\x00", s.Token("dep-1"))
	f.Add("../dep-1", s.Token("../dep-1"))

	f.Fuzz(func(t *testing.T, dep, token string) {
		want := token == same.Token(dep) || token == old.Token(dep)
		if got := s.Verify(dep, token); got != want {
			t.Fatalf("Verify(%q, %q) = %v, want %v (Token = %q, old secret's = %q)",
				dep, token, got, want, same.Token(dep), old.Token(dep))
		}
		if tok := s.Token(dep); !s.Verify(dep, tok) {
			t.Fatalf("Verify(%q, Token(%q) = %q) = false", dep, dep, tok)
		}
		if tok := old.Token(dep); !s.Verify(dep, tok) {
			t.Fatalf("Verify(%q, old secret's token %q) = false", dep, tok)
		}
		// The token depends on the deployment id: it is not accepted for a neighbour.
		if s.Verify(dep+"x", s.Token(dep)) {
			t.Fatalf("Token(%q) verifies for %q", dep, dep+"x")
		}
	})
}
