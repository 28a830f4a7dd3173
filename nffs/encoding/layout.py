"""Field settings and the tiny-cuda-nn compatible parameter layout (SPEC 2, 2.1, 2.2)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

HASH_PRIMES = (1, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737)
#: tiny-cuda-nn caps dense level sizes at uint32 max / 2 before rounding to 8.
TCNN_MAX_LEVEL_PARAMS = 2**31 - 1
WIDE_LOG2_THRESHOLD = 31

_DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}


def _next_multiple(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


@dataclass(frozen=True)
class FieldConfig:
    """The persisted settings of a field (the keys of field.json)."""

    dims: int = 3
    levels: int = 16
    features: int = 2
    log2_table_size: int = 19
    base_resolution: int = 16
    per_level_scale: float = 2.0
    interpolation: str = "linear"
    dtype: str = "float32"
    init: str = "uniform"
    init_scale: float = 1e-4
    seed: int = 0
    page_size: int = 65536

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting; a field is never built from bad input."""
        def need_int(name: str, lo: int, hi: int | None) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if value < lo or (hi is not None and value > hi):
                bounds = f"at least {lo}" if hi is None else f"in {lo}..{hi}"
                raise ValueError(f"{name} must be {bounds}, got {value}")

        need_int("dims", 1, 7)
        need_int("levels", 1, 64)
        need_int("features", 1, 64)
        need_int("log2_table_size", 4, 48)
        need_int("base_resolution", 2, None)
        need_int("seed", 0, 2**64 - 1)
        need_int("page_size", 4096, 4 * 1024 * 1024)
        if self.page_size & (self.page_size - 1):
            raise ValueError(f"page_size must be a power of two, got {self.page_size}")
        scale = self.per_level_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 1:
            raise ValueError(f"per_level_scale must be a finite number > 1, got {scale!r}")
        if self.interpolation not in ("linear", "smoothstep"):
            raise ValueError(f"interpolation must be 'linear' or 'smoothstep', got {self.interpolation!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be 'float32' or 'float16', got {self.dtype!r}")
        if self.init not in ("uniform", "zeros"):
            raise ValueError(f"init must be 'uniform' or 'zeros', got {self.init!r}")
        iscale = self.init_scale
        if isinstance(iscale, bool) or not isinstance(iscale, (int, float)) or not math.isfinite(iscale) or iscale < 0:
            raise ValueError(f"init_scale must be a finite number >= 0, got {iscale!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FieldConfig":
        """Build from field.json keys; unknown keys are an error so typos never pass silently."""
        if not isinstance(data, dict):
            raise ValueError("field settings must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown field setting(s): {', '.join(unknown)}")
        values = dict(data)
        if "per_level_scale" in values and isinstance(values["per_level_scale"], int) and not isinstance(values["per_level_scale"], bool):
            values["per_level_scale"] = float(values["per_level_scale"])
        if "init_scale" in values and isinstance(values["init_scale"], int) and not isinstance(values["init_scale"], bool):
            values["init_scale"] = float(values["init_scale"])
        cfg = cls(**values)
        cfg.validate()
        return cfg


@dataclass(frozen=True)
class LevelInfo:
    index: int
    scale: float  # float32 value, kept as Python float
    resolution: int
    entries: int
    offset: int
    dense: bool


class FieldLayout:
    """Per-level sizes and offsets exactly as tiny-cuda-nn's GridEncoding computes them."""

    def __init__(self, cfg: FieldConfig) -> None:
        cfg.validate()
        self.cfg = cfg
        self.dims = cfg.dims
        self.n_levels = cfg.levels
        self.features = cfg.features
        self.wide = cfg.log2_table_size > WIDE_LOG2_THRESHOLD
        self.dtype = _DTYPES[cfg.dtype]
        self.itemsize = self.dtype.itemsize
        self.page_size = cfg.page_size
        table_size = 1 << cfg.log2_table_size
        log2_scale = np.log2(np.float32(cfg.per_level_scale))
        levels: list[LevelInfo] = []
        offset = 0
        for level in range(cfg.levels):
            scale = np.float32(np.exp2(np.float32(level) * log2_scale)) * np.float32(cfg.base_resolution) - np.float32(1.0)
            scale = np.float32(scale)
            resolution = int(math.ceil(float(scale))) + 1
            dense_size = resolution ** cfg.dims
            entries = dense_size if self.wide else min(dense_size, TCNN_MAX_LEVEL_PARAMS)
            entries = min(_next_multiple(entries, 8), table_size)
            levels.append(LevelInfo(level, float(scale), resolution, entries, offset, dense_size <= entries))
            offset += entries
        self.levels: tuple[LevelInfo, ...] = tuple(levels)
        self.total_entries = offset
        self.n_params = offset * cfg.features
        self.params_bytes = self.n_params * self.itemsize
        self.n_pages = (self.params_bytes + self.page_size - 1) // self.page_size
        self.encoding_width = cfg.levels * cfg.features
        # Arrays the vectorised encoder needs, built once.
        self.level_scales = np.array([lv.scale for lv in levels], dtype=np.float32)
        self.level_entries = np.array([lv.entries for lv in levels], dtype=np.uint64)
        self.level_offsets = np.array([lv.offset for lv in levels], dtype=np.uint64)
        self.level_dense = np.array([lv.dense for lv in levels], dtype=bool)

    def level_byte_range(self, level: int) -> tuple[int, int]:
        """Bytes [start, end) of one level's table inside the flat params array."""
        info = self.levels[level]
        row = self.features * self.itemsize
        return info.offset * row, (info.offset + info.entries) * row

    def page_byte_range(self, page: int) -> tuple[int, int]:
        start = page * self.page_size
        return start, min(start + self.page_size, self.params_bytes)

    def describe(self) -> dict[str, Any]:
        """The settings plus derived layout, as shown in the mounted field.json."""
        out = self.cfg.to_dict()
        out["levels_info"] = [
            {
                "level": lv.index,
                "resolution": lv.resolution,
                "entries": lv.entries,
                "offset": lv.offset,
                "dense": lv.dense,
                "params": lv.entries * self.features,
                "byte_offset": self.level_byte_range(lv.index)[0],
                "bytes": lv.entries * self.features * self.itemsize,
            }
            for lv in self.levels
        ]
        out["n_params"] = self.n_params
        out["params_bytes"] = self.params_bytes
        out["n_pages"] = self.n_pages
        out["encoding_width"] = self.encoding_width
        out["wide"] = self.wide
        return out
