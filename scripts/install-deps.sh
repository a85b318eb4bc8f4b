#!/usr/bin/env bash
# Installs every Debian package that agentprune's build and tests need.
# Idempotent: when everything is present it only checks and exits.
set -euo pipefail

PKGS=(
  build-essential cmake pkg-config git
  libgrpc-dev protobuf-c-compiler libprotobuf-c-dev protobuf-compiler libprotobuf-dev
  liblmdb-dev lmdb-utils libopenblas-dev libopenblas-openmp-dev libcjson-dev libcurl4-openssl-dev libpcre2-dev
  python3 python3-grpcio python3-protobuf python3-numpy python3-torch python3-yaml
  valgrind nodejs chromium
)

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# npm peers for interop and tokenizer tests, pinned by package-lock.json.
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ -f "$root/package.json" ]; then
  command -v npm >/dev/null || { $SUDO apt-get install -y -qq npm >/dev/null; }
  if [ ! -d "$root/node_modules" ] || [ "$root/package-lock.json" -nt "$root/node_modules/.package-lock.json" ]; then
    (cd "$root" && npm ci --no-audit --no-fund --loglevel=error)
  fi
fi
