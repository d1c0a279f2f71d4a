package main

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a test leaves a goroutine running: every
// part the gateway starts must be stopped, the ones of a start that failed
// included.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
