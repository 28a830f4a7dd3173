"""`nffs warmup MOUNTPOINT`: bring pages into the fastest tier before a job needs them.

Everything goes through the mount, as any client would, so the daemon's own placement
rules decide (a full memory tier spills; a read-only mount still warms up):

* `--range OFFSET LENGTH` and `--level N` announce the range in `hints` (so the
  prefetcher, when there is one, fetches ahead) and then read it through `params` /
  `levels/NN` in 1 MiB chunks: every page is read from its tier, promoted to the
  fastest memory tier with room, and lands in the kernel page cache too.
* `--concept NAME` writes `concept NAME` to `hints` and reads the concept (which
  gathers every corner page of its point).
* `--points FILE` (text: D numbers a line; or raw little-endian float32 in a file
  ending .f32/.bin/.raw) writes `point` hints and runs the points through `query`,
  which gathers exactly the pages their encoding touches.
"""
from __future__ import annotations

import errno
import logging
import os
import time
from dataclasses import dataclass
from typing import Iterable

from .progress import Progress
from .source import MountUnavailable, read_field_json, read_stats
from .view import count, extract, human_bytes, plural

log = logging.getLogger(__name__)

CHUNK = 1 << 20
HINT_SPAN = 64 << 20  # bytes announced per `range` hint line (the daemon caps a line's pages)
POINT_BATCH = 65536


class WarmupError(Exception):
    """A warmup request that cannot be carried out (bad range, unknown level or concept, bad file)."""


@dataclass
class Job:
    label: str
    path: str  # file read through the mount
    offset: int
    length: int
    hint_offset: int | None  # offset in params for `range` hints (None: no hint)


def _hint(mountpoint: str, lines: Iterable[str]) -> None:
    """Best effort: a daemon without a prefetcher ignores hints; a malformed one is our bug, logged."""
    text = "".join(line + "\n" for line in lines)
    if not text:
        return
    try:
        fd = os.open(os.path.join(mountpoint, "hints"), os.O_WRONLY)
    except OSError as exc:
        log.debug("no hints file: %s", exc)
        return
    try:
        os.write(fd, text.encode())
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        log.warning("the daemon refused a hint: %s", text.splitlines()[0])
    finally:
        os.close(fd)


def _fastest_tier_pages(mountpoint: str) -> tuple[str, float | None]:
    try:
        v = extract(read_stats(mountpoint, with_field=False))
    except MountUnavailable:
        return "?", None
    if not v.tiers:
        return "?", None
    return v.tiers[0].name, v.tiers[0].pages


def _jobs(mountpoint: str, info: dict, ranges: list[tuple[int, int]], levels: list[int]) -> list[Job]:
    params_bytes = int(info["params_bytes"])
    jobs = []
    for off, length in ranges:
        if off < 0 or length <= 0:
            raise WarmupError(f"bad range {off} {length}: the offset must be >= 0 and the length > 0")
        if off >= params_bytes:
            raise WarmupError(f"range starts at {off}, past the end of params ({params_bytes} bytes)")
        length = min(length, params_bytes - off)
        jobs.append(Job(f"params [{off}, {off + length})", os.path.join(mountpoint, "params"), off, length, off))
    per_level = info.get("per_level") or []
    for n in levels:
        if not 0 <= n < len(per_level):
            raise WarmupError(f"no level {n}: the field has levels 0..{len(per_level) - 1}")
        lv = per_level[n]
        name = f"{n:02d}" if len(per_level) <= 100 else f"{n:03d}"
        path = os.path.join(mountpoint, "levels", name)
        if not os.path.exists(path):
            names = sorted(os.listdir(os.path.join(mountpoint, "levels")))
            path = os.path.join(mountpoint, "levels", names[n])
        jobs.append(Job(f"level {n}", path, 0, int(lv["bytes"]), int(lv["byte_offset"])))
    return jobs


def _read_job(mountpoint: str, job: Job, bar: Progress) -> int:
    fd = os.open(job.path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, job.offset, job.length, os.POSIX_FADV_WILLNEED)
        end = job.offset + job.length
        pos = job.offset
        hinted = pos
        done = 0
        while pos < end:
            if job.hint_offset is not None and hinted < end and hinted - pos < HINT_SPAN // 2:
                span = min(HINT_SPAN, end - hinted)
                _hint(mountpoint, [f"range {job.hint_offset + (hinted - job.offset)} {span}"])
                hinted += span
            data = os.pread(fd, min(CHUNK, end - pos), pos)
            if not data:
                break
            pos += len(data)
            done += len(data)
            bar.advance(len(data))
        return done
    finally:
        os.close(fd)


def load_points(path: str, dims: int):
    """Points from a text file (D numbers a line, spaces or commas) or raw little-endian float32."""
    import numpy as np

    try:
        if path.endswith((".f32", ".bin", ".raw")):
            pts = np.fromfile(path, dtype="<f4")
            if pts.size % dims:
                raise WarmupError(f"{path}: {pts.size} floats is not a multiple of D={dims}")
            pts = pts.reshape(-1, dims)
        else:
            rows = []
            with open(path) as f:
                for lineno, line in enumerate(f, 1):
                    line = line.split("#", 1)[0].strip()
                    if not line:
                        continue
                    values = [float(x) for x in line.replace(",", " ").split()]
                    if len(values) != dims:
                        raise WarmupError(f"{path}:{lineno}: {len(values)} numbers, the field has D={dims}")
                    rows.append(values)
            pts = np.array(rows, dtype=np.float32).reshape(-1, dims)
    except OSError as exc:
        raise WarmupError(f"{path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise WarmupError(f"{path}: not a points file ({exc})") from None
    if not np.isfinite(pts).all() or (pts < 0).any() or (pts > 1).any():
        raise WarmupError(f"{path}: points must be finite numbers in [0, 1]")
    return pts


def _warm_points(mountpoint: str, pts, width: int, bar: Progress) -> None:
    import numpy as np

    fd = os.open(os.path.join(mountpoint, "query"), os.O_RDWR)
    try:
        for lo in range(0, len(pts), POINT_BATCH):
            batch = np.ascontiguousarray(pts[lo:lo + POINT_BATCH], dtype="<f4")
            _hint(mountpoint, ("point " + " ".join(repr(float(x)) for x in p) for p in batch[:4096]))
            os.pwrite(fd, batch.tobytes(), 0)
            want = len(batch) * width * 4
            got = 0
            while got < want:
                chunk = os.pread(fd, want - got, got)
                if not chunk:
                    break
                got += len(chunk)
            bar.advance(len(batch))
    finally:
        os.close(fd)


def run_warmup(mountpoint: str, ranges: list[tuple[int, int]] | None = None, levels: list[int] | None = None,
               concepts: list[str] | None = None, point_files: list[str] | None = None) -> int:
    from ..fs.mounts import is_nffs_mount

    ranges, levels, concepts, point_files = ranges or [], levels or [], concepts or [], point_files or []
    if not is_nffs_mount(mountpoint):
        raise WarmupError(f"{mountpoint} is not an nffs mount")
    if not (ranges or levels or concepts or point_files):
        raise WarmupError("nothing to warm up: give --range, --level, --concept or --points")
    try:
        info = read_field_json(mountpoint)
    except MountUnavailable as exc:
        raise WarmupError(str(exc)) from None
    tier, before = _fastest_tier_pages(mountpoint)
    start = time.monotonic()
    jobs = _jobs(mountpoint, info, ranges, levels)
    total = 0
    if jobs:
        with Progress("warmup", total=sum(j.length for j in jobs), unit="B") as bar:
            for job in jobs:
                bar.note = job.label
                total += _read_job(mountpoint, job, bar)
    for name in concepts:
        if "/" in name or name in (".", ".."):
            raise WarmupError(f"bad concept name {name!r}")
        path = os.path.join(mountpoint, "concepts", name)
        if not os.path.exists(path):
            raise WarmupError(f"no concept {name!r} in {mountpoint}/concepts")
        _hint(mountpoint, [f"concept {name}"])
        with open(path, "rb") as f:
            f.read()
    n_points = 0
    if point_files:
        dims = int(info["dims"])
        width = int(info.get("encoding_width") or info["levels"] * info["features"])
        all_pts = [load_points(p, dims) for p in point_files]
        n_points = sum(len(p) for p in all_pts)
        with Progress("warmup points", total=n_points, unit="points") as bar:
            for pts in all_pts:
                _warm_points(mountpoint, pts, width, bar)
    _, after = _fastest_tier_pages(mountpoint)
    parts = []
    if total:
        parts.append(f"{human_bytes(total)} of params")
    if concepts:
        parts.append(f"{len(concepts)} concept(s)")
    if n_points:
        parts.append(f"{n_points:,} points")
    note = ""
    if after is not None and before is not None and after <= before:
        note = " (pages never written are computed on read and take no tier space; a full tier keeps what it has)"
    print(f"warmed up {', '.join(parts)} in {time.monotonic() - start:.1f}s; tier {tier} holds "
          f"{plural(after, 'page')} (was {count(before)}){note}")
    return 0
