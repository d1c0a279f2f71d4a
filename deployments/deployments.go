// Package deployments reads the deployments file (--deployments-file): the
// policies comfygate applies per RunComfy deployment, such as how long a job
// may wait in the queue or run before the gateway cancels it, and how many
// unfinished requests a deployment takes. A deployment is a GPU pool billed
// by the second, so its limits belong to the deployment, not to the caller.
//
// The file is YAML:
//
//	# Policies for deployments not listed below (all optional).
//	default:
//	  max_queue_duration: 10m      # cancel a job still queued this long after its submit
//	  max_run_duration: 1h         # cancel a job still running this long after it started
//	# Per deployment id; a field left out falls back to `default`.
//	deployments:
//	  6f1c2d3e-aaaa-bbbb-cccc-123456789abc:
//	    max_queue_duration: 5m
//	    max_run_duration: 30m
//	    max_concurrency: 20            # unfinished requests on this deployment, all tenants together
//	    max_concurrency_per_tenant: 5  # unfinished requests of one tenant on it
//
// The file is read once, at start, and refused as a whole when:
//   - it holds a field not shown above, anywhere (a typo never silently drops
//     a limit), a field twice, more than one YAML document, or an alias (*name);
//   - a duration is not a Go duration ("90s", "30m", "1h30m") from MinDuration
//     to MaxDuration; a bare number is refused, since its unit would be a guess;
//   - a concurrency cap is not a whole number from 1 to MaxConcurrency, a
//     per-tenant cap exceeds its deployment's cap, or either is under default
//     (one cap shared by every deployment would be ambiguous);
//   - a deployment id is empty, longer than 128 bytes, holds a character other
//     than letters, digits, '-' and '_' (as the gateway's ids), or repeats.
//
// An empty file, or one of comments only, sets no policies; a deployment
// listed with nothing under it ("dep-1:" or "dep-1: {}") takes the defaults.
// Every error names the line of the offending key or value.
package deployments

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"

	"github.com/comfygate/comfygate/runcomfy"
)

// Limits of the file's values.
const (
	// MinDuration is the shortest deadline: anything shorter would cancel
	// jobs before RunComfy could report their first status.
	MinDuration = time.Second
	// MaxDuration is the longest deadline: RunComfy keeps requests about 7
	// days, so a longer one could never fire.
	MaxDuration = 7 * 24 * time.Hour
	// MaxConcurrency bounds a concurrency cap, so a typo of extra digits is
	// caught rather than read as "no cap" in practice.
	MaxConcurrency = 1_000_000
)

// maxFileSize bounds the file Load reads: a policy file is a few kilobytes,
// and a huge one is a wrong path, not a configuration.
const maxFileSize = 1 << 20

// maxErrors bounds how many problems one error reports, so a wrong file
// (a large file that is not a deployments file) yields a readable message.
const maxErrors = 20

// The file's field names.
const (
	keyDefault     = "default"
	keyDeployments = "deployments"

	fieldQueue     = "max_queue_duration"
	fieldRun       = "max_run_duration"
	fieldConc      = "max_concurrency"
	fieldPerTenant = "max_concurrency_per_tenant"

	knownTop       = keyDefault + ", " + keyDeployments
	knownDefault   = fieldQueue + ", " + fieldRun
	knownPolicy    = fieldQueue + ", " + fieldRun + ", " + fieldConc + ", " + fieldPerTenant
	durationSample = `"90s", "30m" or "1h30m"`
)

// Policy is what applies to one deployment. Zero means none (no deadline, no cap).
type Policy struct {
	// MaxQueueDuration is how long after its submit a job may still be
	// queued before the gateway cancels it: a deployment scaled to zero or
	// saturated must not hold a caller's job (and its slot) forever.
	MaxQueueDuration time.Duration
	// MaxRunDuration is how long after it started a job may still run
	// before the gateway cancels it: a stuck workflow bills GPU time.
	MaxRunDuration time.Duration
	// MaxConcurrency caps the deployment's unfinished requests, all tenants
	// together, to match the GPUs it can scale to.
	MaxConcurrency int
	// MaxConcurrencyPerTenant caps one tenant's unfinished requests on the
	// deployment, so one tenant cannot take all of MaxConcurrency.
	MaxConcurrencyPerTenant int
}

// Capped reports whether p sets either concurrency cap, so a gateway counts
// unfinished requests only for the deployments that need it.
func (p Policy) Capped() bool {
	return p.MaxConcurrency > 0 || p.MaxConcurrencyPerTenant > 0
}

// File is a parsed deployments file. A nil *File is valid and has no
// policies (For returns the zero Policy), so a gateway started without the
// flag needs no special case.
type File struct {
	def      Policy
	policies map[string]Policy // each already merged with def
}

// Load reads and parses the deployments file at path. Its errors start with
// "deployments file <path>: ", so the process can stop with them as they are.
func Load(path string) (*File, error) {
	data, err := readFile(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("deployments file %s: %s: %w", path, pe.Op, pe.Err)
		}
		return nil, fmt.Errorf("deployments file %s: %w", path, err)
	}
	f, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("deployments file %s: %w", path, err)
	}
	return f, nil
}

// readFile reads at most maxFileSize bytes of path, refusing a larger file
// before it is all in memory.
func readFile(path string) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, maxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("larger than %d bytes (1 MiB): is this the deployments file?", maxFileSize)
	}
	return data, nil
}

// Parse validates a deployments file's content. Its errors start with
// "line N: " where the line is known (Load adds the path); every problem is
// reported, in line order, up to a bound.
func Parse(data []byte) (*File, error) {
	if line, msg := checkText(data); msg != "" {
		return nil, fmt.Errorf("line %d: %s", line, msg)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return &File{}, nil // empty, or comments only
		}
		return nil, syntaxError(err, data)
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return nil, syntaxError(err, data)
	default:
		return nil, fmt.Errorf("line %d: a second YAML document (\"---\"): the file must hold only one", extra.Line)
	}

	p := &parser{}
	f := p.file(&doc)
	if len(p.errs) > 0 {
		return nil, p.err()
	}
	return f, nil
}

// For returns the policy of a deployment: the fields its entry sets, each
// other field from default; default alone for a deployment not listed.
func (f *File) For(deploymentID string) Policy {
	if f == nil {
		return Policy{}
	}
	if p, ok := f.policies[deploymentID]; ok {
		return p
	}
	return f.def
}

// Len returns the number of deployments the file lists, for a start log line
// that shows the file was the one meant.
func (f *File) Len() int {
	if f == nil {
		return 0
	}
	return len(f.policies)
}

// lineError is one problem, at a line of the file.
type lineError struct {
	line int
	msg  string
}

// parser walks the file's nodes, collecting every problem.
type parser struct {
	errs []lineError
}

func (p *parser) errorf(n *yaml.Node, format string, args ...any) {
	p.errs = append(p.errs, lineError{n.Line, fmt.Sprintf(format, args...)})
}

// err joins the problems found, in line order.
func (p *parser) err() error {
	slices.SortStableFunc(p.errs, func(a, b lineError) int { return cmp.Compare(a.line, b.line) })
	var errs []error
	for i, e := range p.errs {
		if i == maxErrors {
			errs = append(errs, fmt.Errorf("and %d more problems", len(p.errs)-maxErrors))
			break
		}
		errs = append(errs, fmt.Errorf("line %d: %s", e.line, e.msg))
	}
	return errors.Join(errs...)
}

// alias reports (and refuses) an alias: expanding them is how a small YAML
// file becomes a huge one, and a policy file has no use for them.
func (p *parser) alias(n *yaml.Node) bool {
	if n.Kind != yaml.AliasNode {
		return false
	}
	p.errorf(n, "an alias (*%s): aliases are not allowed in this file; write the value out", clip(n.Value))
	return true
}

// pair is one key and value of a mapping, the key's name checked.
type pair struct {
	name       string
	key, value *yaml.Node
}

// pairs lists m's entries, refusing aliases, keys that are not plain names,
// and repeated keys (what names a repeat: "deployment", "field").
func (p *parser) pairs(m *yaml.Node, what string) []pair {
	var out []pair
	first := map[string]int{}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		if p.alias(k) {
			continue
		}
		if k.Kind != yaml.ScalarNode {
			p.errorf(k, "a key must be a name, found %s", describe(k))
			continue
		}
		if line, dup := first[k.Value]; dup {
			p.errorf(k, "%s %s repeated, first at line %d", what, quote(k.Value), line)
			continue
		}
		first[k.Value] = k.Line
		if p.alias(v) {
			continue
		}
		out = append(out, pair{k.Value, k, v})
	}
	return out
}

// file reads the document: the top-level mapping, then default, then the
// deployments (whose fields fall back to default's, wherever it is).
func (p *parser) file(doc *yaml.Node) *File {
	f := &File{policies: map[string]Policy{}}
	if len(doc.Content) == 0 {
		return f
	}
	root := doc.Content[0]
	if p.alias(root) || isNull(root) {
		return f
	}
	if root.Kind != yaml.MappingNode {
		p.errorf(root, "the file must be a mapping with the keys %s, found %s", knownTop, describe(root))
		return f
	}
	var defNode, depNode *yaml.Node
	for _, kv := range p.pairs(root, "key") {
		switch kv.name {
		case keyDefault:
			defNode = kv.value
		case keyDeployments:
			depNode = kv.value
		default:
			p.errorf(kv.key, "unknown field %s; known: %s", quote(kv.name), knownTop)
		}
	}
	if defNode != nil && !isNull(defNode) {
		if defNode.Kind != yaml.MappingNode {
			p.errorf(defNode, "default must be a mapping of the fields %s, found %s", knownDefault, describe(defNode))
		} else {
			f.def, _ = p.policy(defNode, Policy{}, true)
		}
	}
	if depNode != nil && !isNull(depNode) {
		if depNode.Kind != yaml.MappingNode {
			p.errorf(depNode, "deployments must be a mapping from deployment id to policy, found %s", describe(depNode))
		} else {
			p.deployments(depNode, f)
		}
	}
	return f
}

// deployments reads the deployments mapping into f.policies.
func (p *parser) deployments(m *yaml.Node, f *File) {
	for _, kv := range p.pairs(m, "deployment") {
		if msg := checkID(kv.name); msg != "" {
			p.errorf(kv.key, "%s", msg)
			continue
		}
		pol := f.def
		switch {
		case isNull(kv.value):
		case kv.value.Kind != yaml.MappingNode:
			p.errorf(kv.value, "deployment %s must be a mapping of the fields %s (or empty, for the defaults), found %s",
				quote(kv.name), knownPolicy, describe(kv.value))
			continue
		default:
			var ok bool
			if pol, ok = p.policy(kv.value, f.def, false); !ok {
				continue
			}
		}
		f.policies[kv.name] = pol
	}
}

// policy reads a policy mapping over base. Under default the caps are
// refused. ok is false when the mapping had a problem.
func (p *parser) policy(m *yaml.Node, base Policy, isDefault bool) (pol Policy, ok bool) {
	before := len(p.errs)
	pol = base
	known := knownPolicy
	if isDefault {
		known = knownDefault
	}
	var concNode, perTenantNode *yaml.Node
	for _, kv := range p.pairs(m, "field") {
		switch kv.name {
		case fieldQueue:
			if d, ok := p.duration(kv.name, kv.value); ok {
				pol.MaxQueueDuration = d
			}
		case fieldRun:
			if d, ok := p.duration(kv.name, kv.value); ok {
				pol.MaxRunDuration = d
			}
		case fieldConc, fieldPerTenant:
			if isDefault {
				p.errorf(kv.key, "%s is not allowed under default (one cap shared by all deployments would be ambiguous): set it per deployment", kv.name)
				continue
			}
			n, ok := p.count(kv.name, kv.value)
			if !ok {
				continue
			}
			if kv.name == fieldConc {
				pol.MaxConcurrency, concNode = n, kv.value
			} else {
				pol.MaxConcurrencyPerTenant, perTenantNode = n, kv.value
			}
		default:
			p.errorf(kv.key, "unknown field %s; known: %s", quote(kv.name), known)
		}
	}
	if concNode != nil && perTenantNode != nil && pol.MaxConcurrencyPerTenant > pol.MaxConcurrency {
		p.errorf(perTenantNode, "%s %d is more than %s %d (line %d): one tenant cannot have more than all together",
			fieldPerTenant, pol.MaxConcurrencyPerTenant, fieldConc, pol.MaxConcurrency, concNode.Line)
	}
	return pol, len(p.errs) == before
}

// duration reads a duration field's value.
func (p *parser) duration(name string, n *yaml.Node) (time.Duration, bool) {
	if isNull(n) {
		p.errorf(n, "%s has no value: write a duration such as %s, or leave the field out", name, durationSample)
		return 0, false
	}
	if n.Kind != yaml.ScalarNode {
		p.errorf(n, "%s: wanted a duration such as %s, found %s", name, durationSample, describe(n))
		return 0, false
	}
	switch n.ShortTag() {
	case "!!str":
	case "!!int", "!!float":
		p.unitless(name, n)
		return 0, false
	default:
		p.errorf(n, "%s: wanted a duration such as %s, found %s", name, durationSample, describe(n))
		return 0, false
	}
	d, err := time.ParseDuration(n.Value)
	if err != nil {
		if _, ferr := strconv.ParseFloat(n.Value, 64); ferr == nil {
			p.unitless(name, n)
		} else {
			p.errorf(n, "%s: %s is not a duration: write it as Go does, such as %s (units ns, us, ms, s, m, h)", name, quote(n.Value), durationSample)
		}
		return 0, false
	}
	if d < MinDuration || d > MaxDuration {
		p.errorf(n, "%s: %s is out of range: wanted %s", name, quote(n.Value), durationRange())
		return 0, false
	}
	return d, true
}

// durationRange says which durations the file takes, for errors.
func durationRange() string {
	return fmt.Sprintf("%s to %s (RunComfy keeps a request about 7 days)", shortDuration(MinDuration), shortDuration(MaxDuration))
}

// shortDuration writes d as a person would: "168h", not "168h0m0s".
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// unitless refuses a duration written as a bare number: seconds, minutes and
// milliseconds are all common guesses, so the file must say.
func (p *parser) unitless(name string, n *yaml.Node) {
	v := strings.ReplaceAll(n.Value, "_", "")
	if d, err := time.ParseDuration(v + "s"); err == nil && d > 0 {
		p.errorf(n, "%s: %s has no unit: write one, such as %q or %q", name, clip(n.Value), v+"s", v+"m")
		return
	}
	p.errorf(n, "%s: %s is not a duration: wanted one such as %s, from %s", name, clip(n.Value), durationSample, durationRange())
}

// count reads a concurrency cap's value.
func (p *parser) count(name string, n *yaml.Node) (int, bool) {
	want := fmt.Sprintf("a whole number from 1 to %d", MaxConcurrency)
	if isNull(n) {
		p.errorf(n, "%s has no value: write %s, or leave the field out", name, want)
		return 0, false
	}
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
		hint := ""
		if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!str" {
			if _, err := strconv.Atoi(strings.TrimSpace(n.Value)); err == nil {
				hint = " (write it without quotes)"
			}
		}
		p.errorf(n, "%s: wanted %s, found %s%s", name, want, describe(n), hint)
		return 0, false
	}
	// Decimal only: YAML also reads 010 as 8, 0x10 and 1_0, which a
	// reader of the file would not.
	digits := strings.TrimPrefix(n.Value, "-")
	if digits == "" || strings.TrimLeft(digits, "0123456789") != "" || (len(digits) > 1 && digits[0] == '0') {
		p.errorf(n, "%s: %s: wanted %s, written in decimal digits", name, clip(n.Value), want)
		return 0, false
	}
	var v int64
	if err := n.Decode(&v); err != nil || v < 1 || v > MaxConcurrency {
		p.errorf(n, "%s: %s is out of range: wanted %s", name, clip(n.Value), want)
		return 0, false
	}
	return int(v), true
}

// checkID applies the gateway's id rule (runcomfy.ValidID) to a deployment
// id, and says which part it broke; "" when the id is valid.
func checkID(id string) string {
	switch {
	case id == "":
		return "a deployment id is empty"
	case len(id) > runcomfy.MaxIDLen:
		return fmt.Sprintf("deployment id %s is longer than %d bytes", quote(id), runcomfy.MaxIDLen)
	case !runcomfy.ValidID(id):
		return fmt.Sprintf("deployment id %s may contain only letters, digits, '-' and '_'", quote(id))
	}
	return ""
}

// isNull reports whether n is YAML's null: a key with nothing after it,
// "~" or "null".
func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// describe names a node for an error: its kind and, for a scalar, its value.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
	default:
		return "another kind of value"
	}
	switch n.ShortTag() {
	case "!!str":
		return "the string " + quote(n.Value)
	case "!!int", "!!float":
		return "the number " + clip(n.Value)
	case "!!bool":
		return "the boolean " + clip(n.Value)
	case "!!null":
		return "null"
	}
	return fmt.Sprintf("a %s value", clip(n.ShortTag()))
}

// clipLen bounds the part of a value an error shows.
const clipLen = 40

// clip shows a number, a boolean or a name for an error: as it is when it
// is short and plain, quoted otherwise.
func clip(s string) string {
	if s != "" && len(s) <= clipLen && strings.Trim(s, plainChars) == "" {
		return s
	}
	return quote(s)
}

// plainChars are what clip shows unquoted.
const plainChars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-"

// quote quotes s for an error, cut to clipLen bytes (at a rune boundary).
func quote(s string) string {
	if len(s) <= clipLen {
		return strconv.Quote(s)
	}
	cut := clipLen
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.Quote(s[:cut]) + "..."
}

// checkText finds what the YAML library refuses without naming a line:
// bytes that are not UTF-8, and characters YAML does not allow.
func checkText(data []byte) (line int, msg string) {
	line = 1
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		switch {
		case r == utf8.RuneError && size <= 1:
			return line, "not valid UTF-8 (the file must be UTF-8 text)"
		case !yamlChar(r):
			return line, fmt.Sprintf("character %U is not allowed in YAML", r)
		}
		line += lineBreak(data[i:])
		i += size
	}
	return 0, ""
}

// lineBreak is 1 if data starts with a line break as the YAML library
// counts them (a CR before an LF is the same break as the LF), else 0.
func lineBreak(data []byte) int {
	r, _ := utf8.DecodeRune(data)
	switch r {
	case '\r':
		if len(data) > 1 && data[1] == '\n' {
			return 0
		}
		return 1
	case '\n', '\u0085', '\u2028', '\u2029':
		return 1
	}
	return 0
}

// lineOf returns the line of data's byte i.
func lineOf(data []byte, i int) int {
	line := 1
	for j := 0; j < i; j++ {
		line += lineBreak(data[j:])
	}
	return line
}

// yamlChar reports whether YAML allows r in a file (YAML 1.2's c-printable).
func yamlChar(r rune) bool {
	return r == '\t' || r == '\n' || r == '\r' || r >= 0x20 && r <= 0x7e || r == 0x85 ||
		r >= 0xa0 && r <= 0xd7ff || r >= 0xe000 && r <= 0xfffd || r >= 0x10000 && r <= 0x10ffff
}

// syntaxError turns a YAML library error into this package's form: "line N:
// ..." where the library gives the line (it does not on the first line).
func syntaxError(err error, data []byte) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	if strings.HasPrefix(msg, "line ") {
		return errors.New(msg)
	}
	// The one refusal of an alias the walk never sees: an alias of an
	// anchor not defined (before it).
	if name, ok := strings.CutPrefix(msg, "unknown anchor '"); ok {
		name, _, _ = strings.Cut(name, "'")
		if i := bytes.Index(data, []byte("*"+name)); i >= 0 && name != "" {
			line := lineOf(data, i)
			return fmt.Errorf("line %d: an alias (*%s) of no anchor: aliases are not allowed in this file; write the value out", line, clip(name))
		}
	}
	return fmt.Errorf("invalid YAML: %s", msg)
}
