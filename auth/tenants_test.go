package auth

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/comfygate/comfygate/runcomfy"
)

// whsec is a well-formed signing secret of n bytes, distinct for each seed.
func whsec(seed string, n int) string {
	var b []byte
	for i := 0; len(b) < n; i++ {
		h := sha256.Sum256(fmt.Appendf(nil, "%s/%d", seed, i))
		b = append(b, h[:]...)
	}
	return secretPrefix + base64.StdEncoding.EncodeToString(b[:n])
}

// urlToken is in the query of test endpoint URLs: no error may show it.
const urlToken = "tok-5e3a9f1c2b7d"

// fixture holds the values the test files are written with, and writes
// them: "$KEYA" in a file's text stands for keyA, and so on.
type fixture struct {
	values    map[string]string
	sensitive []string // every key and secret, and urlToken
}

func newFixture() fixture {
	secA, secB := whsec("a", 32), whsec("b", 40)
	secMin, secMax := whsec("min", MinSecretLen), whsec("max", MaxSecretLen)
	secShort, secLong := whsec("short", MinSecretLen-1), whsec("long", MaxSecretLen+1)
	// A secret of 25 bytes ends "X==", X carrying 2 bits: set one of the 4
	// others and the base64 is no longer canonical, which Strict refuses.
	odd := whsec("odd", 25)
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	x := strings.IndexByte(alphabet, odd[len(odd)-3])
	secOdd := odd[:len(odd)-3] + string(alphabet[x+1]) + "=="
	secURL := strings.NewReplacer("+", "-", "/", "_").Replace(whsec("url", 33)) // 33 bytes: no padding
	for !strings.ContainsAny(secURL[len(secretPrefix):], "-_") {
		panic("the URL-safe test secret has no URL-safe character")
	}
	f := fixture{values: map[string]string{
		"$KEYA": keyA, "$KEYB": keyB, "$KEYC": keyC, "$KEYX": keyX,
		"$KEY16": key16, "$KEY15": key15,
		"$SECA": secA, "$SECB": secB, "$SECMIN": secMin, "$SECMAX": secMax,
		"$SECSHORT": secShort, "$SECLONG": secLong, "$SECODD": secOdd, "$SECURL": secURL,
		"$SECNOPAD": strings.TrimRight(whsec("nopad", 25), "="),
		"$TOKEN":    urlToken,
	}}
	for _, v := range f.values {
		f.sensitive = append(f.sensitive, v)
	}
	return f
}

func (f fixture) expand(s string) string {
	var pairs []string
	for k, v := range f.values {
		pairs = append(pairs, k, v)
	}
	// No placeholder is a prefix of another, so the order does not matter.
	return strings.NewReplacer(pairs...).Replace(s)
}

// write puts content, expanded, in a file named tenants.yaml in dir.
func (f fixture) write(t testing.TB, dir, content string) string {
	t.Helper()
	path := filepath.Join(dir, "tenants.yaml")
	if err := os.WriteFile(path, []byte(f.expand(content)), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// replace swaps content, expanded, in at path atomically.
func (f fixture) replace(t testing.TB, path, content string) {
	t.Helper()
	replaceFile(t, path, f.expand(content))
}

// assertNoSensitive checks that err, its file's path aside, shows no key, no
// secret and no URL token, not even the first characters of one (the YAML
// library quotes 7).
func (f fixture) assertNoSensitive(t *testing.T, err error, paths ...string) {
	t.Helper()
	if err == nil {
		return
	}
	msg := err.Error()
	for _, p := range paths {
		msg = strings.ReplaceAll(msg, p, "<path>")
	}
	for _, s := range f.sensitive {
		if strings.Contains(msg, s[:7]) {
			t.Errorf("error %q shows %q, or its start", msg, s)
		}
	}
}

type keyWant struct {
	tenant string
	perms  Permissions
}

func TestLoadTenants(t *testing.T) {
	fx := newFixture()
	long := strings.Repeat("t", runcomfy.MaxIDLen)
	longURL := "https://hooks.example/" + strings.Repeat("p", MaxEndpointURLLen-len("https://hooks.example/"))
	terminal := []string{"terminal"}
	tests := []struct {
		name      string
		content   string
		wantKeys  map[string]keyWant        // for files that load: every key
		wantHooks map[string]TenantWebhooks // and every tenant's webhooks
		wantErr   []string                  // regexps the error must match, for files that do not
	}{
		// Files that load.
		{
			name: "keys only",
			content: `
tenants:
  team-a:
    keys:
      - key: "$KEYA"
        permissions: [attach]
      - key: $KEYB
  team_b:
    keys: [{key: "$KEYC"}]
`,
			wantKeys: map[string]keyWant{keyA: {"team-a", Attach}, keyB: {"team-a", 0}, keyC: {"team_b", 0}},
		},
		{
			name: "webhooks only, several secrets in file order",
			content: `
tenants:
  team-a:
    webhooks:
      secrets: ["$SECB", "$SECA"]
`,
			wantHooks: map[string]TenantWebhooks{"team-a": {Secrets: []string{fx.values["$SECB"], fx.values["$SECA"]}}},
		},
		{
			name: "endpoints: default events, events in any case kept lower case, in file order",
			content: `
tenants:
  team-a:
    keys: [{key: "$KEYA"}]
    webhooks:
      secrets: ["$SECA"]
      endpoints:
        - url: https://hooks.example/a?token=$TOKEN
        - url: http://10.0.0.1:8080/b
          events: [Terminal, " output ", QUEUED, running]
        - url: HTTPS://hooks.example/c
          events: ~
`,
			wantKeys: map[string]keyWant{keyA: {"team-a", 0}},
			wantHooks: map[string]TenantWebhooks{"team-a": {
				Secrets: []string{fx.values["$SECA"]},
				Endpoints: []Endpoint{
					{URL: "https://hooks.example/a?token=" + urlToken, Events: terminal},
					{URL: "http://10.0.0.1:8080/b", Events: []string{"terminal", "output", "queued", "running"}},
					{URL: "HTTPS://hooks.example/c", Events: terminal},
				},
			}},
		},
		{
			name: "limits: key of MinKeyLen, tenant of MaxIDLen, secrets of 24 and 64 bytes, URL of 2048 bytes",
			content: `
tenants:
  ` + long + `:
    keys: [{key: "$KEY16", permissions: []}]
    webhooks:
      secrets: ["$SECMIN", "$SECMAX"]
      endpoints: [{url: "` + longURL + `"}]
`,
			wantKeys: map[string]keyWant{key16: {long, 0}},
			wantHooks: map[string]TenantWebhooks{long: {
				Secrets:   []string{fx.values["$SECMIN"], fx.values["$SECMAX"]},
				Endpoints: []Endpoint{{URL: longURL, Events: terminal}},
			}},
		},
		{
			name: "a key of digits only is a string, a permission listed twice is granted once",
			content: `
tenants:
  team-a:
    keys:
      - key: 12345678901234567890
        permissions: [attach, attach]
`,
			wantKeys: map[string]keyWant{"12345678901234567890": {"team-a", Attach}},
		},
		{
			name: "the same URL for two tenants",
			content: `
tenants:
  team-a:
    webhooks: {secrets: ["$SECA"], endpoints: [{url: "https://hooks.example/x"}]}
  team-b:
    webhooks: {secrets: ["$SECA"], endpoints: [{url: "https://hooks.example/x"}]}
`,
			wantHooks: map[string]TenantWebhooks{
				"team-a": {Secrets: []string{fx.values["$SECA"]}, Endpoints: []Endpoint{{URL: "https://hooks.example/x", Events: terminal}}},
				"team-b": {Secrets: []string{fx.values["$SECA"]}, Endpoints: []Endpoint{{URL: "https://hooks.example/x", Events: terminal}}},
			},
		},

		// The file as a whole.
		{name: "empty file", content: "", wantErr: []string{"empty file"}},
		{name: "only comments", content: "# tenants\n# none yet\n", wantErr: []string{"empty file"}},
		{name: "no tenants field", content: "{}\n", wantErr: []string{"no tenants"}},
		{name: "tenants null", content: "tenants:\n", wantErr: []string{"no tenants"}},
		{name: "tenants empty", content: "tenants: {}\n", wantErr: []string{"no tenants"}},
		{
			name:    "two documents",
			content: "tenants:\n  team-a:\n    keys: [{key: \"$KEYA\"}]\n---\ntenants: {}\n",
			wantErr: []string{"more than one YAML document"},
		},
		{
			name:    "not YAML",
			content: "tenants:\n  team-a:\n    keys: [{key: \"$KEYA\"}\n",
			wantErr: []string{`^tenants <path>: yaml: line \d+: `},
		},
		{
			name:    "a list at the top",
			content: "- $KEYA\n",
			wantErr: []string{`line 1: found a list where a mapping is wanted`},
		},
		{
			name:    "unknown top-level field",
			content: "tenant:\n  team-a: {}\n",
			wantErr: []string{`line 1: unknown field "tenant"`},
		},
		{
			name:    "unknown tenant field",
			content: "tenants:\n  team-a:\n    keys: [{key: \"$KEYA\"}]\n    webhook: {secrets: [\"$SECA\"]}\n",
			wantErr: []string{`line 4: unknown field "webhook"`},
		},
		{
			name:    "unknown key field",
			content: "tenants:\n  team-a:\n    keys:\n      - key: \"$KEYA\"\n        perms: [attach]\n",
			wantErr: []string{`line 5: unknown field "perms"`},
		},
		{
			name:    "unknown webhooks and endpoint fields",
			content: "tenants:\n  team-a:\n    webhooks:\n      secret: \"$SECA\"\n      endpoints: [{url: \"https://h.example/\", event: [terminal]}]\n",
			wantErr: []string{`line 4: unknown field "secret"`, `line 5: unknown field "event"`},
		},
		{
			name:    "a key as a field name is not shown",
			content: "tenants:\n  team-a:\n    keys:\n      - $KEYA: [attach]\n",
			wantErr: []string{`line 4: unknown field \(name not shown\)`},
		},
		{
			name:    "a string where the secrets list goes is not shown",
			content: "tenants:\n  team-a:\n    webhooks:\n      secrets: $SECA\n",
			wantErr: []string{`line 4: found a string where a list is wanted`},
		},
		{
			name:    "a key where a tenant goes is not shown",
			content: "tenants:\n  team-a: $KEYA\n",
			wantErr: []string{`line 2: found a string where a mapping is wanted`},
		},
		{
			name:    "a key where the permissions go is not shown",
			content: "tenants:\n  team-a:\n    keys: [{key: \"$KEYA\", permissions: $KEYB}]\n",
			wantErr: []string{`line 3: found a string where a list is wanted`},
		},
		{
			name:    "a mapping where a key goes",
			content: "tenants:\n  team-a:\n    keys: [{key: {$KEYA: x}}]\n",
			wantErr: []string{`line 3: found a mapping where a string is wanted`},
		},
		{
			name:    "a tenant twice",
			content: "tenants:\n  team-a:\n    keys: [{key: \"$KEYA\"}]\n  team-a:\n    keys: [{key: \"$KEYB\"}]\n",
			wantErr: []string{`line 4: repeated mapping key "team-a", first line 2`},
		},
		{
			name:    "a field twice",
			content: "tenants:\n  team-a:\n    keys: [{key: \"$KEYA\", key: \"$KEYB\"}]\n",
			wantErr: []string{`line 3: repeated mapping key "key"`},
		},
		{
			name:    "an unknown anchor is not named",
			content: "tenants:\n  team-a:\n    keys: [{key: *$KEYA}]\n",
			wantErr: []string{`unknown anchor \(value not shown\)`},
		},

		// Tenants.
		{
			name:    "tenant with a dot",
			content: "tenants:\n  team.a:\n    keys: [{key: \"$KEYA\"}]\n",
			wantErr: []string{`tenant "team.a": the name may contain only letters, digits`},
		},
		{
			name:    "tenant with non-ASCII letters",
			content: "tenants:\n  ténant:\n    keys: [{key: \"$KEYA\"}]\n",
			wantErr: []string{`tenant "ténant": the name may contain only`},
		},
		{
			name:    "tenant longer than MaxIDLen",
			content: "tenants:\n  " + long + "t:\n    keys: [{key: \"$KEYA\"}]\n",
			wantErr: []string{`tenant "t{129}": the name`},
		},
		{
			name:    "tenant of a number is a name",
			content: "tenants:\n  12:\n",
			wantErr: []string{`tenant "12": neither keys nor webhooks`},
		},
		{name: "tenant null", content: "tenants:\n  team-a:\n", wantErr: []string{`tenant "team-a": neither keys nor webhooks`}},
		{name: "tenant empty", content: "tenants:\n  team-a: {}\n", wantErr: []string{`tenant "team-a": neither keys nor webhooks`}},
		{
			name:    "tenant with an empty key list",
			content: "tenants:\n  team-a:\n    keys: []\n",
			wantErr: []string{`tenant "team-a": neither keys nor webhooks`},
		},

		// Keys.
		{
			name:    "key missing",
			content: "tenants:\n  team-a:\n    keys: [{key: \"$KEYA\"}, {permissions: [attach]}]\n",
			wantErr: []string{`tenant "team-a": keys\[1\]\.key: missing`},
		},
		{
			name:    "key shorter than MinKeyLen",
			content: "tenants:\n  team-a:\n    keys: [{key: \"$KEY15\"}]\n",
			wantErr: []string{`tenant "team-a": keys\[0\]\.key: shorter than 16 bytes`},
		},
		{
			name:    "key with a space",
			content: "tenants:\n  team-a:\n    keys: [{key: \"$KEYA $KEYB\"}]\n",
			wantErr: []string{`tenant "team-a": keys\[0\]\.key: holds white space or a control character`},
		},
		{
			name:    "key with a control character",
			content: "tenants:\n  team-a:\n    keys: [{key: \"$KEYA\\x7f\"}]\n",
			wantErr: []string{`keys\[0\]\.key: holds white space or a control character`},
		},
		{
			name:    "key with a line break",
			content: "tenants:\n  team-a:\n    keys: [{key: \"$KEYA\\n\"}]\n",
			wantErr: []string{`keys\[0\]\.key: holds white space`},
		},
		{
			name:    "unknown permission",
			content: "tenants:\n  team-a:\n    keys: [{key: \"$KEYA\", permissions: [attach, admin]}]\n",
			wantErr: []string{`tenant "team-a": keys\[0\]\.permissions\[1\]: unknown permission \(known: attach\)`},
		},
		{
			name:    "permission names are lower case",
			content: "tenants:\n  team-a:\n    keys: [{key: \"$KEYA\", permissions: [Attach]}]\n",
			wantErr: []string{`keys\[0\]\.permissions\[0\]: unknown permission`},
		},
		{
			name:    "a key where a permission goes is not shown",
			content: "tenants:\n  team-a:\n    keys: [{key: \"$KEYA\", permissions: [\"$KEYB\"]}]\n",
			wantErr: []string{`keys\[0\]\.permissions\[0\]: unknown permission`},
		},
		{
			name:    "empty permission",
			content: "tenants:\n  team-a:\n    keys: [{key: \"$KEYA\", permissions: [\"\"]}]\n",
			wantErr: []string{`keys\[0\]\.permissions\[0\]: empty permission`},
		},
		{
			name:    "a comma list is not a permission",
			content: "tenants:\n  team-a:\n    keys: [{key: \"$KEYA\", permissions: [\"attach,attach\"]}]\n",
			wantErr: []string{`keys\[0\]\.permissions\[0\]: one permission per item`},
		},
		{
			name:    "the same key twice for a tenant",
			content: "tenants:\n  team-a:\n    keys: [{key: \"$KEYA\"}, {key: \"$KEYB\"}, {key: \"$KEYA\", permissions: [attach]}]\n",
			wantErr: []string{`tenant "team-a": keys\[2\]\.key: same key as tenant "team-a" keys\[0\]`},
		},
		{
			name:    "the same key for two tenants",
			content: "tenants:\n  team-b:\n    keys: [{key: \"$KEYA\"}]\n  team-a:\n    keys: [{key: \"$KEYB\"}, {key: \"$KEYA\"}]\n",
			wantErr: []string{`tenant "team-b": keys\[0\]\.key: same key as tenant "team-a" keys\[1\]`},
		},

		// Secrets.
		{
			name:    "webhooks null",
			content: "tenants:\n  team-a:\n    keys: [{key: \"$KEYA\"}]\n    webhooks:\n",
			wantErr: []string{`tenant "team-a": webhooks\.secrets: none`},
		},
		{
			name:    "webhooks empty",
			content: "tenants:\n  team-a:\n    webhooks: {}\n",
			wantErr: []string{`tenant "team-a": webhooks\.secrets: none`},
		},
		{
			name:    "secrets empty",
			content: "tenants:\n  team-a:\n    webhooks: {secrets: []}\n",
			wantErr: []string{`tenant "team-a": webhooks\.secrets: none`},
		},
		{
			name:    "endpoints without a secret",
			content: "tenants:\n  team-a:\n    webhooks:\n      endpoints: [{url: \"https://hooks.example/\"}]\n",
			wantErr: []string{`tenant "team-a": webhooks\.secrets: none`},
		},
		{
			name:    "secret without its prefix",
			content: "tenants:\n  team-a:\n    webhooks: {secrets: [\"$SECA\", \"$KEYA\"]}\n",
			wantErr: []string{`tenant "team-a": webhooks\.secrets\[1\]: does not start with "whsec_"`},
		},
		{
			name:    "secret prefix in upper case",
			content: "tenants:\n  team-a:\n    webhooks: {secrets: [\"WHSEC_$SECA\"]}\n",
			wantErr: []string{`webhooks\.secrets\[0\]: does not start with "whsec_"`},
		},
		{
			name:    "secret in URL-safe base64",
			content: "tenants:\n  team-a:\n    webhooks: {secrets: [\"$SECURL\"]}\n",
			wantErr: []string{`webhooks\.secrets\[0\]: holds a character that is not standard base64`},
		},
		{
			name:    "secret with a line break",
			content: "tenants:\n  team-a:\n    webhooks: {secrets: [\"$SECA\\n\"]}\n",
			wantErr: []string{`webhooks\.secrets\[0\]: holds a character that is not standard base64`},
		},
		{
			name:    "secret without padding",
			content: "tenants:\n  team-a:\n    webhooks: {secrets: [\"$SECNOPAD\"]}\n",
			wantErr: []string{`webhooks\.secrets\[0\]: is not standard, padded base64`},
		},
		{
			name:    "secret in non-canonical base64",
			content: "tenants:\n  team-a:\n    webhooks: {secrets: [\"$SECODD\"]}\n",
			wantErr: []string{`webhooks\.secrets\[0\]: is not standard, padded base64`},
		},
		{
			name:    "secret of nothing",
			content: "tenants:\n  team-a:\n    webhooks: {secrets: [\"whsec_\"]}\n",
			wantErr: []string{`webhooks\.secrets\[0\]: decodes to 0 bytes, want 24 to 64`},
		},
		{
			name:    "secret too short and too long",
			content: "tenants:\n  team-a:\n    webhooks: {secrets: [\"$SECSHORT\", \"$SECLONG\"]}\n",
			wantErr: []string{`webhooks\.secrets\[0\]: decodes to 23 bytes`, `webhooks\.secrets\[1\]: decodes to 65 bytes`},
		},
		{
			name:    "the same secret twice",
			content: "tenants:\n  team-a:\n    webhooks: {secrets: [\"$SECA\", \"$SECB\", \"$SECA\"]}\n",
			wantErr: []string{`webhooks\.secrets\[2\]: same secret as secrets\[0\]`},
		},

		// Endpoints.
		{
			name:    "URL missing",
			content: "tenants:\n  team-a:\n    webhooks: {secrets: [\"$SECA\"], endpoints: [{events: [terminal]}]}\n",
			wantErr: []string{`tenant "team-a": webhooks\.endpoints\[0\]\.url: missing`},
		},
		{
			name: "URLs refused",
			content: `
tenants:
  team-a:
    webhooks:
      secrets: ["$SECA"]
      endpoints:
        - url: /relative?t=$TOKEN
        - url: ftp://hooks.example/$TOKEN
        - url: http:///$TOKEN
        - url: http://:8080/$TOKEN
        - url: mailto:$TOKEN@hooks.example
        - url: https://user:$TOKEN@hooks.example/
        - url: https://hooks.example/#$TOKEN
        - url: https://hooks.example/#
        - url: "` + longURL + `x"
        - url: http://[::1/$TOKEN
        - url: "https://hooks.example/\x01$TOKEN"
        - url: //hooks.example/$TOKEN
        - url: https://gw.example/Webhooks/RunComfy/dep-1/$TOKEN
`,
			wantErr: []string{
				`endpoints\[0\]\.url: is not an absolute http or https URL`,
				`endpoints\[1\]\.url: is not an absolute http or https URL`,
				`endpoints\[2\]\.url: has no host`,
				`endpoints\[3\]\.url: has no host`,
				`endpoints\[4\]\.url: is not an absolute http or https URL`,
				`endpoints\[5\]\.url: has user info`,
				`endpoints\[6\]\.url: has a fragment`,
				`endpoints\[7\]\.url: has a fragment`,
				`endpoints\[8\]\.url: longer than 2048 bytes`,
				`endpoints\[9\]\.url: is not a URL`,
				`endpoints\[10\]\.url: is not a URL`,
				`endpoints\[11\]\.url: is not an absolute http or https URL`,
				`endpoints\[12\]\.url: is a comfygate's RunComfy callback URL`,
			},
		},
		{
			name:    "the same URL twice for a tenant",
			content: "tenants:\n  team-a:\n    webhooks: {secrets: [\"$SECA\"], endpoints: [{url: \"https://h.example/$TOKEN\"}, {url: \"https://h.example/$TOKEN\", events: [queued]}]}\n",
			wantErr: []string{`webhooks\.endpoints\[1\]\.url: same URL as endpoints\[0\]`},
		},
		{
			name:    "unknown event is not named",
			content: "tenants:\n  team-a:\n    webhooks: {secrets: [\"$SECA\"], endpoints: [{url: \"https://h.example/\", events: [terminal, \"$KEYA\"]}]}\n",
			wantErr: []string{`webhooks\.endpoints\[0\]\.events\[1\]: unknown event \(known: queued, running, output, terminal\)`},
		},
		{
			name:    "an event twice, in two cases",
			content: "tenants:\n  team-a:\n    webhooks: {secrets: [\"$SECA\"], endpoints: [{url: \"https://h.example/\", events: [terminal, Terminal]}]}\n",
			wantErr: []string{`webhooks\.endpoints\[0\]\.events\[1\]: terminal is listed twice`},
		},
		{
			name:    "empty event list",
			content: "tenants:\n  team-a:\n    webhooks: {secrets: [\"$SECA\"], endpoints: [{url: \"https://h.example/\", events: []}]}\n",
			wantErr: []string{`webhooks\.endpoints\[0\]\.events: empty \(leave it out for \[terminal\]\)`},
		},
		{
			name: "every problem is reported, tenants in name order",
			content: `
tenants:
  team-c:
    webhooks: {secrets: ["$SECSHORT"], endpoints: [{url: "ftp://x/"}]}
  team-a:
    keys: [{key: "$KEY15"}, {key: "$KEYA", permissions: [root]}]
  team-b:
    keys: [{key: "$KEYB"}]
  te.am:
    keys: [{key: "$KEYC"}]
`,
			wantErr: []string{
				`(?s)^tenants <path>: tenant "te\.am": the name.*\n` +
					`tenant "team-a": keys\[0\]\.key: shorter.*\n` +
					`tenant "team-a": keys\[1\]\.permissions\[0\]: unknown permission.*\n` +
					`tenant "team-c": webhooks\.secrets\[0\]: decodes to 23 bytes.*\n` +
					`tenant "team-c": webhooks\.endpoints\[0\]\.url: is not an absolute http or https URL.*$`,
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := fx.write(t, t.TempDir(), tc.content)
			got, err := LoadTenants(path)
			fx.assertNoSensitive(t, err, path)
			if tc.wantErr != nil {
				if err == nil {
					t.Fatalf("LoadTenants succeeded, want an error matching %q", tc.wantErr)
				}
				if got != nil {
					t.Errorf("LoadTenants returned tenants with its error")
				}
				msg := strings.ReplaceAll(err.Error(), path, "<path>")
				for _, re := range tc.wantErr {
					if !regexp.MustCompile(re).MatchString(msg) {
						t.Errorf("error %q does not match %q", msg, re)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("LoadTenants: %v", err)
			}
			c := got.content.Load()
			if n := len(c.keys); n != len(tc.wantKeys) {
				t.Errorf("%d keys, want %d", n, len(tc.wantKeys))
			}
			for key, want := range tc.wantKeys {
				if tenant, perms, ok := got.Lookup(key); !ok || tenant != want.tenant || perms != want.perms {
					t.Errorf("Lookup(key of %s) = %q, %q, %v; want %q, %q, true", want.tenant, tenant, perms, ok, want.tenant, want.perms)
				}
			}
			if got, want := got.HasKeys(), len(tc.wantKeys) > 0; got != want {
				t.Errorf("HasKeys() = %v, want %v", got, want)
			}
			if len(c.webhooks) != len(tc.wantHooks) {
				t.Errorf("webhooks for %d tenants, want %d", len(c.webhooks), len(tc.wantHooks))
			}
			for tenant, want := range tc.wantHooks {
				w, ok := got.Webhooks(tenant)
				if !ok || !reflect.DeepEqual(w, want) {
					t.Errorf("Webhooks(%q) = %+v, %v; want %+v, true", tenant, w, ok, want)
				}
			}
			for _, tenant := range []string{"", "nobody", "team-A"} {
				if w, ok := got.Webhooks(tenant); ok {
					t.Errorf("Webhooks(%q) = %+v, true", tenant, w)
				}
			}
		})
	}
}

// TestTenantsExample loads testdata/tenants.yaml, the example the docs point
// to.
func TestTenantsExample(t *testing.T) {
	tenants, err := LoadTenants(filepath.Join("testdata", "tenants.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	sec1 := "whsec_Y29tZnlnYXRlIGV4YW1wbGUgc2VjcmV0OiBmYWtlISE="
	sec2 := "whsec_Y29tZnlnYXRlIGV4YW1wbGUgc2VjcmV0ICMyLCBhbHNvIGZha2U="
	tests := []struct {
		tenant    string
		wantHooks TenantWebhooks
		wantOK    bool
	}{
		{"team-a", TenantWebhooks{
			Secrets: []string{sec1, sec2},
			Endpoints: []Endpoint{
				{URL: "https://hooks.team-a.example/comfy", Events: []string{"terminal"}},
				{URL: "https://audit.team-a.example/comfy?source=gateway", Events: []string{"queued", "running", "output", "terminal"}},
			},
		}, true},
		{"team-b", TenantWebhooks{Secrets: []string{sec1}}, true},
		{"team-c", TenantWebhooks{}, false},
		{"team-d", TenantWebhooks{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.tenant, func(t *testing.T) {
			got, ok := tenants.Webhooks(tt.tenant)
			if ok != tt.wantOK || !reflect.DeepEqual(got, tt.wantHooks) {
				t.Errorf("Webhooks = %+v, %v; want %+v, %v", got, ok, tt.wantHooks, tt.wantOK)
			}
		})
	}
	for key, want := range map[string]keyWant{
		"team-a-example-key-0001": {"team-a", Attach},
		"team-a-example-key-0002": {"team-a", 0},
		"team-c-example-key-0001": {"team-c", 0},
	} {
		if tenant, perms, ok := tenants.Lookup(key); !ok || tenant != want.tenant || perms != want.perms {
			t.Errorf("Lookup(%q) = %q, %q, %v; want %v", key, tenant, perms, ok, want)
		}
	}
}

func TestLoadTenantsMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope.yaml")
	got, err := LoadTenants(path)
	if err == nil || got != nil {
		t.Fatalf("LoadTenants(missing) = %v, %v", got, err)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("error %v is not fs.ErrNotExist", err)
	}
	if !strings.Contains(err.Error(), path) {
		t.Errorf("error %q does not name the file", err)
	}
}

// TestTenantsKeysAsKeysFile checks that a key answers the same from a
// tenants file as from the keys file line it was moved from.
func TestTenantsKeysAsKeysFile(t *testing.T) {
	fx := newFixture()
	dir := t.TempDir()
	keys, err := Load(writeFile(t, dir, "tenant-a "+keyA+" attach\ntenant-b "+keyB+"\ntenant-a "+key16+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	tenants, err := LoadTenants(fx.write(t, dir, `
tenants:
  tenant-a:
    keys:
      - {key: "$KEYA", permissions: [attach]}
      - {key: "$KEY16"}
  tenant-b:
    keys: [{key: "$KEYB"}]
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{
		keyA, keyB, key16, // known
		"",
		keyC,                      // unknown
		keyA[:len(keyA)-1],        // prefix of a key
		keyA[:MinKeyLen],          // prefix of MinKeyLen bytes
		keyA[1:],                  // suffix
		keyA + "x",                // key plus a char
		keyA + " ",                // trailing space: the caller trims
		" " + keyA,                // leading space
		keyA + "\n",               // newline
		strings.ToUpper(keyA),     // case matters
		keyA + keyB,               // two keys
		"tenant-a",                // a tenant is not a key
		keyA + " attach",          // key plus its permission
		"attach",                  // a permission is not a key
		keyA[:3] + "X" + keyA[4:], // one byte changed
	} {
		t.Run(fmt.Sprintf("%q", key), func(t *testing.T) {
			wantTenant, wantPerms, wantOK := keys.Lookup(key)
			tenant, perms, ok := tenants.Lookup(key)
			if tenant != wantTenant || perms != wantPerms || ok != wantOK {
				t.Errorf("Tenants.Lookup = %q, %q, %v; Keys.Lookup = %q, %q, %v", tenant, perms, ok, wantTenant, wantPerms, wantOK)
			}
			if tenant, ok := tenants.Tenant(key); tenant != wantTenant || ok != wantOK {
				t.Errorf("Tenants.Tenant = %q, %v; want %q, %v", tenant, ok, wantTenant, wantOK)
			}
		})
	}
}

// TestWebhooksCopies checks that a caller changing what Webhooks returned
// changes nothing in use.
func TestWebhooksCopies(t *testing.T) {
	fx := newFixture()
	tenants, err := LoadTenants(fx.write(t, t.TempDir(), `
tenants:
  team-a:
    webhooks:
      secrets: ["$SECA"]
      endpoints: [{url: "https://h.example/", events: [queued]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	w, _ := tenants.Webhooks("team-a")
	w.Secrets[0] = "changed"
	w.Endpoints[0].URL = "changed"
	w.Endpoints[0].Events[0] = "changed"
	got, _ := tenants.Webhooks("team-a")
	want := TenantWebhooks{
		Secrets:   []string{fx.values["$SECA"]},
		Endpoints: []Endpoint{{URL: "https://h.example/", Events: []string{"queued"}}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Webhooks after the caller changed its copy = %+v, want %+v", got, want)
	}
}

func TestTenantsReload(t *testing.T) {
	fx := newFixture()
	dir := t.TempDir()
	path := fx.write(t, dir, "tenants:\n  team-a:\n    keys: [{key: \"$KEYA\"}]\n    webhooks: {secrets: [\"$SECA\"]}\n")
	tenants, err := LoadTenants(path)
	if err != nil {
		t.Fatal(err)
	}
	expect := func(key, tenant, secret string) {
		t.Helper()
		got, ok := tenants.Tenant(key)
		if (tenant == "" && ok) || (tenant != "" && (!ok || got != tenant)) {
			t.Errorf("Tenant(key) = %q, %v; want %q", got, ok, tenant)
		}
		w, ok := tenants.Webhooks(tenant)
		if tenant != "" && (!ok || len(w.Secrets) != 1 || w.Secrets[0] != secret) {
			t.Errorf("Webhooks(%q) = %v, %v", tenant, len(w.Secrets), ok)
		}
	}
	expect(keyA, "team-a", fx.values["$SECA"])

	// A new file swaps everything in: the removed key and tenant are gone.
	fx.replace(t, path, "tenants:\n  team-b:\n    keys: [{key: \"$KEYB\"}]\n    webhooks: {secrets: [\"$SECB\"]}\n")
	if err := tenants.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	expect(keyA, "", "")
	expect(keyB, "team-b", fx.values["$SECB"])
	if _, ok := tenants.Webhooks("team-a"); ok {
		t.Error("team-a's webhooks outlived its removal")
	}

	// Broken files leave the previous content in use, whole.
	for _, broken := range []string{
		"tenants:\n  team-a:\n    keys: [{key: \"$KEYA\"}]\n    webhooks: {secrets: [\"$SECSHORT\"]}\n",
		"tenants:\n  team-a:\n    keys: [{key: \"$KEYA\"}, {key: \"$KEY15\"}]\n",
		"tenants:\n  team-a:\n    keys: [{key: \"$KEYA\"}]\n  team-b:\n    keys: [{key: \"$KEYA\"}]\n",
		"tenants:\n  team-a:\n    keys: [{key: \"$KEYA\"}]\n    bogus: 1\n",
		"tenants:\n  team-a:\n    keys: [{key: \"$KEYA\"\n",
		"# all commented out\n",
		"",
	} {
		fx.write(t, dir, broken)
		err := tenants.Reload()
		if err == nil {
			t.Fatalf("Reload of %q succeeded", broken)
		}
		fx.assertNoSensitive(t, err, path)
		expect(keyB, "team-b", fx.values["$SECB"])
		expect(keyA, "", "")
	}

	// So does a missing file.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := tenants.Reload(); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Reload of a missing file: %v", err)
	}
	expect(keyB, "team-b", fx.values["$SECB"])

	// And a good file after the broken ones is taken.
	fx.write(t, dir, "tenants:\n  team-a:\n    keys: [{key: \"$KEYA\"}]\n    webhooks: {secrets: [\"$SECA\"]}\n")
	if err := tenants.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	expect(keyA, "team-a", fx.values["$SECA"])
	expect(keyB, "", "")
}

// TestTenantsDuringReload reads keys and webhooks from many goroutines while
// the file is swapped and reloaded: run with -race. keyA is team-a's in every
// version; keyB is team-b's without attach in one, with attach in another,
// absent in the third; team-a's secrets and endpoints change together. No
// read may mix two versions.
func TestTenantsDuringReload(t *testing.T) {
	fx := newFixture()
	versions := []string{
		"tenants:\n  team-a:\n    keys: [{key: \"$KEYA\"}]\n    webhooks: {secrets: [\"$SECA\"]}\n",
		"tenants:\n  team-a:\n    keys: [{key: \"$KEYA\"}]\n    webhooks: {secrets: [\"$SECA\", \"$SECB\"], endpoints: [{url: \"https://h.example/1\"}]}\n" +
			"  team-b:\n    keys: [{key: \"$KEYB\"}]\n",
		"tenants:\n  team-b:\n    keys: [{key: \"$KEYB\", permissions: [attach]}]\n  team-a:\n    keys: [{key: \"$KEYA\"}]\n" +
			"    webhooks: {secrets: [\"$SECB\"], endpoints: [{url: \"https://h.example/2\"}, {url: \"https://h.example/3\"}]}\n",
		"tenants:\n  team-a:\n    keys: [{key: \"$KEYA\"}]\n    webhooks: {secrets: [\"$SECSHORT\"]}\n", // broken: previous stays
	}
	// team-a's webhooks in each good version: secrets and endpoint count.
	secA, secB := fx.values["$SECA"], fx.values["$SECB"]
	valid := func(w TenantWebhooks) bool {
		s := strings.Join(w.Secrets, " ")
		return (s == secA && len(w.Endpoints) == 0) ||
			(s == secA+" "+secB && len(w.Endpoints) == 1 && w.Endpoints[0].URL == "https://h.example/1") ||
			(s == secB && len(w.Endpoints) == 2 && w.Endpoints[1].URL == "https://h.example/3")
	}
	path := fx.write(t, t.TempDir(), versions[0])
	tenants, err := LoadTenants(path)
	if err != nil {
		t.Fatal(err)
	}
	var (
		stop    atomic.Bool
		wg      sync.WaitGroup
		lookups atomic.Int64
		sawB    atomic.Bool
	)
	for range 8 {
		wg.Go(func() {
			for !stop.Load() {
				if got, ok := tenants.Tenant(keyA); !ok || got != "team-a" {
					t.Errorf("Tenant(keyA) = %q, %v during reload", got, ok)
					return
				}
				if got, perms, ok := tenants.Lookup(keyB); ok {
					if got != "team-b" {
						t.Errorf("Lookup(keyB) = %q, %q during reload", got, perms)
						return
					}
					sawB.Store(true)
				}
				if w, ok := tenants.Webhooks("team-a"); !ok || !valid(w) {
					t.Errorf("Webhooks(team-a) = %+v, %v during reload", w, ok)
					return
				}
				lookups.Add(1)
			}
		})
	}
	for i := range 400 {
		fx.replace(t, path, versions[i%len(versions)])
		err := tenants.Reload()
		if broken := i%len(versions) == 3; broken != (err != nil) {
			t.Fatalf("Reload of version %d: %v", i%len(versions), err)
		}
	}
	stop.Store(true)
	wg.Wait()
	if lookups.Load() == 0 || !sawB.Load() {
		t.Errorf("lookups: %d, keyB seen: %v", lookups.Load(), sawB.Load())
	}
}

func TestUnion(t *testing.T) {
	fx := newFixture()
	tests := []struct {
		name     string
		keysFile string
		tenants  string
		wantKeys map[string]keyWant // for files that agree: every known key
		wantErr  []string
	}{
		{
			name:     "disjoint files",
			keysFile: "team-a " + keyA + " attach\nteam-b " + keyB + "\n",
			tenants:  "tenants:\n  team-c:\n    keys: [{key: \"$KEYC\"}]\n  team-a:\n    keys: [{key: \"$KEY16\"}]\n",
			wantKeys: map[string]keyWant{keyA: {"team-a", Attach}, keyB: {"team-b", 0}, keyC: {"team-c", 0}, key16: {"team-a", 0}},
		},
		{
			name:     "a key in both files, same tenant and permissions: a move under way",
			keysFile: "team-a " + keyA + " attach\nteam-b " + keyB + "\n",
			tenants:  "tenants:\n  team-a:\n    keys: [{key: \"$KEYA\", permissions: [attach]}]\n",
			wantKeys: map[string]keyWant{keyA: {"team-a", Attach}, keyB: {"team-b", 0}},
		},
		{
			name:     "a tenants file without keys",
			keysFile: "team-a " + keyA + "\n",
			tenants:  "tenants:\n  team-a:\n    webhooks: {secrets: [\"$SECA\"]}\n",
			wantKeys: map[string]keyWant{keyA: {"team-a", 0}},
		},
		{
			name:     "a key of another tenant",
			keysFile: "team-a " + keyA + "\nteam-b " + keyB + "\n",
			tenants:  "tenants:\n  team-c:\n    keys: [{key: \"$KEYC\"}, {key: \"$KEYB\"}]\n",
			wantErr:  []string{`^tenants <tpath>: tenant "team-c": keys\[1\]: the keys file gives the same key to tenant "team-b"$`},
		},
		{
			name:     "a key with other permissions",
			keysFile: "team-a " + keyA + "\nteam-b " + keyB + " attach\n",
			tenants:  "tenants:\n  team-a:\n    keys: [{key: \"$KEYA\", permissions: [attach]}]\n  team-b:\n    keys: [{key: \"$KEYB\"}]\n",
			wantErr: []string{
				`tenant "team-a": keys\[0\]: the keys file has the same key with other permissions \(none there, \[attach\] here\)`,
				`tenant "team-b": keys\[0\]: the keys file has the same key with other permissions \(\[attach\] there, none here\)`,
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			kpath, tpath := writeFile(t, dir, tc.keysFile), fx.write(t, dir, tc.tenants)
			keys, err := Load(kpath)
			if err != nil {
				t.Fatal(err)
			}
			tenants, err := LoadTenants(tpath)
			if err != nil {
				t.Fatal(err)
			}
			u, err := Union(keys, tenants)
			fx.assertNoSensitive(t, err, kpath, tpath)
			if tc.wantErr != nil {
				if err == nil {
					t.Fatalf("Union succeeded, want an error matching %q", tc.wantErr)
				}
				if u != nil {
					t.Errorf("Union returned a union with its error")
				}
				msg := strings.ReplaceAll(err.Error(), tpath, "<tpath>")
				for _, re := range tc.wantErr {
					if !regexp.MustCompile(re).MatchString(msg) {
						t.Errorf("error %q does not match %q", msg, re)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("Union: %v", err)
			}
			for key, want := range tc.wantKeys {
				if tenant, perms, ok := u.Lookup(key); !ok || tenant != want.tenant || perms != want.perms {
					t.Errorf("Lookup(key of %s) = %q, %q, %v; want %v", want.tenant, tenant, perms, ok, want)
				}
				if tenant, ok := u.Tenant(key); !ok || tenant != want.tenant {
					t.Errorf("Tenant(key of %s) = %q, %v", want.tenant, tenant, ok)
				}
			}
			for _, key := range []string{"", keyX, keyA + "x", keyA[:MinKeyLen], "team-a"} {
				if tenant, perms, ok := u.Lookup(key); ok || tenant != "" || perms != 0 {
					t.Errorf("Lookup(%q) = %q, %q, %v; want refused", key, tenant, perms, ok)
				}
			}
		})
	}

	t.Run("nil parts", func(t *testing.T) {
		dir := t.TempDir()
		keys, err := Load(writeFile(t, dir, "team-a "+keyA+"\n"))
		if err != nil {
			t.Fatal(err)
		}
		tenants, err := LoadTenants(fx.write(t, dir, "tenants:\n  team-a:\n    keys: [{key: \"$KEYA\"}]\n"))
		if err != nil {
			t.Fatal(err)
		}
		if u, err := Union(nil, tenants); err == nil || u != nil {
			t.Errorf("Union(nil, tenants) = %v, %v", u, err)
		}
		if u, err := Union(keys, nil); err == nil || u != nil {
			t.Errorf("Union(keys, nil) = %v, %v", u, err)
		}
	})
}

// TestUnionReload reloads both files through the union: each file that loads
// and agrees with the other is taken, whatever the other does.
func TestUnionReload(t *testing.T) {
	fx := newFixture()
	dir := t.TempDir()
	kpath := writeFile(t, dir, "team-a "+keyA+"\nteam-b "+keyB+"\n")
	tpath := fx.write(t, dir, "tenants:\n  team-c:\n    keys: [{key: \"$KEYC\"}]\n    webhooks: {secrets: [\"$SECA\"]}\n")
	keys, err := Load(kpath)
	if err != nil {
		t.Fatal(err)
	}
	tenants, err := LoadTenants(tpath)
	if err != nil {
		t.Fatal(err)
	}
	u, err := Union(keys, tenants)
	if err != nil {
		t.Fatal(err)
	}
	// expect checks every key of the test against the union and its parts.
	expect := func(step string, want map[string]keyWant, wantSecret string) {
		t.Helper()
		for _, key := range []string{keyA, keyB, keyC, key16} {
			w, inUnion := want[key]
			tenant, perms, ok := u.Lookup(key)
			if ok != inUnion || tenant != w.tenant || perms != w.perms {
				t.Errorf("%s: Lookup(%s) = %q, %q, %v; want %v, %v", step, key[:3], tenant, perms, ok, w, inUnion)
			}
			// The parts follow: a key is in one of them at least.
			kt, _, kok := keys.Lookup(key)
			tt, _, tok := tenants.Lookup(key)
			if inUnion != (kok || tok) || (kok && kt != w.tenant) || (tok && tt != w.tenant) {
				t.Errorf("%s: key %s in the keys file: %q, %v; in the tenants file: %q, %v", step, key[:3], kt, kok, tt, tok)
			}
		}
		hooks, _ := tenants.Webhooks("team-c")
		if got := strings.Join(hooks.Secrets, " "); got != wantSecret {
			t.Errorf("%s: team-c's secrets are not the expected ones", step)
		}
	}
	secA, secB := fx.values["$SECA"], fx.values["$SECB"]
	expect("start", map[string]keyWant{keyA: {"team-a", 0}, keyB: {"team-b", 0}, keyC: {"team-c", 0}}, secA)

	steps := []struct {
		name       string
		keysFile   string // "" leaves the file as it is
		tenants    string
		wantErr    []string // regexps; none when the reload succeeds
		wantKeys   map[string]keyWant
		wantSecret string
	}{
		{
			name:       "team-a moves to the tenants file, keys and secret change",
			keysFile:   "team-b " + keyB + "\n",
			tenants:    "tenants:\n  team-a:\n    keys: [{key: \"$KEYA\", permissions: [attach]}]\n  team-c:\n    keys: [{key: \"$KEYC\"}]\n    webhooks: {secrets: [\"$SECB\"]}\n",
			wantKeys:   map[string]keyWant{keyA: {"team-a", Attach}, keyB: {"team-b", 0}, keyC: {"team-c", 0}},
			wantSecret: secB,
		},
		{
			name:       "a key moves to another tenant in one reload",
			keysFile:   "team-c " + key16 + "\n",
			tenants:    "tenants:\n  team-a:\n    keys: [{key: \"$KEYA\", permissions: [attach]}, {key: \"$KEYB\"}]\n  team-c:\n    keys: [{key: \"$KEYC\"}]\n    webhooks: {secrets: [\"$SECB\"]}\n",
			wantKeys:   map[string]keyWant{keyA: {"team-a", Attach}, keyB: {"team-a", 0}, keyC: {"team-c", 0}, key16: {"team-c", 0}},
			wantSecret: secB,
		},
		{
			name:       "a broken tenants file does not hold back a key revoked in the keys file",
			keysFile:   "team-b " + keyX + "\n",
			tenants:    "tenants:\n  team-a:\n    keys: [{key: \"$KEY15\"}]\n",
			wantErr:    []string{`tenants <tpath>: tenant "team-a": keys\[0\]\.key: shorter`},
			wantKeys:   map[string]keyWant{keyA: {"team-a", Attach}, keyB: {"team-a", 0}, keyC: {"team-c", 0}},
			wantSecret: secB,
		},
		{
			name:       "a broken keys file does not hold back the tenants file",
			keysFile:   "team-b\n",
			tenants:    "tenants:\n  team-a:\n    keys: [{key: \"$KEYA\"}]\n  team-c:\n    webhooks: {secrets: [\"$SECA\"]}\n",
			wantErr:    []string{`api keys <kpath>: line 1: `},
			wantKeys:   map[string]keyWant{keyA: {"team-a", 0}},
			wantSecret: secA,
		},
		{
			name:       "both broken: nothing changes",
			keysFile:   "team-b " + key15 + "\n",
			tenants:    "",
			wantErr:    []string{`api keys <kpath>: line 1: key shorter`, `tenants <tpath>: empty file`},
			wantKeys:   map[string]keyWant{keyA: {"team-a", 0}},
			wantSecret: secA,
		},
		{
			name:       "files that disagree: neither is taken",
			keysFile:   "team-b " + keyB + "\n",
			tenants:    "tenants:\n  team-a:\n    keys: [{key: \"$KEYA\"}, {key: \"$KEYB\"}]\n  team-c:\n    webhooks: {secrets: [\"$SECB\"]}\n",
			wantErr:    []string{`tenant "team-a": keys\[1\]: the keys file gives the same key to tenant "team-b" \(neither file reloaded\)`},
			wantKeys:   map[string]keyWant{keyA: {"team-a", 0}},
			wantSecret: secA,
		},
		{
			name:       "a good keys file that disagrees with the tenants file in use is not taken",
			keysFile:   "team-b " + keyA + "\n",
			tenants:    "tenants: {}\n",
			wantErr:    []string{`no tenants`, `keys\[0\]: the keys file gives the same key to tenant "team-b"`},
			wantKeys:   map[string]keyWant{keyA: {"team-a", 0}},
			wantSecret: secA,
		},
		{
			name:       "files that agree again",
			keysFile:   "team-b " + keyB + "\nteam-a " + keyA + "\n",
			tenants:    "tenants:\n  team-c:\n    keys: [{key: \"$KEYC\"}]\n    webhooks: {secrets: [\"$SECB\"]}\n",
			wantKeys:   map[string]keyWant{keyA: {"team-a", 0}, keyB: {"team-b", 0}, keyC: {"team-c", 0}},
			wantSecret: secB,
		},
	}
	for _, s := range steps {
		replaceFile(t, kpath, s.keysFile)
		fx.replace(t, tpath, s.tenants)
		err := u.Reload()
		fx.assertNoSensitive(t, err, kpath, tpath)
		switch {
		case s.wantErr == nil && err != nil:
			t.Errorf("%s: Reload: %v", s.name, err)
		case s.wantErr != nil && err == nil:
			t.Errorf("%s: Reload succeeded, want an error matching %q", s.name, s.wantErr)
		case err != nil:
			msg := strings.NewReplacer(kpath, "<kpath>", tpath, "<tpath>").Replace(err.Error())
			for _, re := range s.wantErr {
				if !regexp.MustCompile(re).MatchString(msg) {
					t.Errorf("%s: error %q does not match %q", s.name, msg, re)
				}
			}
		}
		expect(s.name, s.wantKeys, s.wantSecret)
	}
}

// TestUnionDuringReload looks keys up through the union from many goroutines
// while a key moves between the files and tenants: run with -race. keyA is
// team-a's in one file or the other in every version; keyB goes from team-b
// in the keys file to team-c in the tenants file (one reload) and back.
func TestUnionDuringReload(t *testing.T) {
	fx := newFixture()
	type version struct{ keysFile, tenants string }
	versions := []version{
		{"team-a " + keyA + "\nteam-b " + keyB + "\n", "tenants:\n  team-c:\n    keys: [{key: \"$KEYC\"}]\n"},
		{"team-d " + key16 + "\n", "tenants:\n  team-c:\n    keys: [{key: \"$KEYC\"}, {key: \"$KEYB\", permissions: [attach]}]\n  team-a:\n    keys: [{key: \"$KEYA\"}]\n"},
		{"team-a " + keyA + "\n", "tenants:\n  team-a:\n    keys: [{key: \"$KEYA\"}]\n"},
		{"team-a " + keyA + "\nteam-x " + keyB + "\n", "tenants:\n  team-c:\n    keys: [{key: \"$KEYB\"}]\n"}, // disagree: previous stays
	}
	dir := t.TempDir()
	kpath := writeFile(t, dir, versions[0].keysFile)
	tpath := fx.write(t, dir, versions[0].tenants)
	keys, err := Load(kpath)
	if err != nil {
		t.Fatal(err)
	}
	tenants, err := LoadTenants(tpath)
	if err != nil {
		t.Fatal(err)
	}
	u, err := Union(keys, tenants)
	if err != nil {
		t.Fatal(err)
	}
	var (
		stop    atomic.Bool
		wg      sync.WaitGroup
		lookups atomic.Int64
	)
	for range 8 {
		wg.Go(func() {
			for !stop.Load() {
				if got, ok := u.Tenant(keyA); !ok || got != "team-a" {
					t.Errorf("Tenant(keyA) = %q, %v during reload", got, ok)
					return
				}
				if got, perms, ok := u.Lookup(keyB); ok && (got != "team-b" || perms != 0) && (got != "team-c" || perms != Attach) {
					t.Errorf("Lookup(keyB) = %q, %q during reload", got, perms)
					return
				}
				lookups.Add(1)
			}
		})
	}
	for i := range 300 {
		v := versions[i%len(versions)]
		replaceFile(t, kpath, v.keysFile)
		fx.replace(t, tpath, v.tenants)
		err := u.Reload()
		if broken := i%len(versions) == 3; broken != (err != nil) {
			t.Fatalf("Reload of version %d: %v", i%len(versions), err)
		}
	}
	stop.Store(true)
	wg.Wait()
	if lookups.Load() == 0 {
		t.Error("no lookups")
	}
}

func TestCheckSecret(t *testing.T) {
	tests := []struct {
		name    string
		secret  string
		wantErr string
	}{
		{"24 bytes", whsec("s", 24), ""},
		{"64 bytes", whsec("s", 64), ""},
		{"33 bytes, no padding needed", whsec("s", 33), ""},
		{"25 bytes, padded", whsec("s", 25), ""},
		{"no prefix", strings.TrimPrefix(whsec("s", 32), secretPrefix), "does not start"},
		{"prefix only", secretPrefix, "decodes to 0 bytes"},
		{"23 bytes", whsec("s", 23), "decodes to 23 bytes"},
		{"65 bytes", whsec("s", 65), "decodes to 65 bytes"},
		{"space inside", whsec("s", 32)[:20] + " " + whsec("s", 32)[20:], "not standard base64"},
		{"CRLF at the end", whsec("s", 32) + "\r\n", "not standard base64"},
		{"padding missing", strings.TrimRight(whsec("s", 25), "="), "padded base64"},
		{"padding in the middle", secretPrefix + "AAAA=AAA" + strings.Repeat("A", 28), "padded base64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkSecret(tt.secret)
			if tt.wantErr == "" {
				if err != nil {
					t.Errorf("checkSecret = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("checkSecret = %v, want an error with %q", err, tt.wantErr)
			}
		})
	}
}

// FuzzParseTenants checks that parseTenants never panics, that what it takes
// is valid, and that its errors show no value from the file but tenant
// names.
func FuzzParseTenants(f *testing.F) {
	fx := newFixture()
	for _, s := range []string{
		"tenants:\n  team-a:\n    keys: [{key: \"$KEYA\", permissions: [attach]}]\n    webhooks: {secrets: [\"$SECA\"], endpoints: [{url: \"https://h.example/?t=$TOKEN\", events: [queued]}]}\n",
		"tenants:\n  team-a:\n    keys: [{key: \"$KEYA\"}]\n  team-b:\n    keys: [{key: \"$KEYA\"}]\n",
		"tenants:\n  team-a: $KEYA\n",
		"tenants:\n  team-a:\n    keys:\n      - $KEYA: [attach]\n",
		"tenants:\n  team-a:\n    webhooks: {secrets: $SECA}\n",
		"tenants:\n  team-a:\n    webhooks: {secrets: [\"$SECSHORT\", \"$SECODD\", \"$SECURL\", \"$SECNOPAD\"]}\n",
		"tenants:\n  team-a:\n    webhooks: {secrets: [\"$SECA\"], endpoints: [{url: \"https://u:$TOKEN@h/\"}, {url: \"http://[::1/$TOKEN\"}]}\n",
		"tenants:\n  team-a:\n    keys: [{key: *$KEYA}]\n",
		"tenants:\n  $KEYA: {}\n  $KEYA: {}\n",
		"",
		"---\n---\n",
		"\x00\xff: [",
	} {
		f.Add([]byte(fx.expand(s)))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := parseTenants(data)
		if err == nil {
			if len(c.keys) != len(c.index) {
				t.Fatalf("%d keys, %d indexes", len(c.keys), len(c.index))
			}
			for tenant, w := range c.webhooks {
				if !runcomfy.ValidID(tenant) || len(w.Secrets) == 0 {
					t.Fatalf("tenant %q with %d secrets taken", tenant, len(w.Secrets))
				}
				for _, s := range w.Secrets {
					if err := checkSecret(s); err != nil {
						t.Fatalf("secret taken: %v", err)
					}
				}
				for _, e := range w.Endpoints {
					if err := checkEndpointURL(e.URL); err != nil || len(e.Events) == 0 {
						t.Fatalf("endpoint taken: %v, %d events", err, len(e.Events))
					}
				}
			}
			return
		}
		// Tenant names may show; nothing else of the file as long as a key.
		msg := err.Error()
		var root yaml.Node
		if yaml.Unmarshal(data, &root) == nil {
			for _, name := range tenantNames(&root) {
				if name != "" {
					msg = strings.ReplaceAll(msg, name, "<tenant>")
				}
			}
		}
		for _, tok := range append(strings.Fields(string(data)), scalars(&root)...) {
			if len(tok) >= MinKeyLen && strings.Contains(msg, tok) {
				t.Fatalf("error %q contains %q from the input", msg, tok)
			}
		}
	})
}

// tenantNames lists the keys of the tenants mapping of a decoded file.
func tenantNames(root *yaml.Node) []string {
	if len(root.Content) == 0 || root.Content[0].Kind != yaml.MappingNode {
		return nil
	}
	top := root.Content[0].Content
	var names []string
	for i := 0; i+1 < len(top); i += 2 {
		if top[i].Value == "tenants" && top[i+1].Kind == yaml.MappingNode {
			for j := 0; j < len(top[i+1].Content); j += 2 {
				names = append(names, top[i+1].Content[j].Value)
			}
		}
	}
	return names
}

// scalars lists every scalar of a decoded file.
func scalars(n *yaml.Node) []string {
	var out []string
	if n.Kind == yaml.ScalarNode {
		out = append(out, n.Value)
	}
	for _, c := range n.Content {
		out = append(out, scalars(c)...)
	}
	return out
}
