# Helpers shared by clients/test.sh and clients/generate.sh; sourced, not run.
# Both scripts work on a clean clone: whatever is missing is installed here.

# apt_install PKG...: installs Debian packages (as root, or through sudo).
apt_install() {
  echo "== installing $*" >&2
  local sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  # apt-get update once per script run: it is slow, and the lists may be stale.
  if [ -z "${_CLIENTS_APT_UPDATED:-}" ]; then
    "${sudo[@]}" apt-get update -qq
    _CLIENTS_APT_UPDATED=1
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# ensure_node: Node.js 20 or newer with npm (the pinned Connect-ES needs 20).
ensure_node() {
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
  fi
  if ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)'; then
    echo "clients/typescript needs Node.js >= 20, found $(node --version)" >&2
    return 1
  fi
}

# ensure_node_modules: clients/typescript/node_modules exactly as package-lock.json
# pins it. `npm ci` (which starts from scratch) runs only when something is
# missing or has another version, so repeated runs stay fast.
ensure_node_modules() {
  ensure_node
  if ! (cd clients/typescript && node -e '
      const fs = require("fs");
      const lock = JSON.parse(fs.readFileSync("package-lock.json", "utf8"));
      for (const [path, meta] of Object.entries(lock.packages)) {
        if (!path.startsWith("node_modules/")) continue;
        let installed;
        try { installed = JSON.parse(fs.readFileSync(path + "/package.json", "utf8")); }
        catch { if (meta.optional) continue; process.exit(1); } // other platforms skip optional deps
        if (installed.version !== meta.version) process.exit(1);
      }') 2>/dev/null; then
    echo "== npm ci (clients/typescript)" >&2
    (cd clients/typescript && npm ci --no-audit --no-fund)
  fi
}

# Debian's python3 has the python3-grpcio and python3-protobuf modules; a pyenv
# or venv python3 earlier in PATH would not, so it is named explicitly.
DEBIAN_PYTHON=/usr/bin/python3

# ensure_python_grpc: Debian's grpcio and protobuf for $DEBIAN_PYTHON.
ensure_python_grpc() {
  if ! "$DEBIAN_PYTHON" -c 'import grpc, google.protobuf' >/dev/null 2>&1; then
    apt_install python3 python3-grpcio python3-protobuf
  fi
}

# ensure_python_packaging: what `pip install ./clients/python` into a virtualenv
# needs from Debian: pip, setuptools (the build backend) and venv.
ensure_python_packaging() {
  if ! "$DEBIAN_PYTHON" -c 'import importlib.util as u, sys; sys.exit(not all(map(u.find_spec, ("pip", "setuptools", "ensurepip"))))' >/dev/null 2>&1; then
    apt_install python3-pip python3-setuptools python3-venv
  fi
}
