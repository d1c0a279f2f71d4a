package auth

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unicode"

	"go.yaml.in/yaml/v3"

	"github.com/comfygate/comfygate/hooks"
	"github.com/comfygate/comfygate/runcomfy"
)

// Limits of the tenants file's values.
const (
	// MinSecretLen and MaxSecretLen bound a webhook signing secret's decoded
	// length, in bytes, as Standard Webhooks does: shorter is guessable,
	// longer buys nothing with HMAC-SHA256.
	MinSecretLen = 24
	MaxSecretLen = 64
	// MaxEndpointURLLen bounds an endpoint URL, in bytes: the same bound a
	// submit's own webhook URL has, so a default never fails where a named
	// one would not.
	MaxEndpointURLLen = 2048
)

// secretPrefix starts every signing secret, as Standard Webhooks writes them,
// so a secret is told apart from a key or a password at a glance.
const secretPrefix = "whsec_"

// knownEvents lists the webhook events an endpoint may ask for, in lifecycle
// order, for errors; state.ParseEventKinds reads the same names.
const knownEvents = "queued, running, output, terminal"

// isEvent reports whether name (lower case) is a webhook event.
func isEvent(name string) bool {
	switch name {
	case "queued", "running", "output", "terminal":
		return true
	}
	return false
}

// defaultEvent is what an endpoint that lists no events receives: the one
// event most callers want, the request's end.
const defaultEvent = "terminal"

// KeySource maps an API key to its tenant and the permissions the key grants.
// *Keys, *Tenants and *KeyUnion provide it, with the same semantics: every
// known key is compared in constant time, and tenant and permissions come from
// one version of the file(s).
type KeySource interface {
	// Tenant is Lookup without the permissions.
	Tenant(key string) (string, bool)
	// Lookup returns the key's tenant and permissions.
	Lookup(key string) (tenant string, perms Permissions, ok bool)
}

var (
	_ KeySource = (*Keys)(nil)
	_ KeySource = (*Tenants)(nil)
	_ KeySource = (*KeyUnion)(nil)
)

// TenantWebhooks is a tenant's outbound-webhook settings.
type TenantWebhooks struct {
	// Secrets are "whsec_" strings, in file order. During a rotation there
	// are several, and every one signs each event, so a receiver that knows
	// either the old or the new secret accepts it.
	Secrets []string
	// Endpoints are the tenant's default endpoints, for a submit that names
	// no webhook of its own.
	Endpoints []Endpoint
}

// Endpoint is a default webhook endpoint.
type Endpoint struct {
	// URL is an absolute http or https URL, as written in the file.
	URL string
	// Events are the events sent to URL: lower case, in file order,
	// ["terminal"] when the file lists none.
	Events []string
}

// clone copies w, so callers never share (and so never change) the slices
// in use.
func (w TenantWebhooks) clone() TenantWebhooks {
	out := TenantWebhooks{Secrets: slices.Clone(w.Secrets)}
	for _, e := range w.Endpoints {
		out.Endpoints = append(out.Endpoints, Endpoint{URL: e.URL, Events: slices.Clone(e.Events)})
	}
	return out
}

// tenantsContent is one version of a tenants file.
type tenantsContent struct {
	keys []entry
	// index is each key's place in its tenant's list, for errors, which
	// name the tenant and the field, never the key.
	index    []int
	webhooks map[string]TenantWebhooks
}

// Tenants is a loaded tenants file. It is safe for concurrent use: Reload
// swaps a new version in atomically, and every read sees one version.
type Tenants struct {
	path    string
	content atomic.Pointer[tenantsContent]
}

// LoadTenants reads the tenants file at path, which holds per tenant its
// outbound-webhook settings and, optionally, its API keys:
//
//	tenants:
//	  team-a:
//	    keys:                  # optional: API keys, as the keys file's lines
//	      - key: "0123456789abcdef0123"
//	        permissions: [attach]   # optional; none by default
//	    webhooks:              # optional
//	      secrets: ["whsec_..."]    # one or more: each signs every event
//	      endpoints:           # optional defaults, for a submit naming none
//	        - url: https://hooks.team-a.example/comfy
//	          events: [terminal]    # queued, running, output, terminal
//
// The file is refused as a whole, with every problem reported, when:
//   - it is empty, holds more than one YAML document, has no tenants, or has
//     a field not shown above (a typo never silently drops a setting);
//   - a tenant name is not letters, digits, '-' and '_' (at most 128), as in
//     the keys file, or a tenant has neither keys nor webhooks;
//   - a key is shorter than MinKeyLen bytes, holds white space or a control
//     character (the keys file could not hold it either), appears twice in
//     the file, or lists a permission other than "attach";
//   - webhooks has no secret (a webhook can only be sent signed), or a secret
//     is not "whsec_" followed by the standard, padded base64 of MinSecretLen
//     to MaxSecretLen bytes, or repeats one of the tenant's;
//   - an endpoint URL is not an absolute http or https URL with a host, has
//     user info or a fragment, is longer than MaxEndpointURLLen bytes, or
//     repeats one of the tenant's;
//   - an event is not one of queued, running, output and terminal (in any
//     case; they are kept lower case), is listed twice, or the list is
//     present but empty (leave it out for [terminal]).
//
// Errors name the tenant and the field (`tenant "team-a": keys[1].key`), or
// for YAML errors the line; never a key or a secret, nor a URL, which may
// carry a token. Like the keys file, the file's mode is not checked: its
// owner protects it.
func LoadTenants(path string) (*Tenants, error) {
	t := &Tenants{path: path}
	if err := t.Reload(); err != nil {
		return nil, err
	}
	return t, nil
}

// Reload reads the file again and swaps its content in at once; on any error
// the content in use stays as it was. Once the file is part of a KeyUnion,
// reload the union instead: this Reload does not reach the union's keys.
func (t *Tenants) Reload() error {
	c, err := t.read()
	if err != nil {
		return err
	}
	t.content.Store(c)
	return nil
}

// read loads the file without swapping it in.
func (t *Tenants) read() (*tenantsContent, error) {
	data, err := os.ReadFile(t.path)
	if err != nil {
		return nil, fmt.Errorf("tenants: %w", err)
	}
	c, err := parseTenants(data)
	if err != nil {
		return nil, fmt.Errorf("tenants %s: %w", t.path, err)
	}
	return c, nil
}

// Webhooks returns the tenant's webhook settings, and false when the file
// configures none for it. The slices are the caller's own.
func (t *Tenants) Webhooks(tenant string) (TenantWebhooks, bool) {
	w, ok := t.content.Load().webhooks[tenant]
	if !ok {
		return TenantWebhooks{}, false
	}
	return w.clone(), true
}

// HasKeys reports whether the file in use holds API keys, for a gateway that
// must decide whether callers authenticate.
func (t *Tenants) HasKeys() bool {
	return len(t.content.Load().keys) > 0
}

// Tenant returns the tenant a key belongs to. Every key is compared, in
// constant time, whatever matched.
func (t *Tenants) Tenant(key string) (string, bool) {
	tenant, _, ok := t.Lookup(key)
	return tenant, ok
}

// Lookup returns the tenant a key belongs to and the permissions the key
// grants, both from one version of the file, exactly as Keys.Lookup does.
func (t *Tenants) Lookup(key string) (tenant string, perms Permissions, ok bool) {
	return lookup(t.content.Load().keys, key)
}

// lookup compares key's digest with every entry's, in constant time, and
// keeps scanning after a match, so the time taken says nothing of which key,
// if any, matched.
func lookup(entries []entry, key string) (tenant string, perms Permissions, ok bool) {
	d := sha256.Sum256([]byte(key))
	for _, e := range entries {
		if subtle.ConstantTimeCompare(d[:], e.digest[:]) == 1 {
			tenant, perms, ok = e.tenant, e.perms, true
		}
	}
	return tenant, perms, ok
}

// The file's shape. A nil pointer or slice is a field left out (or null):
// tenantYAML nil is an empty tenant, webhooksYAML nil no webhooks (unless
// nullWebhooks finds the field given as null), Events nil the default.
type (
	tenantsFileYAML struct {
		Tenants map[string]*tenantYAML `yaml:"tenants"`
	}
	tenantYAML struct {
		Keys     []keyYAML     `yaml:"keys"`
		Webhooks *webhooksYAML `yaml:"webhooks"`
	}
	keyYAML struct {
		Key         string   `yaml:"key"`
		Permissions []string `yaml:"permissions"`
	}
	webhooksYAML struct {
		Secrets   []string       `yaml:"secrets"`
		Endpoints []endpointYAML `yaml:"endpoints"`
	}
	endpointYAML struct {
		URL    string   `yaml:"url"`
		Events []string `yaml:"events"`
	}
)

// parseTenants decodes and validates a tenants file, reporting every problem.
func parseTenants(data []byte) (*tenantsContent, error) {
	var file tenantsFileYAML
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&file); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("empty file")
		}
		return nil, yamlError(err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("more than one YAML document (only one is read)")
	}
	if len(file.Tenants) == 0 {
		return nil, errors.New("no tenants")
	}
	nullHooks, err := nullWebhooks(data)
	if err != nil {
		return nil, yamlError(err)
	}

	c := &tenantsContent{webhooks: map[string]TenantWebhooks{}}
	var errs []error
	type place struct {
		tenant string
		index  int
	}
	seen := map[[sha256.Size]byte]place{} // key digest -> where it was first
	names := make([]string, 0, len(file.Tenants))
	for name := range file.Tenants {
		names = append(names, name)
	}
	slices.Sort(names) // so the errors come in the same order every time
	for _, name := range names {
		tenantErr := func(format string, args ...any) {
			errs = append(errs, fmt.Errorf("tenant %q: "+format, append([]any{name}, args...)...))
		}
		if !runcomfy.ValidID(name) {
			tenantErr("the name may contain only letters, digits, '-' and '_' (at most %d)", runcomfy.MaxIDLen)
			continue
		}
		ty := file.Tenants[name]
		if ty == nil || (len(ty.Keys) == 0 && ty.Webhooks == nil && !nullHooks[name]) {
			tenantErr("neither keys nor webhooks")
			continue
		}
		for i, k := range ty.Keys {
			perms, err := checkKey(k)
			if err != nil {
				tenantErr("keys[%d].%w", i, err)
				continue
			}
			d := sha256.Sum256([]byte(k.Key))
			if prev, dup := seen[d]; dup {
				tenantErr("keys[%d].key: same key as tenant %q keys[%d]", i, prev.tenant, prev.index)
				continue
			}
			seen[d] = place{name, i}
			c.keys = append(c.keys, entry{digest: d, tenant: name, perms: perms})
			c.index = append(c.index, i)
		}
		if ty.Webhooks == nil && !nullHooks[name] {
			continue
		}
		var wy webhooksYAML
		if ty.Webhooks != nil {
			wy = *ty.Webhooks
		}
		w, werrs := checkWebhooks(wy)
		for _, err := range werrs {
			tenantErr("webhooks.%w", err)
		}
		if len(werrs) == 0 {
			c.webhooks[name] = w
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

// nullWebhooks lists the tenants whose webhooks field is present but empty
// ("webhooks:" and nothing under it), which decodes like no field at all: it
// is webhooks configured without a secret, not webhooks left out. data has
// decoded once already, so its shape is known to fit.
func nullWebhooks(data []byte) (map[string]bool, error) {
	var file struct {
		Tenants map[string]map[string]any `yaml:"tenants"`
	}
	if err := yaml.Unmarshal(data, &file); err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for name, fields := range file.Tenants {
		if v, ok := fields["webhooks"]; ok && v == nil {
			out[name] = true
		}
	}
	return out, nil
}

// checkKey validates a key item and returns the permissions it grants. Its
// error starts with the field's name and never quotes a value: a key may
// have landed in any field.
func checkKey(k keyYAML) (Permissions, error) {
	switch {
	case k.Key == "":
		return 0, errors.New("key: missing")
	case len(k.Key) < MinKeyLen:
		return 0, fmt.Errorf("key: shorter than %d bytes", MinKeyLen)
	case strings.ContainsFunc(k.Key, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }):
		return 0, errors.New("key: holds white space or a control character")
	}
	var perms Permissions
	for i, name := range k.Permissions {
		// One name per item: parsePermissions would also read a comma list.
		if strings.Contains(name, ",") {
			return 0, fmt.Errorf("permissions[%d]: one permission per item", i)
		}
		p, err := parsePermissions(name)
		if err != nil {
			return 0, fmt.Errorf("permissions[%d]: %w", i, err)
		}
		perms |= p
	}
	return perms, nil
}

// checkWebhooks validates a tenant's webhooks field; each error starts with
// the field's name below webhooks.
func checkWebhooks(wy webhooksYAML) (TenantWebhooks, []error) {
	var (
		w    TenantWebhooks
		errs []error
	)
	if len(wy.Secrets) == 0 {
		errs = append(errs, errors.New("secrets: none (every event is signed, so webhooks need one)"))
	}
	for i, s := range wy.Secrets {
		if err := checkSecret(s); err != nil {
			errs = append(errs, fmt.Errorf("secrets[%d]: %w", i, err))
			continue
		}
		if j := slices.Index(wy.Secrets[:i], s); j >= 0 {
			errs = append(errs, fmt.Errorf("secrets[%d]: same secret as secrets[%d]", i, j))
			continue
		}
		w.Secrets = append(w.Secrets, s)
	}
	for i, ey := range wy.Endpoints {
		if err := checkEndpointURL(ey.URL); err != nil {
			errs = append(errs, fmt.Errorf("endpoints[%d].url: %w", i, err))
			continue
		}
		if j := slices.IndexFunc(wy.Endpoints[:i], func(o endpointYAML) bool { return o.URL == ey.URL }); j >= 0 {
			errs = append(errs, fmt.Errorf("endpoints[%d].url: same URL as endpoints[%d]", i, j))
			continue
		}
		events, err := checkEvents(ey.Events)
		if err != nil {
			errs = append(errs, fmt.Errorf("endpoints[%d].%w", i, err))
			continue
		}
		w.Endpoints = append(w.Endpoints, Endpoint{URL: ey.URL, Events: events})
	}
	return w, errs
}

// checkSecret validates a signing secret's shape: "whsec_" and the standard,
// padded base64 of MinSecretLen to MaxSecretLen bytes. The hooks package
// owns secrets; this only refuses, at load, one it could not use. The error
// never quotes the secret.
func checkSecret(s string) error {
	b64, ok := strings.CutPrefix(s, secretPrefix)
	if !ok {
		return fmt.Errorf("does not start with %q", secretPrefix)
	}
	// The decoder skips line breaks; a secret holds none.
	if strings.ContainsFunc(b64, func(r rune) bool { return !isBase64Char(r) }) {
		return fmt.Errorf("holds a character that is not standard base64 after %q", secretPrefix)
	}
	raw, err := base64.StdEncoding.Strict().DecodeString(b64)
	if err != nil {
		return fmt.Errorf("is not standard, padded base64 after %q", secretPrefix)
	}
	if len(raw) < MinSecretLen || len(raw) > MaxSecretLen {
		return fmt.Errorf("decodes to %d bytes, want %d to %d", len(raw), MinSecretLen, MaxSecretLen)
	}
	return nil
}

func isBase64Char(r rune) bool {
	return r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '+' || r == '/' || r == '='
}

// checkEndpointURL refuses an endpoint the gateway will not send to. The
// error never quotes the URL, whose path or query may carry a token.
func checkEndpointURL(raw string) error {
	switch {
	case raw == "":
		return errors.New("missing")
	case len(raw) > MaxEndpointURLLen:
		return fmt.Errorf("longer than %d bytes", MaxEndpointURLLen)
	case strings.ContainsRune(raw, '#'):
		return errors.New("has a fragment")
	}
	u, err := url.Parse(raw)
	if err != nil {
		// url's error quotes the URL: not passed on.
		return errors.New("is not a URL")
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return errors.New("is not an absolute http or https URL")
	case u.Opaque != "" || u.Hostname() == "":
		return errors.New("has no host")
	case u.User != nil:
		return errors.New("has user info (credentials belong in the signature, not the URL)")
	case hooks.IsCallbackURL(u):
		return errors.New("is a comfygate's RunComfy callback URL (its path is under /webhooks/runcomfy/)")
	}
	return nil
}

// checkEvents normalises an endpoint's events; an error starts with the
// field's name and never quotes an unknown name.
func checkEvents(names []string) ([]string, error) {
	if names == nil {
		return []string{defaultEvent}, nil
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("events: empty (leave it out for [%s])", defaultEvent)
	}
	events := make([]string, 0, len(names))
	for i, n := range names {
		n = strings.ToLower(strings.TrimSpace(n))
		if !isEvent(n) {
			return nil, fmt.Errorf("events[%d]: unknown event (known: %s)", i, knownEvents)
		}
		if slices.Contains(events, n) {
			return nil, fmt.Errorf("events[%d]: %s is listed twice", i, n)
		}
		events = append(events, n)
	}
	return events, nil
}

// yamlError rewrites a YAML library error so it never shows a value from the
// file: the library quotes the first characters of a value of the wrong
// type, the name of an unknown field and a repeated mapping key, any of
// which may be a misplaced key or secret. Lines and the expected shapes stay.
func yamlError(err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		// Syntax errors are fixed text, quoting a character at most ("did
		// not find expected ',' or '}'"); the rare ones quoting the file
		// (an anchor's name) lose the quote.
		return errors.New(hideQuoted(err.Error()))
	}
	errs := make([]error, 0, len(te.Errors))
	for _, m := range te.Errors {
		errs = append(errs, errors.New(typeErrorLine(m)))
	}
	return errors.Join(errs...)
}

// hideQuoted replaces every quoted part of msg longer than two characters.
func hideQuoted(msg string) string {
	var b strings.Builder
	for msg != "" {
		i := strings.IndexAny(msg, "'\"`")
		if i < 0 {
			b.WriteString(msg)
			break
		}
		q := msg[i]
		j := strings.IndexByte(msg[i+1:], q)
		if j < 0 {
			// An unclosed quote: all that follows may be the value.
			b.WriteString(msg[:i])
			b.WriteString("(value not shown)")
			break
		}
		b.WriteString(msg[:i])
		if quoted := msg[i : i+j+2]; j <= 2 {
			b.WriteString(quoted)
		} else {
			b.WriteString("(value not shown)")
		}
		msg = msg[i+j+2:]
	}
	return b.String()
}

// typeErrorLine rewrites one of yaml.TypeError's messages (see yamlError).
func typeErrorLine(m string) string {
	line, rest, ok := strings.Cut(m, ": ")
	if !ok || !strings.HasPrefix(line, "line ") {
		return "invalid YAML value"
	}
	switch {
	case strings.HasPrefix(rest, "cannot unmarshal "):
		// "cannot unmarshal !!str `abcdefg...` into []string"
		tag, _, _ := strings.Cut(strings.TrimPrefix(rest, "cannot unmarshal "), " ")
		var want string
		if i := strings.LastIndex(rest, " into "); i >= 0 {
			want = rest[i+len(" into "):]
		}
		return fmt.Sprintf("%s: found %s where %s is wanted", line, tagWord(tag), typeWord(want))
	case strings.HasPrefix(rest, "field ") && strings.Contains(rest, " not found in type "):
		name := strings.TrimPrefix(rest[:strings.LastIndex(rest, " not found in type ")], "field ")
		return fmt.Sprintf("%s: unknown field%s", line, shown(name))
	case strings.HasPrefix(rest, "mapping key ") && strings.Contains(rest, " already defined at "):
		i := strings.LastIndex(rest, " already defined at ")
		name, err := strconv.Unquote(strings.TrimPrefix(rest[:i], "mapping key "))
		if err != nil {
			name = ""
		}
		return fmt.Sprintf("%s: repeated mapping key%s, first %s", line, shown(name), rest[i+len(" already defined at "):])
	}
	return line + ": invalid value"
}

// shown quotes a name from the file for an error when it cannot be a key
// nor a secret: shorter than the shortest key, and a plain identifier.
func shown(name string) string {
	if name == "" || len(name) >= MinKeyLen || !runcomfy.ValidID(name) {
		return " (name not shown)"
	}
	return " " + strconv.Quote(name)
}

// tagWord names a YAML tag for an error.
func tagWord(tag string) string {
	switch tag {
	case "!!str":
		return "a string"
	case "!!int", "!!float":
		return "a number"
	case "!!bool":
		return "a boolean"
	case "!!null":
		return "null"
	case "!!seq":
		return "a list"
	case "!!map":
		return "a mapping"
	}
	return "a value"
}

// typeWord names the Go type a value was decoded into, as its YAML shape.
func typeWord(typ string) string {
	switch {
	case strings.HasPrefix(typ, "[]"):
		return "a list"
	case typ == "string":
		return "a string"
	case strings.HasPrefix(typ, "map["), strings.HasPrefix(typ, "auth."), strings.HasPrefix(typ, "*auth."), strings.HasPrefix(typ, "struct"):
		return "a mapping"
	}
	return "another kind of value"
}

// KeyUnion is the API keys of a keys file and a tenants file together, for
// a gateway moving tenants from one file to the other: a key works if either
// file holds it. The files must agree: a key in both must have the same
// tenant and permissions there, or neither file loads. It is safe for
// concurrent use; every lookup sees one version of each file.
type KeyUnion struct {
	keys    *Keys
	tenants *Tenants
	// mu makes Reloads take turns, so two never interleave their stores.
	mu      sync.Mutex
	entries atomic.Pointer[[]entry]
}

// Union joins the content keys and tenants hold now. It fails when they
// disagree on a key (tenant or permissions). From then on reload the union,
// not its parts: their own Reload does not reach it.
func Union(keys *Keys, tenants *Tenants) (*KeyUnion, error) {
	if keys == nil || tenants == nil {
		return nil, errors.New("api keys union: needs a keys file and a tenants file")
	}
	u := &KeyUnion{keys: keys, tenants: tenants}
	k, c := *keys.entries.Load(), tenants.content.Load()
	if err := agree(k, c); err != nil {
		return nil, fmt.Errorf("tenants %s: %w", tenants.path, err)
	}
	u.entries.Store(merge(k, c))
	return u, nil
}

// Reload reads both files again. Each file that loads is swapped in (into
// the union, and into its Keys or Tenants, whose webhooks follow), unless
// it disagrees with the other file's content then in use: then neither
// changes. A file that does not load keeps its previous content, and does
// not hold back the other: a key removed from one file goes at once even if
// the other is broken.
func (u *KeyUnion) Reload() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	newKeys, kerr := u.keys.read()
	newTenants, terr := u.tenants.read()
	if kerr != nil && terr != nil {
		return errors.Join(kerr, terr)
	}
	k, c := *u.keys.entries.Load(), u.tenants.content.Load()
	if kerr == nil {
		k = newKeys
	}
	if terr == nil {
		c = newTenants
	}
	if err := agree(k, c); err != nil {
		return errors.Join(kerr, terr, fmt.Errorf("tenants %s: %w (neither file reloaded)", u.tenants.path, err))
	}
	if kerr == nil {
		u.keys.entries.Store(&k)
	}
	if terr == nil {
		u.tenants.content.Store(c)
	}
	u.entries.Store(merge(k, c))
	return errors.Join(kerr, terr)
}

// Tenant returns the tenant a key belongs to, in either file.
func (u *KeyUnion) Tenant(key string) (string, bool) {
	tenant, _, ok := u.Lookup(key)
	return tenant, ok
}

// Lookup returns the tenant a key belongs to and the permissions it grants,
// in either file, with the semantics of Keys.Lookup: every key of both files
// is compared in constant time.
func (u *KeyUnion) Lookup(key string) (tenant string, perms Permissions, ok bool) {
	return lookup(*u.entries.Load(), key)
}

// read loads the keys file without swapping it in (Reload's first half).
func (k *Keys) read() ([]entry, error) {
	data, err := os.ReadFile(k.path)
	if err != nil {
		return nil, fmt.Errorf("api keys: %w", err)
	}
	entries, err := parse(data)
	if err != nil {
		return nil, fmt.Errorf("api keys %s: %w", k.path, err)
	}
	return entries, nil
}

// agree reports every key of the tenants file that the keys file gives to
// another tenant, or with other permissions. The errors name the tenants and
// the tenants file's field, never the key.
func agree(keys []entry, c *tenantsContent) error {
	byDigest := make(map[[sha256.Size]byte]entry, len(keys))
	for _, e := range keys {
		byDigest[e.digest] = e
	}
	var errs []error
	for i, e := range c.keys {
		other, ok := byDigest[e.digest]
		switch {
		case !ok:
		case other.tenant != e.tenant:
			errs = append(errs, fmt.Errorf("tenant %q: keys[%d]: the keys file gives the same key to tenant %q", e.tenant, c.index[i], other.tenant))
		case other.perms != e.perms:
			errs = append(errs, fmt.Errorf("tenant %q: keys[%d]: the keys file has the same key with other permissions (%s there, %s here)",
				e.tenant, c.index[i], permWords(other.perms), permWords(e.perms)))
		}
	}
	return errors.Join(errs...)
}

// merge is the entries of both files, for one lookup over all of them. A key
// in both (agreeing) is in it twice, which changes no answer.
func merge(keys []entry, c *tenantsContent) *[]entry {
	all := make([]entry, 0, len(keys)+len(c.keys))
	all = append(append(all, keys...), c.keys...)
	return &all
}

// permWords lists permissions for an error, "none" for none.
func permWords(p Permissions) string {
	if p == 0 {
		return "none"
	}
	return "[" + p.String() + "]"
}
