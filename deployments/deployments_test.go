package deployments

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/runcomfy"
)

// lines joins its arguments as the lines of a file, so a test's line
// numbers are its arguments' positions (the first is line 1).
func lines(ls ...string) string {
	return strings.Join(ls, "\n") + "\n"
}

const dep = "6f1c2d3e-aaaa-bbbb-cccc-123456789abc"

// errorCase is a file Parse refuses: its error must hold "line <line>: "
// and want.
type errorCase struct {
	name string
	file string
	line int // 0: the error names no line
	want string
}

var errorCases = []errorCase{
	// Keys.
	{"unknown top-level field", lines(
		"default:",
		"  max_run_duration: 1h",
		"deployment:",
		"  x: {}",
	), 3, `unknown field "deployment"; known: default, deployments`},
	{"unknown field under default", lines(
		"# defaults",
		"default:",
		"  max_run_duration: 1h",
		"  max_queue: 5m",
	), 4, `unknown field "max_queue"; known: max_queue_duration, max_run_duration`},
	{"unknown field under a deployment", lines(
		"deployments:",
		"  "+dep+":",
		"    max_run_duration: 1h",
		"    max_queue: 5m",
	), 4, `unknown field "max_queue"; known: max_queue_duration, max_run_duration, max_concurrency, max_concurrency_per_tenant`},
	{"field names are case-sensitive", lines(
		"default:",
		"  Max_Run_Duration: 1h",
	), 2, `unknown field "Max_Run_Duration"`},
	{"merge key", lines(
		"default: &d",
		"  max_run_duration: 1h",
		"deployments:",
		"  x:",
		"    <<: *d",
	), 5, "alias (*d)"},
	{"repeated top-level key", lines(
		"default:",
		"  max_run_duration: 1h",
		"deployments: {}",
		"default:",
		"  max_run_duration: 2h",
	), 4, `key "default" repeated, first at line 1`},
	{"repeated field", lines(
		"deployments:",
		"  x:",
		"    max_run_duration: 1h",
		"    max_queue_duration: 1h",
		"    max_run_duration: 2h",
	), 5, `field "max_run_duration" repeated, first at line 3`},
	{"key that is a list", lines(
		"default:",
		"  ? [a, b]",
		"  : 1h",
	), 2, "a key must be a name, found a list"},

	// Durations.
	{"bare number of seconds", lines(
		"default:",
		"  max_queue_duration: 10m",
		"  max_run_duration: 300",
	), 3, `max_run_duration: 300 has no unit: write one, such as "300s"`},
	{"quoted bare number", lines(
		"default:",
		`  max_queue_duration: "300"`,
	), 2, `"300s"`},
	{"bare float", lines(
		"default:",
		"  max_queue_duration: 1.5",
	), 2, `"1.5s"`},
	{"bare zero", lines(
		"default:",
		"  max_queue_duration: 0",
	), 2, "max_queue_duration: 0 is not a duration"},
	{"bare negative number", lines(
		"default:",
		"  max_queue_duration: -5",
	), 2, "max_queue_duration: -5 is not a duration"},
	{"zero duration", lines(
		"deployments:",
		"  x:",
		"    max_run_duration: 0s",
	), 3, `max_run_duration: "0s" is out of range: wanted 1s to 168h`},
	{"quoted zero", lines(
		"default:",
		`  max_run_duration: "0"`,
	), 2, `"0" is out of range`},
	{"negative duration", lines(
		"default:",
		"  max_run_duration: -5m",
	), 2, `"-5m" is out of range`},
	{"below MinDuration", lines(
		"default:",
		"  max_run_duration: 999ms",
	), 2, `"999ms" is out of range`},
	{"above MaxDuration", lines(
		"default:",
		"  max_run_duration: 168h1s",
	), 2, `"168h1s" is out of range`},
	{"days are not a Go unit", lines(
		"default:",
		"  max_run_duration: 8d",
	), 2, `"8d" is not a duration`},
	{"duration of words", lines(
		"default:",
		"  max_run_duration: one hour",
	), 2, `"one hour" is not a duration`},
	{"null duration", lines(
		"default:",
		"  max_run_duration:",
	), 2, "max_run_duration has no value"},
	{"boolean duration", lines(
		"default:",
		"  max_run_duration: true",
	), 2, "found the boolean true"},
	{"list duration", lines(
		"default:",
		"  max_run_duration: [1h]",
	), 2, "found a list"},
	{"mapping duration", lines(
		"default:",
		"  max_run_duration:",
		"    hours: 1",
	), 3, "found a mapping"},
	{"custom tag on a duration", lines(
		"default:",
		"  max_run_duration: !dur 1h",
	), 2, `found a "!dur" value`},

	// Concurrency.
	{"float cap", lines(
		"deployments:",
		"  x:",
		"    max_concurrency: 2.5",
	), 3, "max_concurrency: wanted a whole number from 1 to 1000000, found the number 2.5"},
	{"integral float cap", lines(
		"deployments:",
		"  x:",
		"    max_concurrency: 2.0",
	), 3, "found the number 2.0"},
	{"quoted cap", lines(
		"deployments:",
		"  x:",
		`    max_concurrency: "5"`,
	), 3, `found the string "5" (write it without quotes)`},
	{"word cap", lines(
		"deployments:",
		"  x:",
		"    max_concurrency_per_tenant: five",
	), 3, `max_concurrency_per_tenant: wanted a whole number from 1 to 1000000, found the string "five"`},
	{"octal cap", lines(
		"deployments:",
		"  x:",
		"    max_concurrency: 010",
	), 3, "max_concurrency: 010: wanted a whole number from 1 to 1000000, written in decimal digits"},
	{"hexadecimal cap", lines(
		"deployments:",
		"  x:",
		"    max_concurrency: 0x10",
	), 3, "max_concurrency: 0x10: wanted a whole number"},
	{"signed cap", lines(
		"deployments:",
		"  x:",
		"    max_concurrency: +10",
	), 3, "max_concurrency: +10: wanted a whole number"},
	{"underscored cap", lines(
		"deployments:",
		"  x:",
		"    max_concurrency_per_tenant: 1_0",
	), 3, "max_concurrency_per_tenant: 1_0: wanted a whole number"},
	{"negative cap", lines(
		"deployments:",
		"  x:",
		"    max_concurrency: -1",
	), 3, "max_concurrency: -1 is out of range"},
	{"zero cap", lines(
		"deployments:",
		"  x:",
		"    max_concurrency_per_tenant: 0",
	), 3, "max_concurrency_per_tenant: 0 is out of range"},
	{"cap above MaxConcurrency", lines(
		"deployments:",
		"  x:",
		"    max_concurrency: 1000001",
	), 3, "1000001 is out of range"},
	{"cap beyond int64", lines(
		"deployments:",
		"  x:",
		"    max_concurrency: 99999999999999999999",
	), 3, "max_concurrency: wanted a whole number"},
	{"null cap", lines(
		"deployments:",
		"  x:",
		"    max_concurrency: ~",
	), 3, "max_concurrency has no value"},
	{"list cap", lines(
		"deployments:",
		"  x:",
		"    max_concurrency: [5]",
	), 3, "found a list"},
	{"per-tenant cap above the cap", lines(
		"deployments:",
		"  a: {}",
		"  x:",
		"    max_concurrency: 20",
		"    max_concurrency_per_tenant: 21",
	), 5, "max_concurrency_per_tenant 21 is more than max_concurrency 20 (line 4)"},
	{"per-tenant cap above the cap, written first", lines(
		"deployments:",
		"  x:",
		"    max_concurrency_per_tenant: 21",
		"    max_concurrency: 20",
	), 3, "max_concurrency_per_tenant 21 is more than max_concurrency 20 (line 4)"},
	{"cap under default", lines(
		"default:",
		"  max_run_duration: 1h",
		"  max_concurrency: 20",
	), 3, "max_concurrency is not allowed under default (one cap shared by all deployments would be ambiguous): set it per deployment"},
	{"per-tenant cap under default", lines(
		"default:",
		"  max_concurrency_per_tenant: 5",
	), 2, "max_concurrency_per_tenant is not allowed under default"},

	// Deployment ids.
	{"empty id", lines(
		"deployments:",
		"  a: {}",
		`  "": {}`,
	), 3, "a deployment id is empty"},
	{"id too long", lines(
		"deployments:",
		"  "+strings.Repeat("a", 129)+": {}",
	), 2, "is longer than 128 bytes"},
	{"id with a dot", lines(
		"deployments:",
		"  a.b: {}",
	), 2, `deployment id "a.b" may contain only letters, digits, '-' and '_'`},
	{"id with a slash", lines(
		"deployments:",
		"  a/b: {}",
	), 2, `deployment id "a/b" may contain only`},
	{"id with a space", lines(
		"deployments:",
		`  "a b": {}`,
	), 2, `deployment id "a b" may contain only`},
	{"id that is a list", lines(
		"deployments:",
		"  ? [a]",
		"  : {}",
	), 2, "a key must be a name, found a list"},
	{"repeated id", lines(
		"default:",
		"  max_run_duration: 1h",
		"deployments:",
		"  # first",
		"  x:",
		"    max_run_duration: 2h",
		"  y: {}",
		"",
		"  x: {}",
	), 9, `deployment "x" repeated, first at line 5`},

	// Shapes.
	{"top-level list", lines(
		"# comment",
		"- default",
	), 2, "the file must be a mapping with the keys default, deployments, found a list"},
	{"top-level string", lines(
		"",
		"hello",
	), 2, `found the string "hello"`},
	{"default that is a list", lines(
		"default:",
		"  - max_run_duration: 1h",
	), 2, "default must be a mapping"},
	{"default that is a string", lines(
		"default: 1h",
	), 1, `default must be a mapping of the fields max_queue_duration, max_run_duration, found the string "1h"`},
	{"deployments that is a list", lines(
		"deployments:",
		"  - "+dep,
	), 2, "deployments must be a mapping from deployment id to policy, found a list"},
	{"deployment that is a number", lines(
		"deployments:",
		"  x: 5",
	), 2, `deployment "x" must be a mapping`},
	{"deployment that is a list", lines(
		"deployments:",
		"  x:",
		"    - max_run_duration: 1h",
	), 3, `deployment "x" must be a mapping`},
	{"second document", lines(
		"default:",
		"  max_run_duration: 1h",
		"---",
		"deployments: {}",
	), 3, "a second YAML document"},
	{"second empty document", lines(
		"default: {}",
		"",
		"---",
	), 3, "a second YAML document"},
	{"two empty documents", lines(
		"---",
		"---",
	), 2, "a second YAML document"},

	// Aliases.
	{"alias as a value", lines(
		"default:",
		"  max_run_duration: &d 1h",
		"deployments:",
		"  x:",
		"    max_run_duration: *d",
	), 5, "an alias (*d): aliases are not allowed"},
	{"alias as a deployment", lines(
		"default: &d",
		"  max_run_duration: 1h",
		"deployments:",
		"  x: *d",
	), 4, "alias (*d)"},
	{"alias as a key", lines(
		"deployments:",
		"  &k x: {}",
		"  *k : {}",
	), 3, "alias (*k)"},
	{"alias as the deployments", lines(
		"default: &d {}",
		"deployments: *d",
	), 2, "alias (*d)"},
	{"alias of no anchor", lines(
		"default:",
		"  max_run_duration: *nowhere",
	), 2, "alias (*nowhere) of no anchor"},

	// Text.
	{"syntax error", lines(
		"default:",
		"  max_run_duration: 1h",
		"    max_queue_duration: 5m",
	), 3, "mapping values are not allowed"},
	{"tab indentation", lines(
		"default:",
		"\tmax_run_duration: 1h",
	), 2, "cannot start any token"},
	{"old Mac line ends", "default:\r  max_queue_duration: 1h\r  max_run_duration: 300\r", 3, "has no unit"},
	{"control character after CR line ends", "default:\r  max_queue_duration: 1h\r\x01", 3, "character U+0001"},
	{"alias of no anchor after CRLF line ends", "default:\r\n  max_run_duration: *x\r\n", 2, "alias (*x)"},
	{"control character", lines(
		"default:",
		"  max_run_duration: 1h",
		"  max_queue_duration: 5m\x01",
	), 3, "character U+0001 is not allowed"},
	{"not UTF-8", lines(
		"deployments:",
		"  caf\xe9: {}",
	), 2, "not valid UTF-8"},
}

func TestParseErrors(t *testing.T) {
	for _, tc := range errorCases {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Parse([]byte(tc.file))
			if err == nil {
				t.Fatalf("Parse succeeded (%d deployments), want an error at line %d", f.Len(), tc.line)
			}
			msg := err.Error()
			if tc.line > 0 {
				prefix := "line " + strconv.Itoa(tc.line) + ": "
				if !strings.HasPrefix(msg, prefix) {
					t.Errorf("error %q does not start with %q", msg, prefix)
				}
			}
			if !strings.Contains(msg, tc.want) {
				t.Errorf("error %q does not contain %q", msg, tc.want)
			}
			if f != nil {
				t.Errorf("Parse returned a File with its error")
			}
		})
	}
}

func TestParseReportsEveryProblemInLineOrder(t *testing.T) {
	file := lines(
		"deployments:",
		"  x:",
		"    max_concurrency_per_tenant: 9", // 3: above the cap on line 6
		"    max_run_duration: 300",         // 4
		"    bogus: 1",                      // 5
		"    max_concurrency: 8",            // 6
		"default:",                          // 7
		"  max_queue_duration: 8d",          // 8
		"nonsense: true",                    // 9
	)
	_, err := Parse([]byte(file))
	if err == nil {
		t.Fatal("Parse succeeded")
	}
	got := strings.Split(err.Error(), "\n")
	want := []string{"line 3: ", "line 4: ", "line 5: ", "line 8: ", "line 9: "}
	if len(got) != len(want) {
		t.Fatalf("error has %d lines, want %d:\n%s", len(got), len(want), err)
	}
	for i, w := range want {
		if !strings.HasPrefix(got[i], w) {
			t.Errorf("error line %d is %q, want it to start with %q", i, got[i], w)
		}
	}
}

func TestParseBoundsTheErrorsReported(t *testing.T) {
	ls := []string{"deployments:"}
	for range maxErrors + 5 {
		ls = append(ls, "  a.b: {}")
	}
	_, err := Parse([]byte(lines(ls...)))
	if err == nil {
		t.Fatal("Parse succeeded")
	}
	got := strings.Split(err.Error(), "\n")
	if len(got) != maxErrors+1 || got[maxErrors] != "and 5 more problems" {
		t.Errorf("error has %d lines, ending %q; want %d, ending %q", len(got), got[len(got)-1], maxErrors+1, "and 5 more problems")
	}
}

func TestParseValid(t *testing.T) {
	const (
		longID = "0123456789012345678901234567890123456789012345678901234567890123" +
			"0123456789012345678901234567890123456789012345678901234567890123"
	)
	if len(longID) != runcomfy.MaxIDLen {
		t.Fatalf("longID is %d bytes", len(longID))
	}
	tests := []struct {
		name  string
		file  string
		len   int
		want  map[string]Policy // "" is an id the file does not list
		capts map[string]bool
	}{
		{"empty", "", 0, map[string]Policy{"": {}, dep: {}}, nil},
		{"blank lines", "\n\n  \n", 0, map[string]Policy{"": {}}, nil},
		{"comments only", lines("# nothing", "  # here"), 0, map[string]Policy{"": {}}, nil},
		{"one empty document", lines("---"), 0, map[string]Policy{"": {}}, nil},
		{"null document", lines("~"), 0, map[string]Policy{"": {}}, nil},
		{"document end marker", lines("default: {}", "..."), 0, map[string]Policy{"": {}}, nil},
		{"null sections", lines("default:", "deployments:"), 0, map[string]Policy{"": {}}, nil},
		{"empty sections", lines("default: {}", "deployments: {}"), 0, map[string]Policy{"": {}}, nil},
		{"default only", lines(
			"default:",
			"  max_queue_duration: 10m",
			"  max_run_duration: 1h",
		), 0, map[string]Policy{
			"":  {MaxQueueDuration: 10 * time.Minute, MaxRunDuration: time.Hour},
			dep: {MaxQueueDuration: 10 * time.Minute, MaxRunDuration: time.Hour},
		}, nil},
		{"fallback per field", lines(
			"deployments:", // before default: order does not matter
			"  a:",
			"    max_queue_duration: 5m",
			"  b:",
			"    max_run_duration: 2h",
			"    max_concurrency: 3",
			"  c:",
			"  d: {}",
			"  e:",
			"    max_concurrency_per_tenant: 2",
			"default:",
			"  max_queue_duration: 10m",
			"  max_run_duration: 1h",
		), 5, map[string]Policy{
			"a": {MaxQueueDuration: 5 * time.Minute, MaxRunDuration: time.Hour},
			"b": {MaxQueueDuration: 10 * time.Minute, MaxRunDuration: 2 * time.Hour, MaxConcurrency: 3},
			"c": {MaxQueueDuration: 10 * time.Minute, MaxRunDuration: time.Hour},
			"d": {MaxQueueDuration: 10 * time.Minute, MaxRunDuration: time.Hour},
			"e": {MaxQueueDuration: 10 * time.Minute, MaxRunDuration: time.Hour, MaxConcurrencyPerTenant: 2},
			"":  {MaxQueueDuration: 10 * time.Minute, MaxRunDuration: time.Hour},
		}, map[string]bool{"a": false, "b": true, "c": false, "e": true, "": false}},
		{"no default", lines(
			"deployments:",
			"  a:",
			"    max_run_duration: 30m",
		), 1, map[string]Policy{
			"a": {MaxRunDuration: 30 * time.Minute},
			"":  {},
		}, nil},
		{"limits inclusive", lines(
			"deployments:",
			"  low:",
			"    max_queue_duration: 1s",
			"    max_run_duration: 1000ms",
			"    max_concurrency: 1",
			"    max_concurrency_per_tenant: 1",
			"  high:",
			"    max_queue_duration: 168h",
			`    max_run_duration: "10080m"`,
			"    max_concurrency: 1000000",
			"    max_concurrency_per_tenant: 1000000",
		), 2, map[string]Policy{
			"low":  {MaxQueueDuration: time.Second, MaxRunDuration: time.Second, MaxConcurrency: 1, MaxConcurrencyPerTenant: 1},
			"high": {MaxQueueDuration: MaxDuration, MaxRunDuration: MaxDuration, MaxConcurrency: MaxConcurrency, MaxConcurrencyPerTenant: MaxConcurrency},
		}, nil},
		{"compound and fractional durations", lines(
			"default:",
			"  max_queue_duration: 1h30m",
			"  max_run_duration: 1.5h",
		), 0, map[string]Policy{"": {MaxQueueDuration: 90 * time.Minute, MaxRunDuration: 90 * time.Minute}}, nil},
		{"per-tenant cap equal to the cap", lines(
			"deployments:",
			"  x:",
			"    max_concurrency: 5",
			"    max_concurrency_per_tenant: 5",
		), 1, map[string]Policy{"x": {MaxConcurrency: 5, MaxConcurrencyPerTenant: 5}}, nil},
		{"ids", lines(
			"deployments:",
			"  "+longID+": {}",
			"  A-z_09: {}",
			"  123: {}",
		), 3, map[string]Policy{longID: {}, "A-z_09": {}, "123": {}}, nil},
		{"flow style", `{default: {max_run_duration: 1h}, deployments: {x: {max_concurrency: 4}}}`, 1,
			map[string]Policy{"x": {MaxRunDuration: time.Hour, MaxConcurrency: 4}}, nil},
		{"anchor without alias", lines(
			"default: &d",
			"  max_run_duration: 1h",
		), 0, map[string]Policy{"": {MaxRunDuration: time.Hour}}, nil},
		{"byte order mark and CRLF", "\ufeffdefault:\r\n  max_run_duration: 1h\r\n", 0,
			map[string]Policy{"": {MaxRunDuration: time.Hour}}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Parse([]byte(tc.file))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if f.Len() != tc.len {
				t.Errorf("Len() = %d, want %d", f.Len(), tc.len)
			}
			for id, want := range tc.want {
				if id == "" {
					id = "not-listed"
				}
				if got := f.For(id); got != want {
					t.Errorf("For(%q) = %+v, want %+v", id, got, want)
				}
			}
			for id, want := range tc.capts {
				if id == "" {
					id = "not-listed"
				}
				if got := f.For(id).Capped(); got != want {
					t.Errorf("For(%q).Capped() = %v, want %v", id, got, want)
				}
			}
		})
	}
}

// TestDocumentedExample parses the example of the package comment, which
// the README copies: it must stay a valid file.
func TestDocumentedExample(t *testing.T) {
	src, err := os.ReadFile("deployments.go")
	if err != nil {
		t.Fatal(err)
	}
	var example []string
	for l := range strings.SplitSeq(string(src), "\n") {
		if l == "package deployments" {
			break
		}
		if yl, ok := strings.CutPrefix(l, "//\t"); ok {
			example = append(example, yl)
		}
	}
	if len(example) != 11 {
		t.Fatalf("found %d lines of example in the package comment, want 11", len(example))
	}
	f, err := Parse([]byte(lines(example...)))
	if err != nil {
		t.Fatalf("Parse(example): %v", err)
	}
	if f.Len() != 1 {
		t.Errorf("Len() = %d, want 1", f.Len())
	}
	want := Policy{MaxQueueDuration: 5 * time.Minute, MaxRunDuration: 30 * time.Minute, MaxConcurrency: 20, MaxConcurrencyPerTenant: 5}
	if got := f.For(dep); got != want {
		t.Errorf("For(%q) = %+v, want %+v", dep, got, want)
	}
	want = Policy{MaxQueueDuration: 10 * time.Minute, MaxRunDuration: time.Hour}
	if got := f.For("other"); got != want {
		t.Errorf("For(other) = %+v, want %+v", got, want)
	}
}

func TestNilFile(t *testing.T) {
	var f *File
	if got := f.For(dep); got != (Policy{}) {
		t.Errorf("nil For = %+v, want the zero Policy", got)
	}
	if f.Len() != 0 {
		t.Errorf("nil Len = %d", f.Len())
	}
	if (Policy{}).Capped() {
		t.Error("zero Policy is Capped")
	}
}

func TestCapped(t *testing.T) {
	for _, tc := range []struct {
		p    Policy
		want bool
	}{
		{Policy{}, false},
		{Policy{MaxQueueDuration: time.Minute, MaxRunDuration: time.Hour}, false},
		{Policy{MaxConcurrency: 1}, true},
		{Policy{MaxConcurrencyPerTenant: 1}, true},
		{Policy{MaxConcurrency: 2, MaxConcurrencyPerTenant: 1}, true},
	} {
		if got := tc.p.Capped(); got != tc.want {
			t.Errorf("%+v.Capped() = %v, want %v", tc.p, got, tc.want)
		}
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		t.Helper()
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}

	t.Run("valid", func(t *testing.T) {
		path := write("ok.yaml", lines("deployments:", "  x:", "    max_concurrency: 4"))
		f, err := Load(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := f.For("x"); got != (Policy{MaxConcurrency: 4}) {
			t.Errorf("For(x) = %+v", got)
		}
	})
	t.Run("invalid", func(t *testing.T) {
		path := write("bad.yaml", lines("default:", "  max_run_duration: 1h", "  max_concurrency: 3"))
		_, err := Load(path)
		prefix := "deployments file " + path + ": line 3: "
		if err == nil || !strings.HasPrefix(err.Error(), prefix) {
			t.Errorf("Load = %v, want an error starting %q", err, prefix)
		}
	})
	t.Run("missing", func(t *testing.T) {
		path := filepath.Join(dir, "missing.yaml")
		_, err := Load(path)
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Load = %v, want fs.ErrNotExist", err)
		}
		if prefix := "deployments file " + path + ": "; err == nil || !strings.HasPrefix(err.Error(), prefix) ||
			strings.Count(err.Error(), path) != 1 {
			t.Errorf("Load = %v, want one mention of the path, at the start", err)
		}
	})
	t.Run("directory", func(t *testing.T) {
		if _, err := Load(dir); err == nil || !strings.HasPrefix(err.Error(), "deployments file "+dir+": ") {
			t.Errorf("Load(dir) = %v, want an error naming it", err)
		}
	})
	t.Run("largest", func(t *testing.T) {
		content := lines("default:", "  max_run_duration: 1h")
		content += "#" + strings.Repeat("x", maxFileSize-len(content)-2) + "\n"
		if len(content) != maxFileSize {
			t.Fatalf("content is %d bytes", len(content))
		}
		f, err := Load(write("largest.yaml", content))
		if err != nil {
			t.Fatal(err)
		}
		if got := f.For("x").MaxRunDuration; got != time.Hour {
			t.Errorf("MaxRunDuration = %v", got)
		}
	})
	t.Run("oversize", func(t *testing.T) {
		path := write("big.yaml", "#"+strings.Repeat("x", maxFileSize))
		_, err := Load(path)
		want := "deployments file " + path + ": larger than 1048576 bytes (1 MiB)"
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("Load = %v, want an error starting %q", err, want)
		}
	})
}

func TestErrorsQuoteLongValuesShort(t *testing.T) {
	long := strings.Repeat("z", 10_000)
	_, err := Parse([]byte(lines("default:", "  max_run_duration: "+long)))
	if err == nil {
		t.Fatal("Parse succeeded")
	}
	if len(err.Error()) > 300 {
		t.Errorf("error is %d bytes: %.300s", len(err.Error()), err)
	}
}
