// Package flagenv lets every flag of a command line be set from an environment
// variable too, and prints the flags with those variables named, so that the
// server and the client commands read and describe their settings one way.
package flagenv

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// EnvOf names the environment variable of a flag, or "" for a flag that has
// none.
type EnvOf func(flagName string) string

// Prefixed is the EnvOf of a command whose every flag has a variable: prefix
// and the flag's name in capitals, '-' as '_' (--grpc-addr is
// COMFYGATE_GRPC_ADDR with prefix "COMFYGATE_").
func Prefixed(prefix string) EnvOf {
	return func(flagName string) string {
		return prefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
	}
}

// Only is the EnvOf of a command where only the listed flags have a variable.
func Only(vars map[string]string) EnvOf {
	return func(flagName string) string { return vars[flagName] }
}

// SetFromEnv sets each flag of fs whose variable getenv reports non-empty.
// Call it before fs.Parse, so that the command line wins. A value that does
// not parse is reported with the variable's name, all of them at once.
func SetFromEnv(fs *flag.FlagSet, envOf EnvOf, getenv func(string) string) error {
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		name := envOf(f.Name)
		if name == "" {
			return
		}
		if v := getenv(name); v != "" {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
			}
		}
	})
	return errors.Join(errs...)
}

// PrintFlags writes every flag of fs: its name and argument, then its usage
// with its variable and its default, when it has them.
func PrintFlags(w io.Writer, fs *flag.FlagSet, envOf EnvOf) {
	fs.VisitAll(func(f *flag.Flag) {
		arg, usage := flag.UnquoteUsage(f)
		fmt.Fprintf(w, "  %s\n    \t%s", strings.TrimSpace("--"+f.Name+" "+arg), usage)
		var notes []string
		if env := envOf(f.Name); env != "" {
			notes = append(notes, "env "+env)
		}
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0s" {
			notes = append(notes, "default "+f.DefValue)
		}
		if len(notes) > 0 {
			fmt.Fprintf(w, " (%s)", strings.Join(notes, ", "))
		}
		fmt.Fprintln(w)
	})
}
