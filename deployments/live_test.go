package deployments

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestLiveReload: a reload puts a valid new version in force, and an
// invalid one leaves the version in force as it was.
func TestLiveReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "deployments.yaml")
	write := func(content string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("deployments:\n  a:\n    max_concurrency: 2\n")
	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if p := l.For("a"); p.MaxConcurrency != 2 || l.Len() != 1 {
		t.Fatalf("policy %+v, %d deployments", p, l.Len())
	}
	write("default:\n  max_queue_duration: 1m\ndeployments:\n  a:\n    max_concurrency: 5\n  b: {}\n")
	if err := l.Reload(); err != nil {
		t.Fatal(err)
	}
	if p := l.For("a"); p.MaxConcurrency != 5 || p.MaxQueueDuration != time.Minute || l.Len() != 2 {
		t.Fatalf("after the reload: policy %+v, %d deployments", p, l.Len())
	}
	write("deployments:\n  a:\n    max_concurrency: -1\n")
	if err := l.Reload(); err == nil || !strings.Contains(err.Error(), "line 3:") {
		t.Fatalf("reload of a broken file = %v, want its line", err)
	}
	if p := l.For("a"); p.MaxConcurrency != 5 {
		t.Fatalf("a broken file changed the policy in force: %+v", p)
	}
	if _, err := Open(filepath.Join(t.TempDir(), "none.yaml")); err == nil {
		t.Fatal("Open of a missing file succeeded")
	}
}
