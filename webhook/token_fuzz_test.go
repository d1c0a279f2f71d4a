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
// never panics, accepts exactly the tokens TenantToken makes for the same
// deployment and tenant under one of the signer's secrets (a second signer with
// the same secrets and a signer with the retired secret alone compute them),
// and always accepts its own. Tenant "" is the form without a tenant.
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
		f.Add(v.DeploymentID, v.Tenant, v.Token) // another secret's token: must be refused
		f.Add(v.DeploymentID, v.Tenant, s.TenantToken(v.DeploymentID, v.Tenant))
		f.Add(v.DeploymentID, v.Tenant, old.TenantToken(v.DeploymentID, v.Tenant))
		f.Add(v.DeploymentID, "", s.TenantToken(v.DeploymentID, "tenant-a")) // a tenant's token without one
		f.Add(v.DeploymentID, "tenant-a", s.Token(v.DeploymentID))           // the old form for a tenant
		f.Add(v.DeploymentID, "tenant-b", s.TenantToken(v.DeploymentID, "tenant-a"))
	}
	for _, id := range fixtureIDs(f) {
		for _, tenant := range []string{"", "tenant-a"} {
			tok := s.TenantToken(id, tenant)
			raw, _ := base64.RawURLEncoding.DecodeString(tok)
			f.Add(id, tenant, tok)
			f.Add(id, tenant, old.TenantToken(id, tenant))
			f.Add(id, tenant, tok+"=")
			f.Add(id, tenant, tok[:len(tok)-1])
			f.Add(id, tenant, base64.StdEncoding.EncodeToString(raw))
			f.Add(id, tenant, base64.URLEncoding.EncodeToString(raw))
			f.Add(id, tenant, "")
		}
	}
	f.Add("", "", s.Token(""))
	f.Add("dep-1\x00", "", s.Token("dep-1"))
	f.Add("../dep-1", "", s.Token("../dep-1"))
	f.Add("dep-", "1tenant-a", s.TenantToken("dep-1", "tenant-a"))
	f.Add("dep-1", "tenant-a", s.Token("dep-1tenant-a"))

	f.Fuzz(func(t *testing.T, dep, tenant, token string) {
		want := token == same.TenantToken(dep, tenant) || token == old.TenantToken(dep, tenant)
		if got := s.VerifyTenant(dep, tenant, token); got != want {
			t.Fatalf("VerifyTenant(%q, %q, %q) = %v, want %v (TenantToken = %q, old secret's = %q)",
				dep, tenant, token, got, want, same.TenantToken(dep, tenant), old.TenantToken(dep, tenant))
		}
		if tenant == "" {
			if got := s.Verify(dep, token); got != want {
				t.Fatalf("Verify(%q, %q) = %v, VerifyTenant with no tenant = %v", dep, token, got, want)
			}
		}
		if tok := s.TenantToken(dep, tenant); !s.VerifyTenant(dep, tenant, tok) {
			t.Fatalf("VerifyTenant(%q, %q, TenantToken = %q) = false", dep, tenant, tok)
		}
		if tok := old.TenantToken(dep, tenant); !s.VerifyTenant(dep, tenant, tok) {
			t.Fatalf("VerifyTenant(%q, %q, old secret's token %q) = false", dep, tenant, tok)
		}
		// The token depends on the deployment id and the tenant: it is not
		// accepted for a neighbour of either, nor with bytes moved between them.
		tok := s.TenantToken(dep, tenant)
		if s.VerifyTenant(dep+"x", tenant, tok) {
			t.Fatalf("TenantToken(%q, %q) verifies for deployment %q", dep, tenant, dep+"x")
		}
		if s.VerifyTenant(dep, tenant+"x", tok) {
			t.Fatalf("TenantToken(%q, %q) verifies for tenant %q", dep, tenant, tenant+"x")
		}
		if tenant != "" && s.VerifyTenant(dep+tenant[:1], tenant[1:], tok) {
			t.Fatalf("TenantToken(%q, %q) verifies for (%q, %q)", dep, tenant, dep+tenant[:1], tenant[1:])
		}
	})
}
