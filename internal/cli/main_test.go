package cli

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a command (or a gateway a test started)
// leaves a goroutine running.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
