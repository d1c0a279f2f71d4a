#!/usr/bin/env bash
# Regenerates the committed client stubs from proto/, deterministically:
#   clients/typescript/src/gen/  buf + @bufbuild/protoc-gen-es (pinned in package-lock.json)
#   clients/python/comfygate/v1/ Debian's protoc and grpc_python_plugin
# Run from anywhere; CI checks freshness with
#   bash clients/generate.sh && git diff --exit-code clients/
set -euo pipefail
cd "$(dirname "$0")/.."
. clients/lib.sh

# The Python stubs are pinned to Debian 12's protoc 3.21.12: its output is what
# Debian's python3-protobuf (4.21, the Python numbering of protobuf 21) runs, and
# another protoc would both change the committed files and may need a newer
# runtime.
PROTOC_WANT="libprotoc 3.21.12"

echo "== TypeScript stubs (buf + protoc-gen-es)"
ensure_node_modules
go tool -modfile=tools/go.mod buf generate --template clients/typescript/buf.gen.yaml

echo "== Python stubs (protoc + grpc_python_plugin)"
if ! command -v protoc >/dev/null 2>&1 || [ ! -x /usr/bin/grpc_python_plugin ]; then
  apt_install protobuf-compiler protobuf-compiler-grpc
fi
if [ "$(protoc --version)" != "$PROTOC_WANT" ]; then
  echo "clients/generate.sh: want $PROTOC_WANT (Debian 12's protobuf-compiler), found $(protoc --version)" >&2
  exit 1
fi
out=clients/python
# Remove the previous output first (as buf's clean: true does), so stubs of a
# deleted proto file do not linger; the hand-written __init__.py files stay.
find "$out/comfygate" -name '*_pb2*.py*' -delete
# -I /usr/include: the well-known types (struct.proto, timestamp.proto) that
# protobuf-compiler installs.
protoc -I proto -I /usr/include \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  --plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin \
  $(find proto -name '*.proto' | LC_ALL=C sort)
echo "== done"
