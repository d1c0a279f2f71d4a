// Package auth knows the gateway's callers: API keys, each belonging to a
// tenant and granting the calls made with it zero or more permissions (such as
// attach), read from a file that can be reloaded while the gateway runs.
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

// Permissions is what a key lets its tenant do beyond reading and changing the
// tenant's own requests. A key line grants them explicitly, so a key that says
// nothing can do nothing more: the safe default for a file written before a
// permission existed.
type Permissions uint8

// Attach lets a tenant read from RunComfy a request the gateway does not know
// (one submitted to the same RunComfy account by another tool), and so become
// its owner. It is a permission because every such read is an upstream call a
// tenant could otherwise cause for any id it guesses, and because it hands the
// tenant requests it did not submit.
const Attach Permissions = 1 << iota

// Has reports whether p includes every permission of q.
func (p Permissions) Has(q Permissions) bool { return p&q == q }

// String lists the permissions as a keys file writes them ("" for none).
func (p Permissions) String() string {
	var names []string
	if p.Has(Attach) {
		names = append(names, "attach")
	}
	return strings.Join(names, ",")
}

// parsePermissions reads a key line's third field: permission names separated
// by commas. Its error never quotes the field, which may be a misplaced key.
func parsePermissions(field string) (Permissions, error) {
	var p Permissions
	for name := range strings.SplitSeq(field, ",") {
		switch name {
		case "attach":
			p |= Attach
		case "":
			return 0, errors.New("empty permission in the list")
		default:
			return 0, errors.New("unknown permission (known: attach)")
		}
	}
	return p, nil
}

// entry keeps a key's digest, not the key: a comparison of digests takes the
// same time whatever the presented key shares with a real one.
type entry struct {
	digest [sha256.Size]byte
	tenant string
	perms  Permissions
}

// Keys holds the current API keys. Lookups are safe while Reload runs.
type Keys struct {
	path    string
	entries atomic.Pointer[[]entry]
}

// Load reads path: one "TENANT KEY [PERMISSIONS]" per line, PERMISSIONS being
// a comma-separated list of permission names ("attach" is the only one); blank
// lines and lines starting with '#' are ignored. Tenants follow the id rules
// (letters, digits, '-', '_'); keys are at least MinKeyLen bytes and unique. An
// unknown permission fails the load rather than being ignored, so a typo never
// silently withholds, or seems to grant, a permission. Errors name the line,
// never the key (nor the permission field, in case a key landed there).
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
	// A byte order mark, which some editors put first, is not part of the
	// first tenant's name.
	data = bytes.TrimPrefix(data, []byte("\ufeff"))
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		switch {
		case len(fields) < 2 || len(fields) > 3:
			errs = append(errs, fmt.Errorf("line %d: want TENANT KEY [PERMISSIONS]", n))
			continue
		case !runcomfy.ValidID(fields[0]):
			errs = append(errs, fmt.Errorf("line %d: tenant may contain only letters, digits, '-' and '_'", n))
			continue
		case len(fields[1]) < MinKeyLen:
			errs = append(errs, fmt.Errorf("line %d: key shorter than %d bytes", n, MinKeyLen))
			continue
		}
		var perms Permissions
		if len(fields) == 3 {
			p, err := parsePermissions(fields[2])
			if err != nil {
				errs = append(errs, fmt.Errorf("line %d: %w", n, err))
				continue
			}
			perms = p
		}
		d := sha256.Sum256([]byte(fields[1]))
		if prev, dup := seen[d]; dup {
			errs = append(errs, fmt.Errorf("line %d: same key as line %d", n, prev))
			continue
		}
		seen[d] = n
		entries = append(entries, entry{digest: d, tenant: fields[0], perms: perms})
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
	tenant, _, ok := k.Lookup(key)
	return tenant, ok
}

// Lookup returns the tenant a key belongs to and the permissions the key
// grants, both from one version of the file (a concurrent Reload never mixes
// them). Every entry is compared, in constant time, whatever matched.
func (k *Keys) Lookup(key string) (tenant string, perms Permissions, ok bool) {
	d := sha256.Sum256([]byte(key))
	for _, e := range *k.entries.Load() {
		if subtle.ConstantTimeCompare(d[:], e.digest[:]) == 1 {
			tenant, perms, ok = e.tenant, e.perms, true
		}
	}
	return tenant, perms, ok
}
