package version

import (
	"runtime/debug"
	"testing"
)

func TestFromBuild(t *testing.T) {
	vcs := func(rev, modified string) []debug.BuildSetting {
		return []debug.BuildSetting{{Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: modified}}
	}
	tests := []struct {
		name                  string
		bi                    *debug.BuildInfo
		stampVersion, stampCo string
		want                  Info
	}{
		{"no build info", nil, "", "", Info{Version: "devel", Commit: "unknown", Go: "unknown"}},
		{"checkout build", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}, Settings: vcs("abc123", "false")},
			"", "", Info{Version: "devel", Commit: "abc123", Go: "go1.26.8"}},
		{"dirty checkout", &debug.BuildInfo{GoVersion: "go1.26.8", Settings: vcs("abc123", "true")},
			"", "", Info{Version: "devel", Commit: "abc123-dirty", Go: "go1.26.8"}},
		{"go install of a release", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.4.0"}},
			"", "", Info{Version: "v1.4.0", Commit: "unknown", Go: "go1.26.8"}},
		{"stamped by the linker", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.3.0"}, Settings: vcs("abc123", "true")},
			"v1.4.0", "def456", Info{Version: "v1.4.0", Commit: "def456", Go: "go1.26.8"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := fromBuild(tt.bi, tt.stampVersion, tt.stampCo); got != tt.want {
				t.Errorf("fromBuild = %+v, want %+v", got, tt.want)
			}
		})
	}
	if got := (Info{Version: "v1.4.0", Commit: "def456", Go: "go1.26.8"}).String(); got != "comfygate v1.4.0 (commit def456, go1.26.8)" {
		t.Errorf("String = %q", got)
	}
}
