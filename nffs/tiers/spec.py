"""Tier specifications: `NAME=PATH[,kind=...][,capacity=SIZE][,numa=N][,latency=DURATION]` (SPEC 3)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, asdict
from typing import Any

MEMORY_KINDS = ("dram", "cxl")
DURABLE_KINDS = ("nvme", "hdd")
KINDS = MEMORY_KINDS + DURABLE_KINDS

_SUFFIXES = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50, "E": 1 << 60}
_DURATIONS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "": 1.0}
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class TierSpecError(ValueError):
    """A tier spec that cannot be used; the message says which part and why."""


def parse_size(text: str) -> int:
    """'64K', '2M', '1.5G', '1T', '4096' -> bytes (binary multiples)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGTPE]?)(?:i?B)?\s*", text, flags=re.IGNORECASE)
    if not m:
        raise TierSpecError(f"bad size {text!r}: expected a number with an optional K/M/G/T/P suffix or a percentage")
    value = float(m.group(1)) * _SUFFIXES[m.group(2).upper()]
    if value < 1:
        raise TierSpecError(f"bad size {text!r}: must be at least one byte")
    return int(value)


def parse_duration(text: str) -> float:
    """'5ms', '100us', '0.2s', '0' -> seconds."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ns|us|µs|ms|s|)\s*", text)
    if not m:
        raise TierSpecError(f"bad duration {text!r}: expected e.g. 5ms, 200us, 0.1s")
    return float(m.group(1)) * _DURATIONS[m.group(2)]


@dataclass(frozen=True)
class TierSpec:
    name: str
    path: str
    kind: str
    capacity: str | None = None  # as given: '2M', '50%' or None (unbounded / default)
    numa: int | None = None
    latency: float = 0.0

    @property
    def volatile(self) -> bool:
        return self.kind in MEMORY_KINDS

    def capacity_bytes(self) -> int | None:
        """Resolve the capacity; a percentage is of the file system holding PATH."""
        if self.capacity is None:
            return None
        if self.capacity.endswith("%"):
            try:
                pct = float(self.capacity[:-1])
            except ValueError:
                raise TierSpecError(f"tier {self.name}: bad percentage {self.capacity!r}") from None
            st = os.statvfs(self.path)
            return max(1, int(st.f_blocks * st.f_frsize * pct / 100))
        return parse_size(self.capacity)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TierSpec":
        return cls(**data)

    def __str__(self) -> str:
        parts = [f"{self.name}={self.path}", f"kind={self.kind}"]
        if self.capacity is not None:
            parts.append(f"capacity={self.capacity}")
        if self.numa is not None:
            parts.append(f"numa={self.numa}")
        if self.latency:
            parts.append(f"latency={self.latency * 1e3:g}ms")
        return ",".join(parts)


def _guess_kind(path: str) -> str:
    real = os.path.realpath(path)
    if real == "/dev/shm" or real.startswith("/dev/shm/"):
        return "dram"
    return "nvme"


def parse_tier_spec(text: str) -> TierSpec:
    """Parse one --tier argument; TierSpecError with a clear message on anything odd."""
    if "=" not in text:
        raise TierSpecError(f"bad tier spec {text!r}: expected NAME=PATH[,kind=...][,capacity=...]")
    name, rest = text.split("=", 1)
    name = name.strip()
    if not _NAME_RE.match(name):
        raise TierSpecError(f"bad tier name {name!r}: use 1-64 letters, digits, '_', '-', '.'")
    path, *opts = rest.split(",")
    if not path:
        raise TierSpecError(f"tier {name}: missing PATH")
    path = os.path.abspath(os.path.expanduser(path))
    kind: str | None = None
    capacity: str | None = None
    numa: int | None = None
    latency = 0.0
    seen: set[str] = set()
    for opt in opts:
        if "=" not in opt:
            raise TierSpecError(f"tier {name}: bad option {opt!r}, expected key=value")
        key, value = (s.strip() for s in opt.split("=", 1))
        if key in seen:
            raise TierSpecError(f"tier {name}: option {key!r} given twice")
        seen.add(key)
        if key == "kind":
            if value not in KINDS:
                raise TierSpecError(f"tier {name}: unknown kind {value!r} (expected one of {', '.join(KINDS)})")
            kind = value
        elif key == "capacity":
            if value.endswith("%"):
                try:
                    pct = float(value[:-1])
                except ValueError:
                    raise TierSpecError(f"tier {name}: bad capacity {value!r}") from None
                if not 0 < pct <= 100:
                    raise TierSpecError(f"tier {name}: capacity percentage must be in (0, 100], got {value!r}")
            else:
                parse_size(value)
            capacity = value
        elif key == "numa":
            if not value.isdigit():
                raise TierSpecError(f"tier {name}: numa must be a node number, got {value!r}")
            numa = int(value)
        elif key == "latency":
            latency = parse_duration(value)
        else:
            raise TierSpecError(f"tier {name}: unknown option {key!r} (kind, capacity, numa, latency)")
    if kind is None:
        kind = "cxl" if numa is not None else _guess_kind(path)
    if numa is not None and kind != "cxl":
        raise TierSpecError(f"tier {name}: numa= is only meaningful for kind=cxl")
    return TierSpec(name=name, path=path, kind=kind, capacity=capacity, numa=numa, latency=latency)


def check_tier_set(specs: list[TierSpec]) -> None:
    """A usable set has unique names and paths and at least one durable tier (every page needs a home)."""
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise TierSpecError("tier names must be unique")
    paths = [s.path for s in specs]
    if len(set(paths)) != len(paths):
        raise TierSpecError("tier paths must be distinct")
    if not any(not s.volatile for s in specs):
        raise TierSpecError("at least one durable tier (kind=nvme or kind=hdd) is needed: every page has a durable home")


DEFAULT_DRAM_CAPACITY = "25%"
#: host paths no tier may live under (pseudo file systems: pages there can never work)
_FORBIDDEN_ROOTS = ("/proc", "/sys", "/dev")
_ALLOWED_UNDER_DEV = ("/dev/shm",)


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def check_tier_paths(specs: list[TierSpec]) -> None:
    """Paths that can never hold a tier are refused before anything is created."""
    for s in specs:
        if not s.path or not os.path.isabs(s.path):
            raise TierSpecError(f"tier {s.name}: PATH must be absolute, got {s.path!r}")
        real = os.path.realpath(s.path)
        for candidate in {s.path, real}:
            if any(_under(candidate, r) for r in _FORBIDDEN_ROOTS) and not any(_under(candidate, a) for a in _ALLOWED_UNDER_DEV):
                raise TierSpecError(f"tier {s.name}: {s.path} is on a pseudo file system; pages cannot live there")
        if os.path.lexists(s.path):
            if os.path.islink(s.path):
                raise TierSpecError(f"tier {s.name}: {s.path} is a symbolic link; give the real directory")
            if not os.path.isdir(s.path):
                raise TierSpecError(f"tier {s.name}: {s.path} exists and is not a directory")
        else:
            parent = os.path.dirname(s.path.rstrip("/"))
            while parent and not os.path.lexists(parent):
                parent = os.path.dirname(parent)
            if parent and not os.path.isdir(parent):
                raise TierSpecError(f"tier {s.name}: {parent} is not a directory")
    for a in specs:
        for b in specs:
            if a is not b and _under(os.path.realpath(b.path), os.path.realpath(a.path)) and not a.volatile and not b.volatile:
                raise TierSpecError(f"tiers {a.name} and {b.name}: {b.path} lies inside {a.path}")


def default_tiers(field_dir: str) -> list[TierSpec]:
    """The embedded default: a dram tier in a private directory under /dev/shm, an nvme tier in the field dir."""
    specs = []
    if os.path.isdir("/dev/shm"):
        specs.append(TierSpec(name="dram", path="/dev/shm", kind="dram", capacity=DEFAULT_DRAM_CAPACITY))
    specs.append(TierSpec(name="nvme", path=os.path.join(os.path.abspath(field_dir), "pages"), kind="nvme"))
    return specs
