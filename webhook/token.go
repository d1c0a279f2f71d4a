// Package webhook receives RunComfy's callbacks: it authenticates them, parses
// every documented payload shape, and feeds them to the state tracker. It knows
// HTTP and nothing of gRPC.
//
// RunComfy does not sign callbacks, so the callback URL itself is the credential:
// it carries an HMAC of the deployment id under the gateway's webhook secret. A
// callback for one deployment cannot be replayed against another, and rotating
// the secret (several are accepted, the first signs) invalidates every URL made
// with a retired one.
package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// PathPrefix is where callbacks are served on the HTTP listener:
// PathPrefix + "{deployment_id}/{token}".
const PathPrefix = "/webhooks/runcomfy/"

// tokenContext separates these MACs from any other use of the same secret.
const tokenContext = "comfygate callback v1\x00"

// MinSecretLen is the shortest accepted secret, in bytes.
const MinSecretLen = 16

// Signer makes and checks callback tokens.
type Signer struct {
	secrets [][]byte
}

// NewSigner accepts one or more secrets; the first signs, all verify.
func NewSigner(secrets []string) (*Signer, error) {
	if len(secrets) == 0 {
		return nil, errors.New("webhook: at least one secret is required")
	}
	s := &Signer{}
	for i, sec := range secrets {
		if len(sec) < MinSecretLen {
			return nil, fmt.Errorf("webhook: secret %d is shorter than %d bytes", i+1, MinSecretLen)
		}
		s.secrets = append(s.secrets, []byte(sec))
	}
	return s, nil
}

func mac(secret []byte, deploymentID string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(tokenContext))
	m.Write([]byte(deploymentID))
	return m.Sum(nil)
}

// Token is the credential for deploymentID's callbacks.
func (s *Signer) Token(deploymentID string) string {
	return base64.RawURLEncoding.EncodeToString(mac(s.secrets[0], deploymentID))
}

// Verify reports whether token authenticates deploymentID under any accepted
// secret. Every secret is checked, in constant time, whatever matched.
func (s *Signer) Verify(deploymentID, token string) bool {
	got, err := base64.RawURLEncoding.Strict().DecodeString(token)
	// The decoder skips CR and LF; only the canonical spelling of a token is
	// one.
	if err != nil || len(got) != sha256.Size || base64.RawURLEncoding.EncodeToString(got) != token {
		return false
	}
	ok := false
	for _, sec := range s.secrets {
		if hmac.Equal(got, mac(sec, deploymentID)) {
			ok = true
		}
	}
	return ok
}

// URLs builds callback URLs under the gateway's public base URL.
type URLs struct {
	base   string
	signer *Signer
}

// NewURLs checks publicURL (an absolute http(s) URL, where RunComfy reaches
// this gateway's HTTP listener) and returns a URL builder.
func NewURLs(publicURL string, signer *Signer) (*URLs, error) {
	u, err := url.Parse(publicURL)
	// ContainsAny, not only RawQuery and Fragment: a bare "?" or "#" leaves both
	// empty, and the callback path appended after it would become query or fragment.
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || strings.ContainsAny(publicURL, "?#") {
		return nil, fmt.Errorf("webhook: public URL %q must be an absolute http(s) URL without query", publicURL)
	}
	if signer == nil {
		return nil, errors.New("webhook: signer is required")
	}
	return &URLs{base: strings.TrimRight(publicURL, "/"), signer: signer}, nil
}

// CallbackURL is the URL RunComfy is asked to call for deploymentID's requests.
func (u *URLs) CallbackURL(deploymentID, tenant string) string {
	return u.base + PathPrefix + url.PathEscape(deploymentID) + "/" + u.signer.Token(deploymentID)
}
