"""Query a mounted field the way any program would: plain file I/O on `query`, `at/`, `concepts/`."""
from __future__ import annotations

import os
import sys
import time

import numpy as np


def main(mnt: str) -> None:
    import json

    info = json.load(open(os.path.join(mnt, "field.json")))
    dims, width = info["dims"], info["levels"] * info["features"]
    rng = np.random.default_rng(0)
    points = rng.random((65536, dims), dtype=np.float32)
    fd = os.open(os.path.join(mnt, "query"), os.O_RDWR)
    try:
        t0 = time.perf_counter()
        os.pwrite(fd, points.astype("<f4").tobytes(), 0)
        raw = b""
        while len(raw) < points.shape[0] * width * 4:
            chunk = os.pread(fd, 1 << 24, len(raw))
            if not chunk:
                break
            raw += chunk
        dt = time.perf_counter() - t0
    finally:
        os.close(fd)
    out = np.frombuffer(raw, dtype="<f4").reshape(points.shape[0], -1)
    print(f"== query: {points.shape[0]} points -> {out.shape} in {dt * 1e3:.1f} ms ({points.shape[0] / dt:,.0f} points/s)")
    name = ",".join(["0.25", "0.5", "0.75", "0.5", "0.5", "0.5", "0.5"][:dims])
    print(f"== cat at/{name}:", open(os.path.join(mnt, "at", name)).read().strip()[:200], "...")
    concept = os.path.join(mnt, "concepts", "demo-cat")
    target = np.linspace(-0.5, 0.5, width, dtype=np.float32)
    with open(concept, "wb") as f:
        f.write(target.tobytes())
    back = np.fromfile(concept, dtype="<f4")
    print(f"== concept demo-cat: wrote {width} values, read back max error {np.abs(back - target).max():.2e}")


if __name__ == "__main__":
    main(sys.argv[1])
