#!/usr/bin/env bash
# Installs the Debian packages the tests and benchmarks need, when missing, so
# that `make test` and `make bench` work on a fresh Debian machine:
#   redis-server, redis-tools  Redis for the state tests, each package starting a
#                              private server of its own (and redis-benchmark)
#   chromium                   the browser EventSource test
#   python3-grpcio/-protobuf   the Python client test
#   protobuf-compiler(-grpc)   the Python stubs (make generate-clients, CI's check)
# Node.js and the npm packages are handled by clients/test.sh.
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-benchmark >/dev/null 2>&1 || missing+=(redis-tools)
[ -x /usr/bin/chromium ] || missing+=(chromium)
/usr/bin/python3 -c 'import grpc, google.protobuf' >/dev/null 2>&1 || missing+=(python3-grpcio python3-protobuf)
/usr/bin/python3 -c 'import importlib.util as u, sys; sys.exit(not all(map(u.find_spec, ("pip", "setuptools", "ensurepip"))))' >/dev/null 2>&1 || missing+=(python3-pip python3-setuptools python3-venv)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
[ -x /usr/bin/grpc_python_plugin ] || missing+=(protobuf-compiler-grpc)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus) # promtool, for deploy/prometheus (deploy_test.go)
[ ${#missing[@]} -eq 0 ] && exit 0

echo "== installing ${missing[*]}" >&2
sudo=()
[ "$(id -u)" = 0 ] || sudo=(sudo)
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
# The prometheus package also ships a server that may start on :9090, the
# gateway's gRPC port; only promtool is wanted.
if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null 2>&1; then
	"${sudo[@]}" systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
