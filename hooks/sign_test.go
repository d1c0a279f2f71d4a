package hooks_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/hooks"
)

// specVerify is a receiver written from the text of the Standard Webhooks
// specification, sharing no code with sign.go, so that Sign is checked against
// the specification and not against itself. It checks the signature only (the
// timestamp window is Verify's business and tested there): the signed content
// is "id.timestamp.body", HMAC-SHA256 keyed with the base64 part of the whsec_
// secret, and the header is a space-separated list of "version,base64" entries
// of which any "v1" one may match, compared in constant time.
func specVerify(t testing.TB, secrets []string, h http.Header, body []byte) bool {
	t.Helper()
	id, ts, sigs := h.Get("webhook-id"), h.Get("webhook-timestamp"), h.Get("webhook-signature")
	if id == "" || ts == "" || sigs == "" {
		return false
	}
	content := []byte(id + "." + ts + "." + string(body))
	for _, secret := range secrets {
		key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
		if err != nil {
			t.Fatalf("test secret is not base64: %v", err)
		}
		m := hmac.New(sha256.New, key)
		m.Write(content)
		expected := m.Sum(nil)
		for _, entry := range strings.Split(sigs, " ") {
			version, enc, ok := strings.Cut(entry, ",")
			if !ok || version != "v1" {
				continue
			}
			got, err := base64.StdEncoding.DecodeString(enc)
			if err != nil {
				continue
			}
			if hmac.Equal(got, expected) {
				return true
			}
		}
	}
	return false
}

// vector is one entry of testdata/sign_vectors.json: a signature published by
// the specification's authors, not one computed by this package.
type vector struct {
	Name      string `json:"name"`
	Source    string `json:"source"`
	Secret    string `json:"secret"`
	ID        string `json:"id"`
	Timestamp int64  `json:"timestamp"`
	Body      string `json:"body"`
	Signature string `json:"signature"`
}

func readVectors(t *testing.T) []vector {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", "sign_vectors.json"))
	if err != nil {
		t.Fatal(err)
	}
	var vs []vector
	if err := json.Unmarshal(raw, &vs); err != nil {
		t.Fatal(err)
	}
	if len(vs) == 0 {
		t.Fatal("no vectors in testdata/sign_vectors.json")
	}
	return vs
}

func mustParse(t testing.TB, s string) hooks.Secret {
	t.Helper()
	sec, err := hooks.ParseSecret(s)
	if err != nil {
		t.Fatalf("ParseSecret: %v", err)
	}
	return sec
}

func mustNew(t testing.TB) hooks.Secret {
	t.Helper()
	sec, err := hooks.NewSecret()
	if err != nil {
		t.Fatalf("NewSecret: %v", err)
	}
	return sec
}

func TestSignSpecVectors(t *testing.T) {
	for _, v := range readVectors(t) {
		t.Run(v.Name, func(t *testing.T) {
			sec := mustParse(t, v.Secret)
			if got := sec.String(); got != v.Secret {
				t.Errorf("String() = %q, want %q", got, v.Secret)
			}
			ts := time.Unix(v.Timestamp, 0)
			body := []byte(v.Body)
			if got := hooks.Sign([]hooks.Secret{sec}, v.ID, ts, body); got != v.Signature {
				t.Errorf("Sign = %q, want %q (%s)", got, v.Signature, v.Source)
			}

			h := http.Header{}
			hooks.SetHeaders(h, []hooks.Secret{sec}, v.ID, ts, body)
			for name, want := range map[string]string{
				"webhook-id":        v.ID,
				"webhook-timestamp": strconv.FormatInt(v.Timestamp, 10),
				"webhook-signature": v.Signature,
			} {
				if got := h.Get(name); got != want {
					t.Errorf("header %s = %q, want %q", name, got, want)
				}
			}
			if !specVerify(t, []string{v.Secret}, h, body) {
				t.Error("the specification's receiver refused the headers SetHeaders wrote")
			}
			if err := hooks.Verify([]hooks.Secret{sec}, h, body, ts, 0); err != nil {
				t.Errorf("Verify: %v", err)
			}
		})
	}
}

// TestSignRotation signs with one and with two secrets and checks the header
// with the specification's receiver: every receiver that knows any one of the
// secrets accepts, one that knows another secret does not, and the entries are
// "v1," ones in the order of the secrets, separated by single spaces.
func TestSignRotation(t *testing.T) {
	old, cur, stranger := mustNew(t), mustNew(t), mustNew(t)
	id := "msg_rotation"
	ts := time.Unix(1_700_000_000, 0)
	body := []byte(`{"type":"request.succeeded"}`)

	tests := []struct {
		name    string
		secrets []hooks.Secret
	}{
		{"one secret", []hooks.Secret{cur}},
		{"old and new during a rotation", []hooks.Secret{old, cur}},
		{"new and old in the other order", []hooks.Secret{cur, old}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			hooks.SetHeaders(h, tc.secrets, id, ts, body)
			sig := h.Get("webhook-signature")

			entries := strings.Split(sig, " ")
			if got, want := len(entries), len(tc.secrets); got != want {
				t.Fatalf("%d entries in %q, want %d", got, sig, want)
			}
			for i, e := range entries {
				if !strings.HasPrefix(e, "v1,") || len(e) == len("v1,") {
					t.Errorf("entry %d = %q, want v1,<signature>", i, e)
				}
				// Entry i alone must be the signature of secret i.
				one := h.Clone()
				one.Set("webhook-signature", e)
				if !specVerify(t, []string{tc.secrets[i].String()}, one, body) {
					t.Errorf("entry %d is not the signature of secret %d", i, i)
				}
			}

			for i, s := range tc.secrets {
				if !specVerify(t, []string{s.String()}, h, body) {
					t.Errorf("a receiver knowing only secret %d refused", i)
				}
				if err := hooks.Verify([]hooks.Secret{s}, h, body, ts, time.Minute); err != nil {
					t.Errorf("Verify with only secret %d: %v", i, err)
				}
			}
			if specVerify(t, []string{stranger.String()}, h, body) {
				t.Error("a receiver with an unrelated secret accepted")
			}
			if err := hooks.Verify([]hooks.Secret{stranger}, h, body, ts, time.Minute); !errors.Is(err, hooks.ErrNoMatchingSignature) {
				t.Errorf("Verify with an unrelated secret: %v, want ErrNoMatchingSignature", err)
			}
		})
	}
}

func TestSignSkipsZeroSecret(t *testing.T) {
	sec := mustNew(t)
	ts := time.Unix(1_700_000_000, 0)
	got := hooks.Sign([]hooks.Secret{{}, sec, {}}, "msg_1", ts, nil)
	want := hooks.Sign([]hooks.Secret{sec}, "msg_1", ts, nil)
	if got != want {
		t.Errorf("Sign with zero secrets around one = %q, want %q", got, want)
	}
	if got := hooks.Sign([]hooks.Secret{{}}, "msg_1", ts, nil); got != "" {
		t.Errorf("Sign with only a zero secret = %q, want empty", got)
	}
}

func TestVerify(t *testing.T) {
	sec, other := mustNew(t), mustNew(t)
	const id = "msg_p5jXN8AQM9LWM0D4loKWxJek"
	sent := time.Unix(1_700_000_000, 0)
	body := []byte(`{"test": 2432232314}`)
	const tol = 5 * time.Minute

	type input struct {
		secrets []hooks.Secret
		h       http.Header
		body    []byte
		now     time.Time
		tol     time.Duration
	}
	tests := []struct {
		name    string
		change  func(in *input)
		wantErr error // nil: accepted
	}{
		{"as sent", func(*input) {}, nil},
		{"received at the end of the window", func(in *input) { in.now = sent.Add(tol) }, nil},
		{"received before the sender's clock, within the window", func(in *input) { in.now = sent.Add(-tol) }, nil},
		{"zero tolerance means the default", func(in *input) { in.now = sent.Add(hooks.DefaultTolerance); in.tol = 0 }, nil},
		{"other versions and bad v1 entries around the good one", func(in *input) {
			in.h.Set("webhook-signature", "v2,AAAA v1,bm90IGl0 v1a,AAAA "+in.h.Get("webhook-signature")+" v1,")
		}, nil},
		{"signature header split over two lines", func(in *input) {
			good := in.h.Get("webhook-signature")
			in.h.Set("webhook-signature", "v1,bm90IGl0")
			in.h.Add("webhook-signature", good)
		}, nil},
		{"one of two secrets matches", func(in *input) { in.secrets = []hooks.Secret{other, sec} }, nil},

		{"tampered body", func(in *input) { in.body = []byte(`{"test": 2432232315}`) }, hooks.ErrNoMatchingSignature},
		{"body with a trailing newline", func(in *input) { in.body = append(bytes.Clone(in.body), '\n') }, hooks.ErrNoMatchingSignature},
		{"wrong id", func(in *input) { in.h.Set("webhook-id", "msg_other") }, hooks.ErrNoMatchingSignature},
		{"timestamp changed within the window", func(in *input) {
			in.h.Set("webhook-timestamp", strconv.FormatInt(sent.Unix()+1, 10))
		}, hooks.ErrNoMatchingSignature},
		{"timestamp with a leading zero", func(in *input) {
			in.h.Set("webhook-timestamp", "0"+strconv.FormatInt(sent.Unix(), 10))
		}, hooks.ErrNoMatchingSignature},
		{"wrong secret", func(in *input) { in.secrets = []hooks.Secret{other} }, hooks.ErrNoMatchingSignature},
		{"signature of another secret", func(in *input) {
			in.h.Set("webhook-signature", hooks.Sign([]hooks.Secret{other}, id, sent, body))
		}, hooks.ErrNoMatchingSignature},
		{"timestamp too old", func(in *input) { in.now = sent.Add(tol + time.Second) }, hooks.ErrTooOld},
		{"timestamp too old for the default tolerance", func(in *input) {
			in.now = sent.Add(hooks.DefaultTolerance + time.Second)
			in.tol = 0
		}, hooks.ErrTooOld},
		{"timestamp too far in the future", func(in *input) { in.now = sent.Add(-tol - time.Second) }, hooks.ErrTooNew},
		{"timestamp far in the future", func(in *input) { in.h.Set("webhook-timestamp", "9223372036854775807") }, hooks.ErrTooNew},
		{"timestamp out of range", func(in *input) { in.h.Set("webhook-timestamp", "99999999999999999999") }, hooks.ErrBadTimestamp},
		{"timestamp not a number", func(in *input) { in.h.Set("webhook-timestamp", "yesterday") }, hooks.ErrBadTimestamp},
		{"timestamp with a sign", func(in *input) {
			in.h.Set("webhook-timestamp", "+"+strconv.FormatInt(sent.Unix(), 10))
		}, hooks.ErrBadTimestamp},
		{"timestamp in milliseconds", func(in *input) {
			in.h.Set("webhook-timestamp", strconv.FormatInt(sent.UnixMilli(), 10))
		}, hooks.ErrTooNew},
		{"missing webhook-id", func(in *input) { in.h.Del("webhook-id") }, hooks.ErrMissingHeader},
		{"missing webhook-timestamp", func(in *input) { in.h.Del("webhook-timestamp") }, hooks.ErrMissingHeader},
		{"missing webhook-signature", func(in *input) { in.h.Del("webhook-signature") }, hooks.ErrMissingHeader},
		{"blank webhook-signature", func(in *input) { in.h.Set("webhook-signature", "  ") }, hooks.ErrMissingHeader},
		{"unknown version prefix", func(in *input) {
			_, sig, _ := strings.Cut(in.h.Get("webhook-signature"), ",")
			in.h.Set("webhook-signature", "v2,"+sig)
		}, hooks.ErrNoSupportedSignature},
		{"asymmetric signature only", func(in *input) { in.h.Set("webhook-signature", "v1a,AAAA") }, hooks.ErrNoSupportedSignature},
		{"no version at all", func(in *input) {
			_, sig, _ := strings.Cut(in.h.Get("webhook-signature"), ",")
			in.h.Set("webhook-signature", sig)
		}, hooks.ErrNoSupportedSignature},
		{"empty v1 signature", func(in *input) { in.h.Set("webhook-signature", "v1,") }, hooks.ErrNoMatchingSignature},
		{"no secrets", func(in *input) { in.secrets = nil }, hooks.ErrNoSecret},
		{"only a zero secret", func(in *input) { in.secrets = []hooks.Secret{{}} }, hooks.ErrNoSecret},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := input{secrets: []hooks.Secret{sec}, h: http.Header{}, body: body, now: sent, tol: tol}
			hooks.SetHeaders(in.h, []hooks.Secret{sec}, id, sent, body)
			tc.change(&in)
			err := hooks.Verify(in.secrets, in.h, in.body, in.now, in.tol)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Verify: %v, want accepted", err)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Verify: %v, want %v", err, tc.wantErr)
			}
		})
	}
}

// TestVerifyErrorsNameTheCheck: a refusal says which header or bound failed, so
// a receiver's log is enough to tell a clock problem from a wrong secret.
func TestVerifyErrorsNameTheCheck(t *testing.T) {
	sec := mustNew(t)
	sent := time.Unix(1_700_000_000, 0)
	for _, name := range []string{"webhook-id", "webhook-timestamp", "webhook-signature"} {
		h := http.Header{}
		hooks.SetHeaders(h, []hooks.Secret{sec}, "msg_1", sent, nil)
		h.Del(name)
		err := hooks.Verify([]hooks.Secret{sec}, h, nil, sent, time.Minute)
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("without %s: error %v does not name the header", name, err)
		}
	}
}

func TestParseSecret(t *testing.T) {
	enc := func(n int) string { return base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0xa5}, n)) }
	tests := []struct {
		name    string
		in      string
		wantErr string // "" : accepted; else a fragment of the error
	}{
		{"specification's example", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", ""},
		{"24 bytes", "whsec_" + enc(24), ""},
		{"32 bytes", "whsec_" + enc(32), ""},
		{"64 bytes", "whsec_" + enc(64), ""},
		{"25 bytes, padded", "whsec_" + enc(25), ""},
		{"empty", "", "does not start with"},
		{"raw base64 without the prefix", enc(32), "does not start with"},
		{"prefix in capitals", "WHSEC_" + enc(32), "does not start with"},
		{"a public key", "whpk_" + enc(32), "does not start with"},
		{"leading space", " whsec_" + enc(32), "does not start with"},
		{"prefix only", "whsec_", "holds 0 bytes"},
		{"23 bytes", "whsec_" + enc(23), "holds 23 bytes"},
		{"16 bytes", "whsec_" + enc(16), "holds 16 bytes"},
		{"65 bytes", "whsec_" + enc(65), "holds 65 bytes"},
		{"padding missing", "whsec_" + strings.TrimRight(enc(25), "="), "not standard base64"},
		{"URL-safe alphabet", "whsec_" + strings.NewReplacer("+", "-", "/", "_").Replace(base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0xfb, 0xff}, 16))), "not standard base64"},
		{"not base64", "whsec_" + strings.Repeat("!", 32), "not standard base64"},
		{"trailing space", "whsec_" + enc(32) + " ", "not standard base64"},
		{"line break inside", "whsec_" + enc(32)[:20] + "\n" + enc(32)[20:], "line break"},
		{"non-zero padding bits", "whsec_" + enc(25)[:len(enc(25))-3] + "x==", "not standard base64"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := hooks.ParseSecret(tc.in)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("ParseSecret: %v", err)
				}
				if got.String() != tc.in {
					t.Errorf("String() = %q, want the input back", got.String())
				}
				return
			}
			if err == nil {
				t.Fatalf("ParseSecret accepted %q", tc.in)
			}
			if !errors.Is(err, hooks.ErrInvalidSecret) {
				t.Errorf("error %v does not wrap ErrInvalidSecret", err)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q, want it to say %q", err, tc.wantErr)
			}
			// The secret must not leak into logs through the error.
			if body := strings.TrimSpace(strings.TrimPrefix(tc.in, "whsec_")); len(body) >= 8 && strings.Contains(err.Error(), body[:8]) {
				t.Errorf("error %q repeats the secret", err)
			}
		})
	}
}

func TestNewSecret(t *testing.T) {
	a, b := mustNew(t), mustNew(t)
	if a.String() == b.String() {
		t.Fatal("two new secrets are equal")
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(a.String(), "whsec_"))
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) != 32 {
		t.Errorf("new secret holds %d bytes, want 32", len(raw))
	}
	if back := mustParse(t, a.String()); back != a {
		t.Error("ParseSecret(String()) is not the same secret")
	}
}

func TestSecretStaysOutOfStructuredLogs(t *testing.T) {
	sec := mustNew(t)
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("rotated", "secret", sec)
	key := strings.TrimPrefix(sec.String(), "whsec_")
	if strings.Contains(buf.String(), key) {
		t.Errorf("log line %q holds the secret", buf.String())
	}
}

// FuzzVerify feeds arbitrary headers and bodies to Verify. It must never panic,
// and whatever it accepts the specification's receiver must accept too, within
// the tolerance.
func FuzzVerify(f *testing.F) {
	const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	const now = 1614265330
	sec := mustParse(f, secret)
	f.Add("msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=", []byte(`{"test": 2432232314}`))
	f.Add("msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", "v2,x v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE= v1,", []byte(`{"test": 2432232314}`))
	f.Add("", "", "", []byte(nil))
	f.Add("a.b", "-1", "v1", []byte("."))
	f.Add("msg", "99999999999999999999", ",,, v1,,", []byte{0xff, 0x00})
	f.Add("msg", "1614265330", "  v1,\x00 \t v1a,==", []byte("x"))
	f.Fuzz(func(t *testing.T, id, ts, sig string, body []byte) {
		h := http.Header{}
		h.Set("webhook-id", id)
		h.Set("webhook-timestamp", ts)
		h.Set("webhook-signature", sig)
		err := hooks.Verify([]hooks.Secret{sec}, h, body, time.Unix(now, 0), time.Minute)
		if err != nil {
			return
		}
		if !specVerify(t, []string{secret}, h, body) {
			t.Fatalf("Verify accepted id=%q ts=%q sig=%q body=%q, which the specification's receiver refuses", id, ts, sig, body)
		}
		n, perr := strconv.ParseInt(ts, 10, 64)
		if perr != nil || n < now-60 || n > now+60 {
			t.Fatalf("Verify accepted timestamp %q outside the window", ts)
		}
	})
}
