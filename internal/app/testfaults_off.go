//go:build !chaosfault

package app

import "flag"

// testFlags adds nothing: the flags of a deliberately broken gateway exist
// only in builds with the chaosfault tag.
func testFlags(*flag.FlagSet, *Config) {}
