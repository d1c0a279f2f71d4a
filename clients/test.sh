#!/usr/bin/env bash
# Runs the client tests (TypeScript and Python) against a real comfygate binary
# with its built-in RunComfy simulator, then the README's examples with each
# client installed from its package (examples/run.sh: npm pack and a scratch
# npm project, pip install into a scratch virtualenv). Installs what is missing
# (Debian packages, `npm ci`), builds the gateway once, and runs every suite
# even when one fails.
# Run from anywhere: bash clients/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. clients/lib.sh

ensure_node_modules
ensure_python_grpc

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "== building comfygate"
go build -o "$tmp/comfygate" ./cmd/comfygate
export COMFYGATE_BIN="$tmp/comfygate"

failed=()
echo "== TypeScript: typecheck"
(cd clients/typescript && npx --no-install tsc --noEmit) || failed+=(typescript-typecheck)
echo "== TypeScript: node --test"
(cd clients/typescript && npm test --silent) || failed+=(typescript)
echo "== Python: unittest ($DEBIAN_PYTHON)"
"$DEBIAN_PYTHON" -m unittest discover -s clients/python/tests -v || failed+=(python)
echo "== examples (examples/run.sh): the README's examples, each client installed from its package"
bash examples/run.sh || failed+=(examples)

if [ ${#failed[@]} -gt 0 ]; then
  echo "clients/test.sh: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "clients/test.sh: all client tests passed"
