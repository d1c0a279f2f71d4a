//go:build chaosfault

package app

import "flag"

// testFlags adds the flags of a deliberately broken gateway. They exist only
// in builds with the chaosfault tag, which the chaos soak builds to show that
// it catches a gateway that breaks its promises.
func testFlags(fs *flag.FlagSet, cfg *Config) {
	fs.IntVar(&cfg.DropFinalEvery, "test-drop-final-every", 0, "end every `n`th watch stream that reaches its final state without sending it (a broken build, for the chaos soak); 0 never")
}
