package freeport

import (
	"net"
	"strconv"
	"testing"
)

// TestLoopbackIsBelowTheEphemeralRange pins that the address is on loopback,
// free, and below the ports outbound connections take.
func TestLoopbackIsBelowTheEphemeralRange(t *testing.T) {
	low := ephemeralLow()
	seen := map[string]bool{}
	for range 20 {
		addr, err := Loopback()
		if err != nil {
			t.Fatal(err)
		}
		host, port, err := net.SplitHostPort(addr)
		if err != nil || host != "127.0.0.1" {
			t.Fatalf("Loopback = %q (%v), want a 127.0.0.1 address", addr, err)
		}
		if n, _ := strconv.Atoi(port); n < lowest || n >= low {
			t.Errorf("port %d, want one in [%d, %d)", n, lowest, low)
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("listening on %s: %v", addr, err)
		}
		l.Close()
		seen[addr] = true
	}
	if len(seen) < 2 {
		t.Errorf("20 picks gave %d address(es), want them spread", len(seen))
	}
}
