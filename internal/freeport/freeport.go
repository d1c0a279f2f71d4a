// Package freeport picks loopback addresses for the tests and harnesses to
// start servers on.
package freeport

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
)

// lowest is the lowest port picked: below it are the well-known and the
// commonly configured ones.
const lowest = 10000

// Loopback returns a 127.0.0.1 address whose port nothing listens on now,
// for a process started next to listen on. The port is picked below the
// kernel's ephemeral range: one from that range (what listening on port 0
// gives) may be taken meanwhile as the local port of any outbound
// connection on the machine, and the process then fails to listen; one
// below it is only ever taken by a listener that asks for it.
func Loopback() (string, error) {
	high := ephemeralLow()
	for range 100 {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(lowest+rand.IntN(high-lowest)))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue // taken
		}
		l.Close()
		return addr, nil
	}
	// A machine whose ports below the ephemeral range are all taken: the
	// kernel's choice, with its small risk.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("no free loopback port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// ephemeralLow is the first port of the kernel's ephemeral range (Linux;
// 32768 elsewhere or when it cannot be read).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := bytes.Fields(b)
	if len(f) == 0 {
		return 32768
	}
	n, err := strconv.Atoi(string(f[0]))
	if err != nil || n <= lowest+1000 {
		return 32768
	}
	return n
}
