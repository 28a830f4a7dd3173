#!/usr/bin/env bash
# Prepare a machine for nffs: Debian packages for FUSE 3 and building pyfuse3, then a venv
# with the project installed (editable, with test extras). Idempotent; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${NFFS_VENV:-.venv}"
PY="${PYTHON:-python3}"

need=()
for pkg in fuse3 libfuse3-dev pkg-config gcc attr; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ! "$PY" -c 'import sysconfig,os,sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"],"Python.h")) else 1)'; then
    need+=(python3-dev)
fi
if [ ${#need[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "setup: installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq >/dev/null || true
    $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ ! -e /dev/fuse ]; then
    modprobe fuse 2>/dev/null || true
fi
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
"$VENV/bin/python" -m pip install -q -e '.[test]'
echo "setup: ready ($VENV)" >&2
