package webhook_test

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/comfygate/comfygate/webhook"
)

// tokenVector is one entry of testdata/token_vectors.json. The tokens there were
// computed outside Go, once, so that a change to the token scheme (context string,
// MAC, encoding, field framing) fails here instead of silently invalidating every
// callback URL already handed to RunComfy. Without a tenant:
//
//	python3 -c 'import hmac,hashlib,base64; print(base64.urlsafe_b64encode(hmac.new(
//	  b"0123456789abcdef", b"comfygate callback v1\x00dep-1", hashlib.sha256).digest()).rstrip(b"=").decode())'
//	printf 'comfygate callback v1\0dep-1' | openssl dgst -sha256 -hmac 0123456789abcdef -binary |
//	  base64 | tr '+/' '-_' | tr -d '='
//
// Both print Ab0InDo6qR_dB2dIG3KFEA06HPByrClnxWgCP0OvkFw. With a tenant, each
// field follows its length as 8 bytes, big-endian:
//
//	python3 -c 'import hmac,hashlib,base64,struct; d,t=b"dep-1",b"tenant-a"; print(base64.urlsafe_b64encode(
//	  hmac.new(b"0123456789abcdef", b"comfygate callback v2\x00"+struct.pack(">Q",len(d))+d+struct.pack(">Q",len(t))+t,
//	  hashlib.sha256).digest()).rstrip(b"=").decode())'
//	printf 'comfygate callback v2\0\0\0\0\0\0\0\0\005dep-1\0\0\0\0\0\0\0\010tenant-a' |
//	  openssl dgst -sha256 -hmac 0123456789abcdef -binary | base64 | tr '+/' '-_' | tr -d '='
//
// Both print OQS0aA-dWcpKW-mo2yzBpjiICLSWR_VZ_ij_-yoe0Wo.
type tokenVector struct {
	Secret       string `json:"secret"`
	DeploymentID string `json:"deployment_id"`
	// Tenant is empty for the form without a tenant.
	Tenant string `json:"tenant"`
	Token  string `json:"token"`
}

func loadTokenVectors(t *testing.T) []tokenVector {
	t.Helper()
	data, err := os.ReadFile("testdata/token_vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var vs []tokenVector
	if err := json.Unmarshal(data, &vs); err != nil {
		t.Fatalf("token_vectors.json: %v", err)
	}
	if len(vs) == 0 {
		t.Fatal("token_vectors.json holds no vectors")
	}
	return vs
}

func mustSigner(t testing.TB, secrets ...string) *webhook.Signer {
	t.Helper()
	s, err := webhook.NewSigner(secrets)
	if err != nil {
		t.Fatalf("NewSigner: %v", err)
	}
	return s
}

func TestTokenVectors(t *testing.T) {
	for _, v := range loadTokenVectors(t) {
		t.Run(v.DeploymentID+"/"+v.Tenant, func(t *testing.T) {
			s := mustSigner(t, v.Secret)
			if got := s.TenantToken(v.DeploymentID, v.Tenant); got != v.Token {
				t.Errorf("TenantToken(%q, %q) = %q, want %q", v.DeploymentID, v.Tenant, got, v.Token)
			}
			if !s.VerifyTenant(v.DeploymentID, v.Tenant, v.Token) {
				t.Errorf("VerifyTenant(%q, %q, vector token) = false, want true", v.DeploymentID, v.Tenant)
			}
			urls, err := webhook.NewURLs("https://gw.example.com", s)
			if err != nil {
				t.Fatal(err)
			}
			want := "https://gw.example.com" + webhook.PathPrefix + v.DeploymentID + "/" + v.Token
			if v.Tenant != "" {
				want = "https://gw.example.com" + webhook.PathPrefix + v.DeploymentID + "/t/" + v.Tenant + "/" + v.Token
			}
			if got := urls.CallbackURL(v.DeploymentID, v.Tenant); got != want {
				t.Errorf("CallbackURL = %q, want %q", got, want)
			}
			if got := s.Path(v.DeploymentID, v.Tenant); "https://gw.example.com"+got != want {
				t.Errorf("Path = %q, want the CallbackURL's path %q", got, want)
			}
			// Token and Verify are the form without a tenant.
			if got := s.Token(v.DeploymentID) == v.Token; got != (v.Tenant == "") {
				t.Errorf("Token(%q) == vector token: %v, want %v", v.DeploymentID, got, v.Tenant == "")
			}
			if got := s.Verify(v.DeploymentID, v.Token); got != (v.Tenant == "") {
				t.Errorf("Verify(%q, vector token) = %v, want %v", v.DeploymentID, got, v.Tenant == "")
			}
		})
	}
}

// TestTenantBinding: a tenant's token authenticates that tenant's callbacks
// of that deployment and nothing else, neither another tenant's, nor the form
// without a tenant; and the form without a tenant (every URL handed out before
// tenants were carried) authenticates no tenant.
func TestTenantBinding(t *testing.T) {
	s := mustSigner(t, "0123456789abcdef")
	tokA := s.TenantToken("dep-1", "tenant-a")
	old := s.Token("dep-1")
	tests := []struct {
		name                 string
		deploymentID, tenant string
		token                string
		want                 bool
	}{
		{"tenant a's token for tenant a", "dep-1", "tenant-a", tokA, true},
		{"the old form for no tenant", "dep-1", "", old, true},
		{"tenant a's token for tenant b", "dep-1", "tenant-b", tokA, false},
		{"tenant a's token for no tenant", "dep-1", "", tokA, false},
		{"tenant a's token for another deployment", "dep-2", "tenant-a", tokA, false},
		{"tenant a's token for a tenant with its name as prefix", "dep-1", "tenant-ab", tokA, false},
		{"tenant a's token for a prefix of its name", "dep-1", "tenant-", tokA, false},
		{"the old form for tenant a", "dep-1", "tenant-a", old, false},
		{"the old form of another deployment for no tenant", "dep-2", "", old, false},
		// Moving bytes between the fields makes another message.
		{"fields shifted right", "dep-", "1tenant-a", s.TenantToken("dep-1", "tenant-a"), false},
		{"fields shifted left", "dep-1t", "enant-a", tokA, false},
		{"the tenant moved into the deployment", "dep-1tenant-a", "", tokA, false},
		{"the old form of the fields joined, for tenant a", "dep-1", "tenant-a", s.Token("dep-1tenant-a"), false},
		{"the old form of the fields joined with NUL, for tenant a", "dep-1", "tenant-a", s.Token("dep-1\x00tenant-a"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := s.VerifyTenant(tt.deploymentID, tt.tenant, tt.token); got != tt.want {
				t.Errorf("VerifyTenant(%q, %q, %q) = %v, want %v", tt.deploymentID, tt.tenant, tt.token, got, tt.want)
			}
		})
	}
	if s.TenantToken("dep-1", "") != old {
		t.Error(`TenantToken(dep, "") differs from Token(dep)`)
	}
	if s.TenantToken("ab", "c") == s.TenantToken("a", "bc") {
		t.Error(`TenantToken("ab", "c") == TenantToken("a", "bc")`)
	}
}

func TestVerifyRejects(t *testing.T) {
	const secret = "0123456789abcdef"
	s := mustSigner(t, secret)
	good := s.Token("dep-1")
	raw, err := base64.RawURLEncoding.DecodeString(good)
	if err != nil {
		t.Fatal(err)
	}
	forged := make([]byte, len(raw))
	if _, err := rand.Read(forged); err != nil {
		t.Fatal(err)
	}
	flipped := append([]byte(nil), raw...)
	flipped[0] ^= 1
	tests := []struct {
		name         string
		deploymentID string
		token        string
	}{
		{"empty", "dep-1", ""},
		{"forged, right length", "dep-1", base64.RawURLEncoding.EncodeToString(forged)},
		{"one bit flipped", "dep-1", base64.RawURLEncoding.EncodeToString(flipped)},
		{"other deployment", "dep-2", good},
		{"deployment id prefix", "dep-", good},
		{"truncated by one char", "dep-1", good[:len(good)-1]},
		{"truncated to half", "dep-1", good[:len(good)/2]},
		{"extended", "dep-1", good + "AA"},
		{"padded", "dep-1", good + "="},
		{"standard alphabet", "dep-1", base64.StdEncoding.EncodeToString(raw)},
		{"not base64", "dep-1", strings.Repeat("!", len(good))},
		{"hex of the MAC", "dep-1", strings.ToLower(strings.Repeat("ab", len(raw)))},
		{"made with another secret", "dep-1", mustSigner(t, "fedcba9876543210").Token("dep-1")},
		{"a tenant's token", "dep-1", s.TenantToken("dep-1", "tenant-a")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.token == good && tt.deploymentID == "dep-1" {
				t.Fatal("test case uses the good token")
			}
			if s.Verify(tt.deploymentID, tt.token) {
				t.Errorf("Verify(%q, %q) = true, want false", tt.deploymentID, tt.token)
			}
		})
	}
	// A tenant's token is refused in every spelling but its canonical one.
	tok := s.TenantToken("dep-1", "tenant-a")
	tokRaw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		t.Fatal(err)
	}
	for name, spelled := range map[string]string{
		"padded":            tok + "=",
		"truncated":         tok[:len(tok)-1],
		"extended":          tok + "AA",
		"standard alphabet": base64.StdEncoding.EncodeToString(tokRaw),
		"with a newline":    tok[:10] + "\n" + tok[10:],
		"with a CR":         tok[:10] + "\r" + tok[10:],
	} {
		t.Run("tenant token "+name, func(t *testing.T) {
			if s.VerifyTenant("dep-1", "tenant-a", spelled) {
				t.Errorf("VerifyTenant(dep-1, tenant-a, %q) = true, want false", spelled)
			}
		})
	}
}

func TestSignerRotation(t *testing.T) {
	const (
		oldSecret = "old-secret-0123456789"
		newSecret = "new-secret-9876543210"
		dep       = "dep-1"
	)
	oldOnly := mustSigner(t, oldSecret)
	newOnly := mustSigner(t, newSecret)
	both := mustSigner(t, newSecret, oldSecret)

	if got, want := both.Token(dep), newOnly.Token(dep); got != want {
		t.Errorf("[new, old].Token = %q, want the new secret's %q", got, want)
	}
	if both.Token(dep) == oldOnly.Token(dep) {
		t.Error("[new, old].Token equals the old secret's token: the first secret must sign")
	}
	tests := []struct {
		name   string
		signer *webhook.Signer
		token  string
		want   bool
	}{
		{"[new, old] accepts old-secret token", both, oldOnly.Token(dep), true},
		{"[new, old] accepts new-secret token", both, newOnly.Token(dep), true},
		{"[new, old] accepts its own token", both, both.Token(dep), true},
		{"[new] rejects old-secret token", newOnly, oldOnly.Token(dep), false},
		{"[old] rejects new-secret token", oldOnly, newOnly.Token(dep), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.signer.Verify(dep, tt.token); got != tt.want {
				t.Errorf("Verify = %v, want %v", got, tt.want)
			}
		})
	}
	const tenant = "tenant-a"
	if got, want := both.TenantToken(dep, tenant), newOnly.TenantToken(dep, tenant); got != want {
		t.Errorf("[new, old].TenantToken = %q, want the new secret's %q", got, want)
	}
	tenantTests := []struct {
		name   string
		signer *webhook.Signer
		token  string
		want   bool
	}{
		{"[new, old] accepts an old-secret tenant token", both, oldOnly.TenantToken(dep, tenant), true},
		{"[new, old] accepts a new-secret tenant token", both, newOnly.TenantToken(dep, tenant), true},
		{"[new] rejects an old-secret tenant token", newOnly, oldOnly.TenantToken(dep, tenant), false},
		{"[old] rejects a new-secret tenant token", oldOnly, newOnly.TenantToken(dep, tenant), false},
	}
	for _, tt := range tenantTests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.signer.VerifyTenant(dep, tenant, tt.token); got != tt.want {
				t.Errorf("VerifyTenant = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestNewSigner(t *testing.T) {
	min := strings.Repeat("k", webhook.MinSecretLen)
	tests := []struct {
		name    string
		secrets []string
		wantErr bool
	}{
		{"nil", nil, true},
		{"empty list", []string{}, true},
		{"empty secret", []string{""}, true},
		{"one byte short", []string{min[1:]}, true},
		{"second secret short", []string{min, "short"}, true},
		{"first secret short", []string{"short", min}, true},
		{"minimum length", []string{min}, false},
		{"two secrets", []string{min, min + "x"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := webhook.NewSigner(tt.secrets)
			if gotErr := err != nil; gotErr != tt.wantErr {
				t.Fatalf("NewSigner error = %v, want error %v", err, tt.wantErr)
			}
			if err == nil && s == nil {
				t.Fatal("NewSigner returned nil signer without error")
			}
		})
	}
}

func TestNewURLs(t *testing.T) {
	s := mustSigner(t, "0123456789abcdef")
	tok := s.Token("dep-1")
	tests := []struct {
		name      string
		publicURL string
		want      string // CallbackURL("dep-1"); empty when NewURLs must fail
	}{
		{"https host", "https://gw.example.com", "https://gw.example.com" + webhook.PathPrefix + "dep-1/" + tok},
		{"trailing slash", "https://gw.example.com/", "https://gw.example.com" + webhook.PathPrefix + "dep-1/" + tok},
		{"http with port", "http://127.0.0.1:8080", "http://127.0.0.1:8080" + webhook.PathPrefix + "dep-1/" + tok},
		{"base path", "https://gw.example.com/comfy/", "https://gw.example.com/comfy" + webhook.PathPrefix + "dep-1/" + tok},
		{"empty", "", ""},
		{"relative path", "/webhooks", ""},
		{"scheme-relative", "//gw.example.com", ""},
		{"no scheme", "gw.example.com", ""},
		{"ftp", "ftp://gw.example.com", ""},
		{"javascript", "javascript:alert(1)", ""},
		{"no host", "https://", ""},
		{"query", "https://gw.example.com/?a=b", ""},
		{"empty query", "https://gw.example.com/?", ""},
		{"fragment", "https://gw.example.com/#frag", ""},
		{"empty fragment", "https://gw.example.com#", ""},
		{"unparsable", "https://gw.example.com/%zz", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := webhook.NewURLs(tt.publicURL, s)
			if tt.want == "" {
				if err == nil {
					t.Fatalf("NewURLs(%q) = %q, nil; want an error", tt.publicURL, u.CallbackURL("dep-1", ""))
				}
				return
			}
			if err != nil {
				t.Fatalf("NewURLs(%q): %v", tt.publicURL, err)
			}
			if got := u.CallbackURL("dep-1", ""); got != tt.want {
				t.Errorf("CallbackURL = %q, want %q", got, tt.want)
			}
		})
	}
	t.Run("tenant", func(t *testing.T) {
		u, err := webhook.NewURLs("https://gw.example.com/comfy/", s)
		if err != nil {
			t.Fatal(err)
		}
		want := "https://gw.example.com/comfy" + webhook.PathPrefix + "dep-1/t/tenant_A-9/" + s.TenantToken("dep-1", "tenant_A-9")
		if got := u.CallbackURL("dep-1", "tenant_A-9"); got != want {
			t.Errorf("CallbackURL(dep-1, tenant_A-9) = %q, want %q", got, want)
		}
	})
	t.Run("nil signer", func(t *testing.T) {
		if _, err := webhook.NewURLs("https://gw.example.com", nil); err == nil {
			t.Error("NewURLs with a nil signer: want an error")
		}
	})
}
