#!/usr/bin/env bash
# Runs a command (make run: the gateway) in the foreground. On a terminal it
# runs in a process group of its own, which the terminal's Ctrl-C reaches
# alone: the gateway drains and exits 0, and so does make, which would
# otherwise die of the same Ctrl-C with "Interrupt" and status 130.
set -euo pipefail
if [ -t 0 ] && [ -t 1 ]; then
  set -m
  "$@" &
  fg %1 >/dev/null
else
  exec "$@"
fi
