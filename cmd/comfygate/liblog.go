package main

import "log/slog"

// routeLibraryLogs sends what the libraries log on their own to log, and
// returns a function that restores their previous loggers.
func routeLibraryLogs(log *slog.Logger) (restore func()) {
	return func() {}
}
