package auth

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/comfygate/comfygate/runcomfy"
)

// Distinctive keys: none of them can occur in an error message by chance.
const (
	keyA  = "ka-7c1f0d2e9b8a4f63"  // 19 bytes
	keyB  = "kb-0a9d8c7b6e5f4321"  // 19 bytes
	keyC  = "kc-ffee00112233aabb"  // 19 bytes
	key16 = "k16-0123456789ab"     // exactly MinKeyLen
	key15 = "k15-0123456789a"      // MinKeyLen-1
	keyX  = "kx-aaaabbbbccccdddd"  // used in broken lines
	keyY  = "ky-9999888877776666x" // extra field
)

func init() {
	if len(key16) != MinKeyLen || len(key15) != MinKeyLen-1 {
		panic("test keys have the wrong lengths")
	}
}

func writeFile(t testing.TB, dir, content string) string {
	t.Helper()
	path := filepath.Join(dir, "keys")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// replaceFile swaps content in at path atomically, as an operator's deploy
// tool would (and so a concurrent Reload never reads half a file).
func replaceFile(t testing.TB, path, content string) {
	t.Helper()
	tmp, err := os.CreateTemp(filepath.Dir(path), "keys-*")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tmp.WriteString(content); err != nil {
		t.Fatal(err)
	}
	if err := tmp.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		t.Fatal(err)
	}
}

// secretsIn lists every token of content that is, or could be, a key: every
// field but a line's first, the only field of a one-field line, and every word
// of a comment. Tenants (first fields) are not secret, nor is a third field
// that is a valid permission list (error messages may name permissions).
func secretsIn(content string) []string {
	var out []string
	for _, line := range strings.Split(content, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 0:
		case strings.HasPrefix(f[0], "#"):
			for _, w := range f {
				if w = strings.TrimLeft(w, "#"); len(w) >= 8 {
					out = append(out, w)
				}
			}
		case len(f) == 1:
			out = append(out, f[0])
		default:
			for i, w := range f[1:] {
				if _, err := parsePermissions(w); i == 1 && err == nil {
					continue
				}
				out = append(out, w)
			}
		}
	}
	return out
}

// assertNoSecret checks that err, the file's path aside, holds no key from content.
func assertNoSecret(t *testing.T, err error, path, content string) {
	t.Helper()
	if err == nil {
		return
	}
	msg := strings.ReplaceAll(err.Error(), path, "<path>")
	for _, s := range secretsIn(content) {
		if strings.Contains(msg, s) {
			t.Errorf("error %q contains the key %q from the file", msg, s)
		}
	}
}

func TestLoad(t *testing.T) {
	long := strings.Repeat("t", runcomfy.MaxIDLen)
	tests := []struct {
		name    string
		content string
		want    map[string]string      // key -> tenant, for files that load
		perms   map[string]Permissions // key -> permissions; a key of want not here has none
		wantErr []string               // regexps the error must match, for files that do not
	}{
		{
			name:    "one key",
			content: "tenant-a " + keyA + "\n",
			want:    map[string]string{keyA: "tenant-a"},
		},
		{
			name:    "no final newline",
			content: "tenant-a " + keyA,
			want:    map[string]string{keyA: "tenant-a"},
		},
		{
			name:    "a byte order mark first, as some editors write",
			content: "\ufefftenant-a " + keyA + "\r\ntenant-b " + keyB + "\r\n",
			want:    map[string]string{keyA: "tenant-a", keyB: "tenant-b"},
		},
		{
			name:    "a byte order mark elsewhere is part of the line",
			content: "tenant-a " + keyA + "\n\ufefftenant-b " + keyB + "\n",
			wantErr: []string{`\bline 2\b`, "tenant may contain only"},
		},
		{
			name: "comments and blank lines",
			content: "# comfygate keys\n\n   \n\t\n  # indented comment " + keyX + "\n#tenant-x " + keyY + "\n" +
				"tenant-a " + keyA + "\n\n# trailer\n",
			want: map[string]string{keyA: "tenant-a"},
		},
		{
			name:    "surrounding spaces, tabs and CRLF",
			content: "   tenant-a   " + keyA + "   \r\n\ttenant_b\t" + keyB + "\t\r\n \t Tenant9 \t " + keyC + "\n",
			want:    map[string]string{keyA: "tenant-a", keyB: "tenant_b", keyC: "Tenant9"},
		},
		{
			name:    "a tenant with several keys",
			content: "tenant-a " + keyA + "\ntenant-a " + keyB + "\n",
			want:    map[string]string{keyA: "tenant-a", keyB: "tenant-a"},
		},
		{
			name:    "key of exactly MinKeyLen and a tenant of MaxIDLen",
			content: long + " " + key16 + "\n",
			want:    map[string]string{key16: long},
		},
		{
			name:    "key with punctuation",
			content: "tenant-a " + keyA + "/+=:#!\n",
			want:    map[string]string{keyA + "/+=:#!": "tenant-a"},
		},
		{
			name:    "attach permission, next to a two-field line",
			content: "tenant-a " + keyA + " attach\ntenant-b " + keyB + "\n",
			want:    map[string]string{keyA: "tenant-a", keyB: "tenant-b"},
			perms:   map[string]Permissions{keyA: Attach},
		},
		{
			name:    "permissions belong to the key, not the tenant",
			content: "tenant-a " + keyA + "\ntenant-a " + keyB + "\tattach\r\n",
			want:    map[string]string{keyA: "tenant-a", keyB: "tenant-a"},
			perms:   map[string]Permissions{keyB: Attach},
		},
		{
			name:    "a permission listed twice",
			content: "tenant-a " + keyA + " attach,attach\n",
			want:    map[string]string{keyA: "tenant-a"},
			perms:   map[string]Permissions{keyA: Attach},
		},
		{
			name:    "one field",
			content: "# keys\ntenant-a " + keyA + "\n" + keyX + "\n",
			wantErr: []string{`\bline 3\b`, "TENANT KEY"},
		},
		{
			name:    "unknown permission",
			content: "tenant-a " + keyA + " attach\n\ntenant-x " + keyX + " bogus\n",
			wantErr: []string{`\bline 3\b`, "unknown permission"},
		},
		{
			name:    "a key where the permissions go",
			content: "tenant-a " + keyA + "\n\ntenant-x " + keyX + " " + keyY + "\n",
			wantErr: []string{`\bline 3\b`, "unknown permission"},
		},
		{
			name:    "permission names are lower case",
			content: "tenant-x " + keyX + " Attach\n",
			wantErr: []string{`\bline 1\b`, "unknown permission"},
		},
		{
			name:    "an unknown permission next to a known one",
			content: "tenant-x " + keyX + " attach,bogus\n",
			wantErr: []string{`\bline 1\b`, "unknown permission"},
		},
		{
			name:    "permissions separated by a space are a fourth field",
			content: "tenant-x " + keyX + " attach attach\n",
			wantErr: []string{`\bline 1\b`, `TENANT KEY \[PERMISSIONS\]`},
		},
		{
			name:    "empty name in the permission list",
			content: "tenant-x " + keyX + " attach,\n",
			wantErr: []string{`\bline 1\b`, "empty permission"},
		},
		{
			name:    "trailing comment on a key line is a third field",
			content: "tenant-x " + keyX + " # " + keyY + "\n",
			wantErr: []string{`\bline 1\b`, "TENANT KEY"},
		},
		{
			name:    "tenant with a dot",
			content: "tenant.x " + keyX + "\n",
			wantErr: []string{`\bline 1\b`, "tenant"},
		},
		{
			name:    "tenant with a slash",
			content: "tenant-a " + keyA + "\n../x " + keyX + "\n",
			wantErr: []string{`\bline 2\b`, "tenant"},
		},
		{
			name:    "tenant with non-ASCII letters",
			content: "ténant " + keyX + "\n",
			wantErr: []string{`\bline 1\b`, "tenant"},
		},
		{
			name:    "tenant longer than MaxIDLen",
			content: long + "t " + keyX + "\n",
			wantErr: []string{`\bline 1\b`, "tenant"},
		},
		{
			name:    "key shorter than MinKeyLen",
			content: "tenant-a " + keyA + "\ntenant-x " + key15 + "\n",
			wantErr: []string{`\bline 2\b`, "shorter"},
		},
		{
			name:    "duplicated key, other tenant",
			content: "tenant-a " + keyA + "\n# next\ntenant-b " + keyA + "\n",
			wantErr: []string{`\bline 3\b`, `\bline 1\b`, "same key"},
		},
		{
			name:    "duplicated key, same tenant",
			content: "tenant-a " + keyA + "\ntenant-a " + keyA + "\n",
			wantErr: []string{`\bline 2\b`, "same key"},
		},
		{
			name:    "every bad line is reported",
			content: keyX + "\ntenant-a " + keyA + "\nten/ant " + keyY + "\ntenant-c " + key15 + "\ntenant-d " + keyC + " bogus\n",
			wantErr: []string{`\bline 1\b`, `\bline 3\b`, `\bline 4\b`, `\bline 5\b`},
		},
		{
			name:    "line longer than the scanner takes",
			content: "tenant-a " + keyA + "\ntenant-x " + strings.Repeat("x", 70000) + keyX + "\n",
			wantErr: []string{"too long"},
		},
		{
			name:    "empty file",
			content: "",
			wantErr: []string{"no keys"},
		},
		{
			name:    "only comments and blanks",
			content: "# tenant-a " + keyA + "\n\n   \n",
			wantErr: []string{"no keys"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := writeFile(t, t.TempDir(), tc.content)
			k, err := Load(path)
			assertNoSecret(t, err, path, tc.content)
			if tc.wantErr != nil {
				if err == nil {
					t.Fatalf("Load succeeded, want an error matching %q", tc.wantErr)
				}
				if k != nil {
					t.Errorf("Load returned keys with its error")
				}
				for _, re := range tc.wantErr {
					if !regexp.MustCompile(re).MatchString(err.Error()) {
						t.Errorf("error %q does not match %q", err, re)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if n := len(*k.entries.Load()); n != len(tc.want) {
				t.Errorf("%d entries, want %d", n, len(tc.want))
			}
			for key, tenant := range tc.want {
				if got, ok := k.Tenant(key); !ok || got != tenant {
					t.Errorf("Tenant(key of %s) = %q, %v", tenant, got, ok)
				}
				got, perms, ok := k.Lookup(key)
				if want := tc.perms[key]; !ok || got != tenant || perms != want {
					t.Errorf("Lookup(key of %s) = %q, %q, %v; want %q, %q, true", tenant, got, perms, ok, tenant, want)
				}
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope")
	k, err := Load(path)
	if err == nil || k != nil {
		t.Fatalf("Load(missing) = %v, %v", k, err)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("error %v is not fs.ErrNotExist", err)
	}
	if !strings.Contains(err.Error(), path) {
		t.Errorf("error %q does not name the file", err)
	}
}

func TestTenant(t *testing.T) {
	path := writeFile(t, t.TempDir(), "tenant-a "+keyA+"\ntenant-b "+keyB+"\ntenant-a "+key16+"\n")
	k, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]string{keyA: "tenant-a", keyB: "tenant-b", key16: "tenant-a"} {
		if got, ok := k.Tenant(key); !ok || got != want {
			t.Errorf("Tenant(%q) = %q, %v; want %q", key, got, ok, want)
		}
	}
	for _, key := range []string{
		"",
		keyC,                      // unknown
		keyA[:len(keyA)-1],        // prefix of a key
		keyA[:MinKeyLen],          // prefix of MinKeyLen bytes
		keyA[1:],                  // suffix
		keyA + "x",                // key plus a char
		keyA + " ",                // trailing space: the caller trims, not Tenant
		" " + keyA,                // leading space
		keyA + "\n",               // newline
		strings.ToUpper(keyA),     // case matters
		keyA + keyB,               // two keys
		"tenant-a",                // a tenant is not a key
		"tenant-a " + keyA,        // a whole line
		keyA[:3] + "X" + keyA[4:], // one byte changed
	} {
		if got, ok := k.Tenant(key); ok || got != "" {
			t.Errorf("Tenant(%q) = %q, %v; want \"\", false", key, got, ok)
		}
	}
}

func TestLookup(t *testing.T) {
	path := writeFile(t, t.TempDir(), "tenant-a "+keyA+" attach\ntenant-b "+keyB+"\ntenant-a "+key16+"\n")
	k, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		key        string
		wantTenant string
		wantPerms  Permissions
		wantOK     bool
	}{
		{"key with attach", keyA, "tenant-a", Attach, true},
		{"two-field key", keyB, "tenant-b", 0, true},
		{"same tenant, key without attach", key16, "tenant-a", 0, true},
		{"unknown key", keyC, "", 0, false},
		{"empty key", "", "", 0, false},
		{"key plus its permission", keyA + " attach", "", 0, false},
		{"permission alone", "attach", "", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tenant, perms, ok := k.Lookup(tt.key)
			if tenant != tt.wantTenant || perms != tt.wantPerms || ok != tt.wantOK {
				t.Errorf("Lookup = %q, %q, %v; want %q, %q, %v", tenant, perms, ok, tt.wantTenant, tt.wantPerms, tt.wantOK)
			}
		})
	}
}

func TestPermissions(t *testing.T) {
	tests := []struct {
		p          Permissions
		wantString string
		wantAttach bool
	}{
		{0, "", false},
		{Attach, "attach", true},
	}
	for _, tt := range tests {
		t.Run(tt.wantString, func(t *testing.T) {
			if got := tt.p.String(); got != tt.wantString {
				t.Errorf("String() = %q, want %q", got, tt.wantString)
			}
			if got := tt.p.Has(Attach); got != tt.wantAttach {
				t.Errorf("Has(Attach) = %v, want %v", got, tt.wantAttach)
			}
			if !tt.p.Has(0) {
				t.Errorf("Has(none) = false")
			}
		})
	}
}

func TestReload(t *testing.T) {
	dir := t.TempDir()
	path := writeFile(t, dir, "tenant-a "+keyA+"\n")
	k, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	expect := func(key, tenant string) {
		t.Helper()
		got, ok := k.Tenant(key)
		if tenant == "" && ok {
			t.Errorf("Tenant(key) = %q, true; want refused", got)
		}
		if tenant != "" && (!ok || got != tenant) {
			t.Errorf("Tenant(key) = %q, %v; want %q", got, ok, tenant)
		}
	}

	// A new file swaps the keys in: the removed key is gone, the new one works.
	replaceFile(t, path, "tenant-b "+keyB+"\n# tenant-a removed\n")
	if err := k.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	expect(keyA, "")
	expect(keyB, "tenant-b")

	// A key moving to another tenant follows.
	writeFile(t, dir, "tenant-c "+keyB+"\n")
	if err := k.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	expect(keyB, "tenant-c")

	// Broken files leave the previous keys in use, whole: a valid line next to
	// a broken one is not taken either.
	for _, broken := range []string{
		"tenant-a " + keyA + "\ntenant-x " + key15 + "\n",
		"tenant-a " + keyA + "\n" + keyX + "\n",
		"tenant-a " + keyA + "\nten.ant " + keyX + "\n",
		"tenant-a " + keyA + "\ntenant-b " + keyA + "\n",
		"# all commented out\n# tenant-c " + keyB + "\n",
		"",
	} {
		writeFile(t, dir, broken)
		err := k.Reload()
		if err == nil {
			t.Fatalf("Reload of %q succeeded", broken)
		}
		assertNoSecret(t, err, path, broken)
		expect(keyB, "tenant-c")
		expect(keyA, "")
	}

	// So does a missing file.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := k.Reload(); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Reload of a missing file: %v", err)
	}
	expect(keyB, "tenant-c")

	// And a good file after the broken ones is taken.
	writeFile(t, dir, "tenant-a "+keyA+"\n")
	if err := k.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	expect(keyA, "tenant-a")
	expect(keyB, "")
}

// TestTenantDuringReload looks keys up from many goroutines while the file is
// swapped and reloaded: run with -race. keyA is in every version, keyB only in
// some (with another tenant and permissions in one), keyC in none; no lookup
// may ever see another tenant, or one version's tenant with another's
// permissions.
func TestTenantDuringReload(t *testing.T) {
	versions := []string{
		"tenant-a " + keyA + "\n",
		"tenant-a " + keyA + "\ntenant-b " + keyB + "\n",
		"tenant-c " + keyB + " attach\n# reordered\ntenant-a " + keyA + "\n",
		"tenant-a " + keyA + "\ntenant-x " + key15 + "\n", // broken: previous stays
	}
	path := writeFile(t, t.TempDir(), versions[0])
	k, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	var (
		stop    atomic.Bool
		wg      sync.WaitGroup
		lookups atomic.Int64
		sawB    atomic.Bool
	)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				if got, ok := k.Tenant(keyA); !ok || got != "tenant-a" {
					t.Errorf("Tenant(keyA) = %q, %v during reload", got, ok)
					return
				}
				// keyB is tenant-b's without attach, or tenant-c's with
				// it: never a mix of two versions.
				if got, perms, ok := k.Lookup(keyB); ok {
					if (got != "tenant-b" || perms != 0) && (got != "tenant-c" || perms != Attach) {
						t.Errorf("Lookup(keyB) = %q, %q during reload", got, perms)
						return
					}
					sawB.Store(true)
				}
				if got, ok := k.Tenant(keyC); ok {
					t.Errorf("Tenant(keyC) = %q during reload", got)
					return
				}
				lookups.Add(1)
			}
		}()
	}
	for i := range 400 {
		v := versions[i%len(versions)]
		replaceFile(t, path, v)
		err := k.Reload()
		if broken := i%len(versions) == 3; broken != (err != nil) {
			t.Fatalf("Reload of version %d: %v", i%len(versions), err)
		}
	}
	stop.Store(true)
	wg.Wait()
	if lookups.Load() == 0 || !sawB.Load() {
		t.Errorf("lookups: %d, keyB seen: %v", lookups.Load(), sawB.Load())
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"tenant-a " + keyA + "\n",
		"# comment\n\n  tenant-a\t" + keyA + "  \r\ntenant_b " + keyB + "\n",
		"tenant-a " + keyA + "\ntenant-b " + keyA + "\n",
		"tenant-a " + key15 + "\n",
		"ten.ant " + keyA + "\n",
		keyA + "\n",
		"tenant-a " + keyA + " " + keyB + "\n",
		"tenant-a " + keyA + " attach\ntenant-b " + keyB + "\n",
		"tenant-a " + keyA + " attach,attach\n",
		"tenant-a " + keyA + " bogus\n",
		"tenant-a " + keyA + " attach,\n",
		"tenant-a " + keyA + " attach attach\n",
		"# only a comment\n",
		"",
		"\x00 \xff\xfe\n\ufefftenant-a " + keyA,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		entries, err := parse(data)
		if err != nil {
			// The messages are fixed text and line numbers: no word of the
			// input as long as a key may show in them (permission fields
			// included, where a key may have been put by mistake).
			msg := err.Error()
			for _, tok := range strings.Fields(string(data)) {
				if len(tok) >= MinKeyLen && strings.Contains(msg, tok) {
					t.Fatalf("error %q contains %q from the input", msg, tok)
				}
			}
			return
		}
		if len(entries) == 0 {
			t.Fatal("parse succeeded with no entries")
		}
		seen := map[[32]byte]bool{}
		for _, e := range entries {
			if !runcomfy.ValidID(e.tenant) {
				t.Fatalf("entry with invalid tenant %q", e.tenant)
			}
			if seen[e.digest] {
				t.Fatalf("duplicated key accepted")
			}
			seen[e.digest] = true
		}
		// Every key line parse took resolves to its tenant.
		k := &Keys{}
		k.entries.Store(&entries)
		for _, line := range strings.Split(string(data), "\n") {
			fields := strings.Fields(line)
			if len(fields) < 2 || strings.HasPrefix(fields[0], "#") {
				continue
			}
			if len(fields) > 3 {
				t.Fatalf("line %q of %d fields accepted", line, len(fields))
			}
			var want Permissions
			if len(fields) == 3 {
				p, err := parsePermissions(fields[2])
				if err != nil {
					t.Fatalf("line %q: permissions %v, yet the file loaded", line, err)
				}
				want = p
			}
			if got, perms, ok := k.Lookup(fields[1]); !ok || got != fields[0] || perms != want {
				t.Fatalf("line %q: Lookup = %q, %q, %v", line, got, perms, ok)
			}
		}
	})
}
