#!/usr/bin/env bash
# Runs every example the README names against a real gateway with its built-in
# RunComfy simulator (--simulate), each client installed the way a user
# installs it:
#   - the comfygate command with examples/job.json (the README's CLI lines);
#   - examples/go, built with the repository's go.mod;
#   - examples/example.py, with the comfygate package pip-installed from
#     clients/python into a scratch virtualenv (over Debian's python3-grpcio
#     and python3-protobuf: --no-deps, nothing from PyPI);
#   - examples/example.ts, compiled and run in a scratch npm project that
#     installed the client from the tarball `npm pack` makes of
#     clients/typescript (built to dist/: JavaScript and .d.ts).
# Each example submits examples/job.json, watches the request to its end and
# must exit 0 with the output URLs printed.
#
# Uses $COMFYGATE_BIN when set (clients/test.sh builds it), else builds the
# gateway. Everything it makes lives in a temporary directory (the packages
# are built from copies), removed at the end with the gateway stopped, also on
# failure or Ctrl-C.
# Run from anywhere: bash examples/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
. clients/lib.sh

ensure_node_modules
ensure_python_grpc
ensure_python_packaging

tmp="$(mktemp -d)"
gateway_pid=""

cleanup() {
  if [ -n "$gateway_pid" ]; then
    kill -TERM "$gateway_pid" 2>/dev/null || true
    # The drain takes well under a second here; SIGKILL after 10 s regardless.
    for _ in $(seq 100); do
      kill -0 "$gateway_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$gateway_pid" 2>/dev/null || true
    wait "$gateway_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

failed=()
fail() {
  echo "examples/run.sh: FAIL: $*" >&2
  failed+=("$1")
}

echo "== README: every examples/ path it names exists"
for f in $(grep -oE 'examples/[A-Za-z0-9_./-]*[A-Za-z0-9_]' README.md | sort -u); do
  [ -e "$f" ] || fail "readme-paths" "README.md names $f, which does not exist"
done

if [ -n "${COMFYGATE_BIN:-}" ]; then
  bin="$COMFYGATE_BIN"
else
  echo "== building comfygate"
  bin="$tmp/comfygate"
  go build -o "$bin" ./cmd/comfygate
fi

echo "== Go: building examples/go"
go build -o "$tmp/example-go" ./examples/go

echo "== Python: pip install clients/python into a scratch virtualenv"
# --system-site-packages: Debian's grpcio and protobuf; --without-pip: Debian's
# pip (from the system site-packages) installs into the venv all the same. The
# build runs on a copy: setuptools writes build/ and *.egg-info beside the source.
"$DEBIAN_PYTHON" -m venv --without-pip --system-site-packages "$tmp/venv"
mkdir "$tmp/python-src"
cp -R clients/python/. "$tmp/python-src/"
rm -rf "$tmp/python-src/build" "$tmp"/python-src/*.egg-info
find "$tmp/python-src" -name __pycache__ -prune -exec rm -rf {} +
"$tmp/venv/bin/python" -m pip install --quiet --no-deps --no-build-isolation --no-index \
  --disable-pip-version-check "$tmp/python-src"
# The package must come from the venv, with its type information.
(cd "$tmp" && venv/bin/python - "$tmp/venv" <<'EOF'
import sys
from pathlib import Path
import comfygate, comfygate.errors, comfygate.v1.gateway_pb2
pkg = Path(comfygate.__file__).resolve().parent
assert pkg.is_relative_to(Path(sys.argv[1]).resolve()), "comfygate imported from %s, not the venv" % pkg
for f in ("py.typed", "v1/gateway_pb2.pyi", "v1/gateway_pb2_grpc.py"):
    assert (pkg / f).is_file(), "%s is not installed" % f
EOF
) || fail python-install "the installed comfygate package is not what pyproject.toml describes"

echo "== TypeScript: npm pack clients/typescript, install the tarball into a scratch project"
# Packed from a copy (with the client's node_modules linked in), so that the
# build's dist/ is written there, not into the work tree.
mkdir "$tmp/ts-src"
tar -C clients/typescript --exclude=./node_modules --exclude=./dist -cf - . | tar -C "$tmp/ts-src" -xf -
ln -s "$repo/clients/typescript/node_modules" "$tmp/ts-src/node_modules"
tarball="$(cd "$tmp/ts-src" && npm pack --silent --pack-destination "$tmp" | tail -n 1)"
tarball="$tmp/$tarball"
listing="$(tar -tzf "$tarball")"
for f in package/package.json package/dist/index.js package/dist/index.d.ts package/dist/errors.d.ts \
  package/dist/gen/comfygate/v1/gateway_pb.js package/dist/gen/comfygate/v1/gateway_pb.d.ts; do
  grep -qxF "$f" <<<"$listing" || fail ts-pack "$(basename "$tarball") lacks $f"
done
if grep -q '^package/src/\|^package/test/\|^package/node_modules/' <<<"$listing"; then
  fail ts-pack "$(basename "$tarball") carries sources, tests or node_modules"
fi
app="$tmp/ts-app"
mkdir "$app"
cat > "$app/package.json" <<'EOF'
{ "name": "comfygate-example", "private": true, "type": "module" }
EOF
# The example's type check runs against the installed package's .d.ts (no
# skipLibCheck); Node's types come from the client's dev dependencies.
cat > "$app/tsconfig.json" <<EOF
{
  "compilerOptions": {
    "target": "ES2022", "module": "NodeNext", "moduleResolution": "NodeNext",
    "strict": true, "outDir": "out",
    "typeRoots": ["$repo/clients/typescript/node_modules/@types"], "types": ["node"]
  },
  "files": ["example.ts"]
}
EOF
cp examples/example.ts "$app/"
(cd "$app" && npm install --silent --no-audit --no-fund --prefer-offline "$tarball")
"$repo/clients/typescript/node_modules/.bin/tsc" -p "$app" || fail ts-install "examples/example.ts does not compile against the installed package"

echo "== starting comfygate --simulate"
read -r grpc_addr http_addr < <("$DEBIAN_PYTHON" -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join("127.0.0.1:%d" % s.getsockname()[1] for s in socks))')
"$bin" --simulate --grpc-addr "$grpc_addr" --http-addr "$http_addr" >"$tmp/gateway.log" 2>&1 &
gateway_pid=$!
# Ready when /readyz answers 200; give up after 30 s or when the gateway exits.
if ! "$DEBIAN_PYTHON" - "$http_addr" "$gateway_pid" <<'EOF'
import sys, time, urllib.request
url, pid = "http://%s/readyz" % sys.argv[1], sys.argv[2]
deadline = time.monotonic() + 30
while True:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            if resp.status == 200:
                sys.exit(0)
    except OSError:
        pass  # not listening yet, or not ready (urlopen raises on 503)
    try:
        with open("/proc/%s/stat" % pid) as f:
            running = f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        running = False
    if not running:
        sys.exit("the gateway exited before it was ready")
    if time.monotonic() > deadline:
        sys.exit("the gateway was not ready within 30 s")
    time.sleep(0.05)
EOF
then
  cat "$tmp/gateway.log" >&2
  exit 1
fi

export COMFYGATE_ADDR="$grpc_addr" COMFYGATE_DEPLOYMENT=my-deployment
unset COMFYGATE_API_KEY

# check NAME OUTPUT: an example's output names the request, shows it reach
# STATUS_SUCCEEDED and ends with its output URLs.
check() {
  local name=$1 out=$2
  head -n 1 "$out" | grep -qE '^request [A-Za-z0-9_-]+$' || fail "$name" "no request id first"
  grep -qE '^[0-9]+ STATUS_SUCCEEDED$' "$out" || fail "$name" "no STATUS_SUCCEEDED line"
  tail -n 1 "$out" | grep -qE '^https?://' || fail "$name" "no output URL at the end"
}

# run NAME DIR CMD...: runs an example (bounded: a watch that never ended would
# hang CI) in DIR, shows its output, checks it.
run() {
  local name=$1 dir=$2
  shift 2
  echo "== example: $name"
  local rc=0
  (cd "$dir" && timeout 60 "$@") >"$tmp/$name.out" 2>&1 || rc=$?
  sed 's/^/    /' "$tmp/$name.out"
  if [ "$rc" != 0 ]; then
    fail "$name" "exit $rc"
    return
  fi
  check "$name" "$tmp/$name.out"
}

# The README's command-line lines that name examples/job.json.
echo "== example: comfygate submit --input examples/job.json; comfygate watch --json"
id="$(timeout 60 "$bin" submit --input examples/job.json)" || fail cli "submit exit $?"
grep -qE '^[A-Za-z0-9_-]+$' <<<"$id" || fail cli "submit printed $id, not a request id"
ID="$(timeout 60 "$bin" submit --input examples/job.json --idempotency-key nightly-2026-11-27)" || fail cli "submit --idempotency-key exit $?"
rc=0
timeout 60 "$bin" watch --json "$ID" >"$tmp/states.ndjson" || rc=$?
sed 's/^/    /' "$tmp/states.ndjson"
[ "$rc" = 0 ] || fail cli "watch --json exit $rc"
tail -n 1 "$tmp/states.ndjson" | grep -q '"status":"STATUS_SUCCEEDED"' || fail cli "watch --json did not end with STATUS_SUCCEEDED"

run go "$repo" "$tmp/example-go" examples/job.json
run python "$repo" "$tmp/venv/bin/python" examples/example.py examples/job.json
run typescript "$app" node out/example.js "$repo/examples/job.json"

if [ ${#failed[@]} -gt 0 ]; then
  echo "== gateway log" >&2
  cat "$tmp/gateway.log" >&2
  echo "examples/run.sh: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "examples/run.sh: all examples passed"
