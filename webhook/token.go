// Package webhook receives RunComfy's callbacks: it authenticates them, parses
// every documented payload shape, and feeds them to the state tracker. It knows
// HTTP and nothing of gRPC.
//
// RunComfy does not sign callbacks, so the callback URL itself is the credential.
// It is the one thing RunComfy keeps for the gateway, so it also carries the
// tenant that submitted the request: a record lost from the store (a Redis
// restarted empty, an eviction) comes back with its rightful owner at the next
// callback, never with whoever asks for the id first. Two forms are served:
//
//	PathPrefix + "{deployment_id}/t/{tenant}/{token}"  token: HMAC-SHA256 under
//	    the webhook secret of "comfygate callback v2\x00", then the deployment
//	    id and the tenant, each preceded by its length (8 bytes, big-endian)
//	PathPrefix + "{deployment_id}/{token}"             token: HMAC-SHA256 of
//	    "comfygate callback v1\x00" + deployment id (no tenant)
//
// Tokens are unpadded base64url. The first form is handed out for a tenant's
// requests; the second when the gateway runs without API keys (tenant ""), and
// it stays valid for the URLs handed to RunComfy before tenants were carried:
// their callbacks set no owner. The tenant segment is a tenant name as API keys
// files allow it (letters, digits, '-' and '_'), so it needs no escaping.
//
// A callback for one deployment or tenant cannot be replayed against another,
// and rotating the secret (several are accepted, the first signs) invalidates
// every URL made with a retired one.
package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// PathPrefix is where callbacks are served on the HTTP listener:
// PathPrefix + "{deployment_id}/t/{tenant}/{token}", or, without a tenant,
// PathPrefix + "{deployment_id}/{token}".
const PathPrefix = "/webhooks/runcomfy/"

// tenantSegment introduces the tenant in a callback path.
const tenantSegment = "t"

// tokenContext and tenantTokenContext separate these MACs from any other use
// of the same secret, and the two forms from each other: a token without a
// tenant is never the token of some tenant.
const (
	tokenContext       = "comfygate callback v1\x00"
	tenantTokenContext = "comfygate callback v2\x00"
)

// MinSecretLen is the shortest accepted secret, in bytes.
const MinSecretLen = 16

// Signer makes and checks callback tokens.
type Signer struct {
	secrets [][]byte
}

// NewSigner accepts one or more secrets; the first signs, all verify.
func NewSigner(secrets []string) (*Signer, error) {
	if err := CheckSecrets(secrets); err != nil {
		return nil, err
	}
	s := &Signer{}
	for _, sec := range secrets {
		s.secrets = append(s.secrets, []byte(sec))
	}
	return s, nil
}

// CheckSecrets is NewSigner's check of its secrets, for a configuration to
// be refused before anything starts.
func CheckSecrets(secrets []string) error {
	if len(secrets) == 0 {
		return errors.New("webhook: at least one secret is required")
	}
	for i, sec := range secrets {
		if len(sec) < MinSecretLen {
			return fmt.Errorf("webhook: secret %d is shorter than %d bytes", i+1, MinSecretLen)
		}
	}
	return nil
}

// mac is the token's MAC. Without a tenant it is the original form, byte for
// byte, so that URLs already handed to RunComfy keep verifying. With one, both
// fields are length-prefixed: no (deployment, tenant) pair shares its message
// with another, whatever bytes they hold.
func mac(secret []byte, deploymentID, tenant string) []byte {
	m := hmac.New(sha256.New, secret)
	if tenant == "" {
		m.Write([]byte(tokenContext))
		m.Write([]byte(deploymentID))
		return m.Sum(nil)
	}
	m.Write([]byte(tenantTokenContext))
	m.Write(binary.BigEndian.AppendUint64(nil, uint64(len(deploymentID))))
	m.Write([]byte(deploymentID))
	m.Write(binary.BigEndian.AppendUint64(nil, uint64(len(tenant))))
	m.Write([]byte(tenant))
	return m.Sum(nil)
}

// Token is the credential for deploymentID's callbacks without a tenant:
// TenantToken(deploymentID, "").
func (s *Signer) Token(deploymentID string) string {
	return s.TenantToken(deploymentID, "")
}

// TenantToken is the credential for the callbacks of tenant's requests of
// deploymentID; tenant "" gives the form without a tenant.
func (s *Signer) TenantToken(deploymentID, tenant string) string {
	return base64.RawURLEncoding.EncodeToString(mac(s.secrets[0], deploymentID, tenant))
}

// Verify reports whether token authenticates deploymentID's callbacks without
// a tenant: VerifyTenant(deploymentID, "", token).
func (s *Signer) Verify(deploymentID, token string) bool {
	return s.VerifyTenant(deploymentID, "", token)
}

// VerifyTenant reports whether token authenticates the callbacks of tenant's
// requests of deploymentID (tenant "": the form without a tenant) under any
// accepted secret. Every secret is checked, in constant time, whatever
// matched.
func (s *Signer) VerifyTenant(deploymentID, tenant, token string) bool {
	got, err := base64.RawURLEncoding.Strict().DecodeString(token)
	// The decoder skips CR and LF; only the canonical spelling of a token is
	// one.
	if err != nil || len(got) != sha256.Size || base64.RawURLEncoding.EncodeToString(got) != token {
		return false
	}
	ok := false
	for _, sec := range s.secrets {
		if hmac.Equal(got, mac(sec, deploymentID, tenant)) {
			ok = true
		}
	}
	return ok
}

// Path is the callback path (under PathPrefix) for tenant's requests of
// deploymentID; tenant "" gives the form without a tenant.
func (s *Signer) Path(deploymentID, tenant string) string {
	if tenant == "" {
		return PathPrefix + url.PathEscape(deploymentID) + "/" + s.Token(deploymentID)
	}
	return PathPrefix + url.PathEscape(deploymentID) + "/" + tenantSegment + "/" + url.PathEscape(tenant) + "/" +
		s.TenantToken(deploymentID, tenant)
}

// parsePath splits an escaped callback path (PathPrefix removed) into its
// deployment id, tenant ("" for the form without one) and token. It checks
// the shape only; the caller checks the ids and the token.
func parsePath(p string) (deploymentID, tenant, token string, ok bool) {
	parts := strings.Split(p, "/")
	switch {
	case len(parts) == 2:
		return parts[0], "", parts[1], true
	case len(parts) == 4 && parts[1] == tenantSegment:
		return parts[0], parts[2], parts[3], true
	}
	return "", "", "", false
}

// URLs builds callback URLs under the gateway's public base URL.
type URLs struct {
	base   string
	signer *Signer
}

// NewURLs checks publicURL (an absolute http(s) URL, where RunComfy reaches
// this gateway's HTTP listener) and returns a URL builder.
func NewURLs(publicURL string, signer *Signer) (*URLs, error) {
	if err := CheckPublicURL(publicURL); err != nil {
		return nil, err
	}
	if signer == nil {
		return nil, errors.New("webhook: signer is required")
	}
	return &URLs{base: strings.TrimRight(publicURL, "/"), signer: signer}, nil
}

// CheckPublicURL is NewURLs's check of the public URL, for a configuration
// to be refused before anything starts.
func CheckPublicURL(publicURL string) error {
	u, err := url.Parse(publicURL)
	// ContainsAny, not only RawQuery and Fragment: a bare "?" or "#" leaves both
	// empty, and the callback path appended after it would become query or fragment.
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || strings.ContainsAny(publicURL, "?#") {
		return fmt.Errorf("webhook: public URL %q must be an absolute http(s) URL without query", publicURL)
	}
	return nil
}

// CallbackURL is the URL RunComfy is asked to call for tenant's requests of
// deploymentID (tenant "": the gateway runs without API keys).
func (u *URLs) CallbackURL(deploymentID, tenant string) string {
	return u.base + u.signer.Path(deploymentID, tenant)
}
