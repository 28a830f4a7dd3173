#!/usr/bin/env bash
# Set up, then mount a demo field with the embedded default tiers (dram under /dev/shm,
# nvme inside the field dir), query it, warm a level up and show its status, live view
# and metrics. Leaves it mounted with --keep.
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
echo "== nffs warmup $MNT --level 3"; "$NFFS" warmup "$MNT" --level 3
echo "== nffs stat $MNT"; "$NFFS" stat "$MNT"
echo "== nffs top $MNT --once (run without --once for the live view; q quits)"; "$NFFS" top "$MNT" --once
echo "== metrics (head)"; head -n 6 "$MNT/metrics"
if [ "${1:-}" != "--keep" ]; then
    "$NFFS" umount "$MNT"
    echo "== unmounted (run with --keep to leave $MNT mounted)"
fi
