#!/usr/bin/env bash
# Set up, then mount a demo field with the embedded default tiers (dram under /dev/shm,
# nvme inside the field dir) and query it. Leaves it mounted with --keep.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY="${NFFS_VENV:-.venv}/bin/python"
NFFS="${NFFS_VENV:-.venv}/bin/nffs"
DEMO="${NFFS_DEMO_DIR:-/tmp/nffs-demo}"
FIELD="$DEMO/field"
MNT="$DEMO/mnt"
mkdir -p "$MNT"
if grep -qs " $MNT " /proc/mounts; then "$NFFS" umount "$MNT"; fi
[ -e "$FIELD/field.json" ] || "$NFFS" init "$FIELD"
"$NFFS" mount "$FIELD" "$MNT"
echo "== ls $MNT"; ls "$MNT"
echo "== field.json (head)"; head -c 400 "$MNT/field.json"; echo " ..."
echo "== first values of params"; dd if="$MNT/params" bs=32 count=1 status=none | od -f
"$PY" scripts/demo.py "$MNT"
"$NFFS" stat "$MNT"
if [ "${1:-}" != "--keep" ]; then
    "$NFFS" umount "$MNT"
    echo "== unmounted (run with --keep to leave $MNT mounted)"
fi
