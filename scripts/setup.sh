#!/usr/bin/env bash
# Prepare a machine for nffs: Debian packages for FUSE 3 and building pyfuse3 (and tmux, which
# the `nffs top` test drives), then a venv with the project installed (editable, with the test
# and plot extras). As root, also make `nffs` reachable for `mount -t fuse.nffs` and /etc/fstab:
# mount.fuse3 runs `nffs FIELD_DIR MOUNTPOINT -o OPTS` with PATH=/usr/local/sbin:/usr/local/bin:...,
# so /usr/local/bin/nffs is linked to this venv's entry point (NFFS_NO_SYSTEM_LINK=1 skips it).
# Idempotent; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${NFFS_VENV:-.venv}"
PY="${PYTHON:-python3}"

need=()
for pkg in fuse3 libfuse3-dev pkg-config gcc attr tmux; do
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
# matplotlib is optional (only `nffs bench --plot` needs it): a failure here is not fatal
"$VENV/bin/python" -m pip install -q -e '.[test,plot]' >/dev/null 2>&1 || echo "setup: matplotlib not installed (nffs bench --plot unavailable)" >&2
if [ "$(id -u)" -eq 0 ] && [ "${NFFS_NO_SYSTEM_LINK:-0}" != 1 ]; then
    target="$(cd "$VENV/bin" && pwd)/nffs"
    if [ "$(readlink -f /usr/local/bin/nffs 2>/dev/null)" != "$(readlink -f "$target")" ]; then
        ln -sfn "$target" /usr/local/bin/nffs
        echo "setup: /usr/local/bin/nffs -> $target (for mount -t fuse.nffs)" >&2
    fi
fi
echo "setup: ready ($VENV)" >&2
