package deployments

import (
	"strconv"
	"strings"
	"testing"
)

// FuzzParse checks that Parse never panics, that every error is one the
// process can stop with (non-empty, and starting with a line where the file
// has one), and that a file it accepts holds only policies within limits.
func FuzzParse(f *testing.F) {
	for _, tc := range errorCases {
		f.Add([]byte(tc.file))
	}
	for _, s := range []string{
		"",
		"# only a comment\n",
		"default:\n  max_queue_duration: 10m\n  max_run_duration: 1h\n",
		"deployments:\n  x:\n    max_concurrency: 20\n    max_concurrency_per_tenant: 5\n  y: {}\n  z:\n",
		"{default: {max_run_duration: 1h}, deployments: {x: {max_concurrency: 4}}}",
		"default: &d {max_run_duration: 1h}\ndeployments:\n  x: *d\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := Parse(data)
		if err != nil {
			checkError(t, data, err.Error())
			if file != nil {
				t.Error("Parse returned a File with its error")
			}
			return
		}
		if file == nil {
			t.Fatal("Parse returned neither a File nor an error")
		}
		if file.Len() != len(file.policies) {
			t.Errorf("Len() = %d, but %d policies", file.Len(), len(file.policies))
		}
		if file.def.Capped() {
			t.Errorf("default policy %+v has a cap", file.def)
		}
		checkPolicy(t, "default", file.def)
		if got := file.For("\x00not an id"); got != file.def {
			t.Errorf("For(an id that cannot be listed) = %+v, want default %+v", got, file.def)
		}
		for id, p := range file.policies {
			if msg := checkID(id); msg != "" {
				t.Errorf("listed id %q: %s", id, msg)
			}
			checkPolicy(t, id, p)
			if file.For(id) != p {
				t.Errorf("For(%q) is not its policy", id)
			}
		}
	})
}

// checkError checks a Parse error's message.
func checkError(t *testing.T, data []byte, msg string) {
	t.Helper()
	if msg == "" {
		t.Fatal("empty error message")
	}
	first, _, _ := strings.Cut(msg, "\n")
	rest, ok := strings.CutPrefix(first, "line ")
	if !ok {
		if !strings.HasPrefix(first, "invalid YAML: ") || len(first) == len("invalid YAML: ") {
			t.Errorf("error %q starts with neither \"line \" nor \"invalid YAML: \"", msg)
		}
		return
	}
	num, text, ok := strings.Cut(rest, ": ")
	n, err := strconv.Atoi(num)
	if !ok || err != nil || text == "" {
		t.Fatalf("error %q does not start with \"line N: \" and a message", msg)
	}
	if last := lineOf(data, len(data)); n < 1 || n > last {
		t.Errorf("error %q names line %d of a file of %d lines", msg, n, last)
	}
}

// checkPolicy checks that p's values are within the package's limits.
func checkPolicy(t *testing.T, name string, p Policy) {
	t.Helper()
	for _, d := range []struct {
		field string
		v     int64
	}{{"MaxQueueDuration", int64(p.MaxQueueDuration)}, {"MaxRunDuration", int64(p.MaxRunDuration)}} {
		if d.v != 0 && (d.v < int64(MinDuration) || d.v > int64(MaxDuration)) {
			t.Errorf("%s: %s %d out of range", name, d.field, d.v)
		}
	}
	for _, c := range []struct {
		field string
		v     int
	}{{"MaxConcurrency", p.MaxConcurrency}, {"MaxConcurrencyPerTenant", p.MaxConcurrencyPerTenant}} {
		if c.v < 0 || c.v > MaxConcurrency {
			t.Errorf("%s: %s %d out of range", name, c.field, c.v)
		}
	}
	if p.MaxConcurrency > 0 && p.MaxConcurrencyPerTenant > p.MaxConcurrency {
		t.Errorf("%s: per-tenant cap %d above the cap %d", name, p.MaxConcurrencyPerTenant, p.MaxConcurrency)
	}
}
