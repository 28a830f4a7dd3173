#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite, real FUSE mounts included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${NFFS_VENV:-.venv}/bin/python" -m pytest -q "$@"
