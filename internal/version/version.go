// Package version says which build of comfygate is running: the version and
// commit stamped by the linker (make build, the Dockerfile), else what the Go
// toolchain recorded in the binary (go install, go build from a checkout).
package version

import (
	"fmt"
	"runtime/debug"
)

// Stamped by the linker, for example:
//
//	go build -ldflags "-X github.com/comfygate/comfygate/internal/version.version=v1.4.0 \
//	    -X github.com/comfygate/comfygate/internal/version.commit=$(git rev-parse HEAD)"
//
// They are the package's only variables, because -X can set nothing else.
var (
	version string
	commit  string
)

// Info is one build's identity.
type Info struct {
	// Version is the release (v1.4.0), the module version go install
	// recorded, or "devel" for a build from a checkout.
	Version string
	// Commit is the VCS revision, with "-dirty" when the tree had changes;
	// "unknown" when nothing recorded it.
	Commit string
	// Go is the toolchain that built the binary.
	Go string
}

// Get returns this binary's Info.
func Get() Info {
	bi, _ := debug.ReadBuildInfo()
	return fromBuild(bi, version, commit)
}

// fromBuild merges the linker's stamps (which win) with the build info.
func fromBuild(bi *debug.BuildInfo, stampedVersion, stampedCommit string) Info {
	info := Info{Version: stampedVersion, Commit: stampedCommit, Go: "unknown"}
	if bi != nil {
		info.Go = bi.GoVersion
		if info.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			info.Version = bi.Main.Version
		}
		if info.Commit == "" {
			var revision string
			var modified bool
			for _, s := range bi.Settings {
				switch s.Key {
				case "vcs.revision":
					revision = s.Value
				case "vcs.modified":
					modified = s.Value == "true"
				}
			}
			if revision != "" && modified {
				revision += "-dirty"
			}
			info.Commit = revision
		}
	}
	if info.Version == "" {
		info.Version = "devel"
	}
	if info.Commit == "" {
		info.Commit = "unknown"
	}
	return info
}

// String is the one line `comfygate version` prints.
func (i Info) String() string {
	return fmt.Sprintf("comfygate %s (commit %s, %s)", i.Version, i.Commit, i.Go)
}
