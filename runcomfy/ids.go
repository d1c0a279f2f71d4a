package runcomfy

// MaxIDLen bounds deployment and request ids. RunComfy's ids are UUIDs; the bound
// leaves room for other formats while keeping ids cheap to log and store.
const MaxIDLen = 128

// ValidID reports whether id is safe to place in an upstream URL path and a
// storage key: 1 to MaxIDLen letters, digits, '-' and '_'. Nothing that could add
// a path segment, a query, a fragment or a control character passes.
func ValidID(id string) bool {
	if id == "" || len(id) > MaxIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			return false
		}
	}
	return true
}
