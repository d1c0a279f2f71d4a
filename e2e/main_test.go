// Package e2e runs the real binaries together, as production does: one RunComfy
// simulator process, three comfygate replicas sharing a real Redis, and a load
// balancer in front of the replicas' callback endpoint that delivers every
// callback to one replica and duplicates it to the two others at the same
// instant. Nothing is mocked; the tests drive the system only through its
// public surfaces (the generated gRPC client, HTTP, Redis itself) and the
// process lifecycle (SIGKILL, Redis restarts).
//
// The package has test files only. `go test -short` skips it.
package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/comfygate/comfygate/internal/redistest"
)

// Set by TestMain: the binaries under test and the Redis tests share (each
// under its own key prefix).
var (
	gatewayBin string
	// plainGatewayBin is the gateway without the race detector, whose
	// shadow memory would swamp what the memory tests measure; it is
	// gatewayBin when the tests run without it.
	plainGatewayBin string
	simBin          string
	sharedRedis     *redistest.Server
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

// runMain builds the binaries once for every test, and runs the tests.
func runMain(m *testing.M) int {
	flag.Parse()
	if testing.Short() {
		return m.Run() // every test skips itself
	}
	dir, err := os.MkdirTemp("", "comfygate-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	gatewayBin = filepath.Join(dir, "comfygate")
	simBin = filepath.Join(dir, "runcomfy-sim")
	for bin, pkg := range map[string]string{
		gatewayBin: "github.com/comfygate/comfygate/cmd/comfygate",
		simBin:     "github.com/comfygate/comfygate/cmd/runcomfy-sim",
	} {
		if err := goBuild(bin, pkg, raceEnabled); err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 1
		}
	}
	plainGatewayBin = gatewayBin
	if raceEnabled {
		plainGatewayBin = filepath.Join(dir, "comfygate-plain")
		if err := goBuild(plainGatewayBin, "github.com/comfygate/comfygate/cmd/comfygate", false); err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 1
		}
	}
	sharedRedis, err = redistest.Find()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: redis:", err)
		return 1
	}
	defer sharedRedis.Stop()

	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	return code
}

// goBuild compiles pkg into bin. Under `go test -race` the binaries get the race
// detector too: a data race inside a replica is then reported in its log, which
// the harness turns into a test failure.
func goBuild(bin, pkg string, race bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	args := []string{"build", "-o", bin}
	if race {
		args = append(args, "-race")
	}
	out, err := exec.CommandContext(ctx, "go", append(args, pkg)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, out)
	}
	return nil
}
