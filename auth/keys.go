// Package auth knows the gateway's callers: API keys, each belonging to a
// tenant, read from a file that can be reloaded while the gateway runs.
package auth

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"

	"github.com/comfygate/comfygate/runcomfy"
)

// MinKeyLen is the shortest accepted API key, in bytes.
const MinKeyLen = 16

// entry keeps a key's digest, not the key: a comparison of digests takes the
// same time whatever the presented key shares with a real one.
type entry struct {
	digest [sha256.Size]byte
	tenant string
}

// Keys holds the current API keys. Lookups are safe while Reload runs.
type Keys struct {
	path    string
	entries atomic.Pointer[[]entry]
}

// Load reads path: one "TENANT KEY" per line; blank lines and lines starting
// with '#' are ignored. Tenants follow the id rules (letters, digits, '-', '_');
// keys are at least MinKeyLen bytes and unique. Errors name the line, never the
// key.
func Load(path string) (*Keys, error) {
	k := &Keys{path: path}
	if err := k.Reload(); err != nil {
		return nil, err
	}
	return k, nil
}

// Reload reads the file again and swaps the keys in at once; on any error the
// keys in use stay as they were.
func (k *Keys) Reload() error {
	data, err := os.ReadFile(k.path)
	if err != nil {
		return fmt.Errorf("api keys: %w", err)
	}
	entries, err := parse(data)
	if err != nil {
		return fmt.Errorf("api keys %s: %w", k.path, err)
	}
	k.entries.Store(&entries)
	return nil
}

func parse(data []byte) ([]entry, error) {
	var (
		entries []entry
		errs    []error
		seen    = map[[sha256.Size]byte]int{}
	)
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		switch {
		case len(fields) != 2:
			errs = append(errs, fmt.Errorf("line %d: want TENANT KEY", n))
			continue
		case !runcomfy.ValidID(fields[0]):
			errs = append(errs, fmt.Errorf("line %d: tenant may contain only letters, digits, '-' and '_'", n))
			continue
		case len(fields[1]) < MinKeyLen:
			errs = append(errs, fmt.Errorf("line %d: key shorter than %d bytes", n, MinKeyLen))
			continue
		}
		d := sha256.Sum256([]byte(fields[1]))
		if prev, dup := seen[d]; dup {
			errs = append(errs, fmt.Errorf("line %d: same key as line %d", n, prev))
			continue
		}
		seen[d] = n
		entries = append(entries, entry{digest: d, tenant: fields[0]})
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 && len(entries) == 0 {
		errs = append(errs, errors.New("no keys"))
	}
	return entries, errors.Join(errs...)
}

// Tenant returns the tenant a key belongs to. Every entry is compared, in
// constant time, whatever matched.
func (k *Keys) Tenant(key string) (string, bool) {
	d := sha256.Sum256([]byte(key))
	tenant, found := "", false
	for _, e := range *k.entries.Load() {
		if subtle.ConstantTimeCompare(d[:], e.digest[:]) == 1 {
			tenant, found = e.tenant, true
		}
	}
	return tenant, found
}
