// Package hooks holds what comfygate needs to send webhooks to its tenants' own
// services: signatures in the Standard Webhooks form (so a tenant can verify a
// delivery with any of that specification's libraries) and an HTTP client that
// is safe to point at whatever URL a tenant typed (it refuses to reach the
// gateway's own network).
package hooks

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The headers of a signed delivery, named by the Standard Webhooks specification.
const (
	HeaderID        = "webhook-id"
	HeaderTimestamp = "webhook-timestamp"
	HeaderSignature = "webhook-signature"
)

// secretPrefix marks a symmetric signing secret, so that a secret pasted into the
// wrong place is recognised, and a public key (whpk_) is never taken for one.
const secretPrefix = "whsec_"

// The specification's bounds on a symmetric secret's length: 192 to 512 bits.
const (
	minSecretBytes = 24
	maxSecretBytes = 64
	newSecretBytes = 32
)

// DefaultTolerance is how far a delivery's timestamp may be from the receiver's
// clock when Verify is given no tolerance; it is the value the specification's
// reference libraries use.
const DefaultTolerance = 5 * time.Minute

// signatureVersion identifies an HMAC-SHA256 signature; "v1a" (ed25519) is the
// other version the specification defines, and this package does not produce it.
const signatureVersion = "v1"

// ErrInvalidSecret is wrapped by every error of ParseSecret, so a caller can tell
// a bad secret from other configuration errors without matching text.
var ErrInvalidSecret = errors.New("invalid webhook signing secret")

// Errors of Verify, each naming the check that failed, so that a receiver can
// log (and a test can assert) why a delivery was refused.
var (
	// ErrMissingHeader: one of webhook-id, webhook-timestamp or
	// webhook-signature is absent or empty.
	ErrMissingHeader = errors.New("missing webhook header")
	// ErrBadTimestamp: webhook-timestamp is not a decimal count of seconds.
	ErrBadTimestamp = errors.New("malformed webhook-timestamp")
	// ErrTooOld: the timestamp is further in the past than the tolerance; the
	// delivery may be a replay.
	ErrTooOld = errors.New("webhook timestamp too old")
	// ErrTooNew: the timestamp is further in the future than the tolerance.
	ErrTooNew = errors.New("webhook timestamp too far in the future")
	// ErrNoSupportedSignature: webhook-signature holds no "v1," entry, only
	// versions this package does not verify.
	ErrNoSupportedSignature = errors.New("no v1 signature in webhook-signature")
	// ErrNoMatchingSignature: no v1 signature matches any of the secrets; the
	// body, id or timestamp was changed, or the secret is not the sender's.
	ErrNoMatchingSignature = errors.New("no matching webhook signature")
	// ErrNoSecret: Verify was given no usable secret, so nothing can match.
	ErrNoSecret = errors.New("no webhook secret to verify with")
)

// Secret is a signing secret in the "whsec_" form: "whsec_" + standard base64 of
// 24 to 64 random bytes. The key is held in a string so that a copied Secret
// cannot be changed through another copy. The zero Secret holds no key: Sign and
// Verify skip it rather than sign with an empty, guessable key.
type Secret struct {
	key string
}

// ParseSecret reads a secret in the "whsec_" form. Its errors say what is wrong
// (prefix, encoding, length) but never repeat the secret, which would put it in
// logs.
func ParseSecret(s string) (Secret, error) {
	enc, ok := strings.CutPrefix(s, secretPrefix)
	if !ok {
		return Secret{}, fmt.Errorf("%w: it does not start with %q", ErrInvalidSecret, secretPrefix)
	}
	// DecodeString skips line breaks; a secret with one was mangled on its way
	// here, and String would not give it back as it came.
	if strings.ContainsAny(enc, "\r\n") {
		return Secret{}, fmt.Errorf("%w: the part after %q contains a line break", ErrInvalidSecret, secretPrefix)
	}
	key, err := base64.StdEncoding.Strict().DecodeString(enc)
	if err != nil {
		// A CorruptInputError carries only an offset, not the input.
		return Secret{}, fmt.Errorf("%w: the part after %q is not standard base64: %w", ErrInvalidSecret, secretPrefix, err)
	}
	if len(key) < minSecretBytes || len(key) > maxSecretBytes {
		return Secret{}, fmt.Errorf("%w: it holds %d bytes, want %d to %d", ErrInvalidSecret, len(key), minSecretBytes, maxSecretBytes)
	}
	return Secret{key: string(key)}, nil
}

// NewSecret makes a secret of 32 random bytes (256 bits, the middle of the
// specification's range) for a tenant that has none.
func NewSecret() (Secret, error) {
	b := make([]byte, newSecretBytes)
	if _, err := rand.Read(b); err != nil {
		return Secret{}, fmt.Errorf("reading random bytes for a webhook secret: %w", err)
	}
	return Secret{key: string(b)}, nil
}

// String returns the secret in its "whsec_" form, the form a tenant is shown
// and ParseSecret reads back. It is the secret itself: never log it.
func (s Secret) String() string {
	return secretPrefix + base64.StdEncoding.EncodeToString([]byte(s.key))
}

// LogValue keeps the key out of structured logs: slog shows a placeholder
// instead of calling String.
func (s Secret) LogValue() slog.Value {
	return slog.StringValue(secretPrefix + "[redacted]")
}

// Sign returns the webhook-signature header value: one "v1,<base64 HMAC-SHA256
// over id.timestamp.body>" per secret, separated by single spaces, in the order
// given. Several secrets are active while a tenant rotates its secret, and a
// receiver knowing either one must accept the delivery. Zero Secrets are
// skipped. The id must not contain a '.', which would make the signed content
// ambiguous; comfygate's ids ("msg_" and base32) never do.
func Sign(secrets []Secret, id string, ts time.Time, body []byte) string {
	unix := strconv.FormatInt(ts.Unix(), 10)
	var b strings.Builder
	for _, s := range secrets {
		if s.key == "" {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(signatureVersion)
		b.WriteByte(',')
		b.WriteString(base64.StdEncoding.EncodeToString(mac(s, id, unix, body)))
	}
	return b.String()
}

// SetHeaders sets webhook-id, webhook-timestamp (Unix seconds) and
// webhook-signature on an outgoing delivery, signing exactly what they carry.
func SetHeaders(h http.Header, secrets []Secret, id string, ts time.Time, body []byte) {
	h.Set(HeaderID, id)
	h.Set(HeaderTimestamp, strconv.FormatInt(ts.Unix(), 10))
	h.Set(HeaderSignature, Sign(secrets, id, ts, body))
}

// Verify is what a receiver does with a delivery: it checks that the three
// headers are present, that the timestamp is within tolerance of now (a
// tolerance of zero or less means DefaultTolerance), and that one of the "v1,"
// signatures matches one of secrets, compared in constant time. Other signature
// versions are ignored, as the specification asks. The error wraps the sentinel
// of the first check that failed. Comfygate sends and does not receive; this is
// here for its tests and for tenants writing a receiver in Go.
func Verify(secrets []Secret, h http.Header, body []byte, now time.Time, tolerance time.Duration) error {
	id := h.Get(HeaderID)
	unix := h.Get(HeaderTimestamp)
	// A proxy may split one header into several lines; every entry counts.
	sigs := strings.Join(h.Values(HeaderSignature), " ")
	for _, hv := range []struct{ name, value string }{{HeaderID, id}, {HeaderTimestamp, unix}, {HeaderSignature, sigs}} {
		if strings.TrimSpace(hv.value) == "" {
			return fmt.Errorf("%w: %s", ErrMissingHeader, hv.name)
		}
	}

	ts, err := parseUnix(unix)
	if err != nil {
		return err
	}
	if tolerance <= 0 {
		tolerance = DefaultTolerance
	}
	if now.Sub(ts) > tolerance {
		return fmt.Errorf("%w: sent at %s, %s before now (tolerance %s)", ErrTooOld, ts.UTC().Format(time.RFC3339), now.Sub(ts).Truncate(time.Second), tolerance)
	}
	if ts.Sub(now) > tolerance {
		return fmt.Errorf("%w: sent at %s, %s after now (tolerance %s)", ErrTooNew, ts.UTC().Format(time.RFC3339), ts.Sub(now).Truncate(time.Second), tolerance)
	}

	// One expected signature per usable secret, computed once, whatever the
	// number of entries in the header.
	var want [][]byte
	for _, s := range secrets {
		if s.key == "" {
			continue
		}
		sum := mac(s, id, unix, body)
		enc := make([]byte, base64.StdEncoding.EncodedLen(len(sum)))
		base64.StdEncoding.Encode(enc, sum)
		want = append(want, enc)
	}
	if len(want) == 0 {
		return ErrNoSecret
	}

	supported := false
	// The specification separates entries by spaces; a tab or other white space
	// is part of an entry (and spoils it), as in the reference libraries.
	for entry := range strings.SplitSeq(sigs, " ") {
		version, sig, ok := strings.Cut(entry, ",")
		if !ok || version != signatureVersion {
			continue
		}
		supported = true
		for _, w := range want {
			if hmac.Equal([]byte(sig), w) {
				return nil
			}
		}
	}
	if !supported {
		return ErrNoSupportedSignature
	}
	return ErrNoMatchingSignature
}

// maxUnix is a timestamp in the year 36812, beyond which parseUnix clamps.
const maxUnix = 1 << 40

// parseUnix reads webhook-timestamp: decimal digits only, so that "+5", "-5" or
// " 5", which strconv would take or a sender might sign differently, are refused.
func parseUnix(v string) (time.Time, error) {
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return time.Time{}, fmt.Errorf("%w: not a decimal number of seconds", ErrBadTimestamp)
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("%w: %w", ErrBadTimestamp, err)
	}
	// time.Unix overflows (and wraps into the past) near the int64 limit; a
	// clamped value is still far enough ahead to be refused as too new.
	return time.Unix(min(n, maxUnix), 0), nil
}

// mac is HMAC-SHA256 over "id.unix.body", the content the specification signs;
// unix is the timestamp exactly as it travels in webhook-timestamp.
func mac(s Secret, id, unix string, body []byte) []byte {
	m := hmac.New(sha256.New, []byte(s.key))
	m.Write([]byte(id))
	m.Write([]byte{'.'})
	m.Write([]byte(unix))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}
