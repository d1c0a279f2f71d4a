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
// MAC, encoding) fails here instead of silently invalidating every callback URL
// already handed to RunComfy:
//
//	python3 -c 'import hmac,hashlib,base64; print(base64.urlsafe_b64encode(hmac.new(
//	  b"0123456789abcdef", b"comfygate callback v1\x00dep-1", hashlib.sha256).digest()).rstrip(b"=").decode())'
//	printf 'comfygate callback v1\0dep-1' | openssl dgst -sha256 -hmac 0123456789abcdef -binary |
//	  base64 | tr '+/' '-_' | tr -d '='
//
// Both print Ab0InDo6qR_dB2dIG3KFEA06HPByrClnxWgCP0OvkFw.
type tokenVector struct {
	Secret       string `json:"secret"`
	DeploymentID string `json:"deployment_id"`
	Token        string `json:"token"`
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
		t.Run(v.DeploymentID, func(t *testing.T) {
			s := mustSigner(t, v.Secret)
			if got := s.Token(v.DeploymentID); got != v.Token {
				t.Errorf("Token(%q) = %q, want %q", v.DeploymentID, got, v.Token)
			}
			if !s.Verify(v.DeploymentID, v.Token) {
				t.Errorf("Verify(%q, vector token) = false, want true", v.DeploymentID)
			}
			urls, err := webhook.NewURLs("https://gw.example.com", s)
			if err != nil {
				t.Fatal(err)
			}
			want := "https://gw.example.com" + webhook.PathPrefix + v.DeploymentID + "/" + v.Token
			if got := urls.CallbackURL(v.DeploymentID, ""); got != want {
				t.Errorf("CallbackURL = %q, want %q", got, want)
			}
		})
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
	t.Run("nil signer", func(t *testing.T) {
		if _, err := webhook.NewURLs("https://gw.example.com", nil); err == nil {
			t.Error("NewURLs with a nil signer: want an error")
		}
	})
}
