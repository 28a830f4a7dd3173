#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite, real FUSE mounts included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# the MooseFS tests' servers: installed here, not inside the first test (whose deadline,
# tests/hang_guard.py, an apt-get update could eat); as root only, as those tests need
if [ "$(id -u)" -eq 0 ]; then
    "${NFFS_VENV:-.venv}/bin/python" scripts/moosefs.py install \
        || echo "setup: MooseFS could not be installed; its tests will say why" >&2
fi
exec "${NFFS_VENV:-.venv}/bin/python" -m pytest -q "$@"
