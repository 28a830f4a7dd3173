"""Fixed inode numbers of the mounted namespace (SPEC 4)."""
from __future__ import annotations

import pyfuse3

ROOT = pyfuse3.ROOT_INODE
FIELD_JSON = 2
PARAMS = 3
STATS = 4
METRICS = 5
QUERY = 6
HINTS = 7
DECODER = 8
LEVELS_DIR = 9
CONCEPTS_DIR = 10
AT_DIR = 11

LEVEL_BASE = 1 << 8  # levels/NN -> LEVEL_BASE + NN
CONCEPT_BASE = 1 << 32  # concepts/* -> CONCEPT_BASE + concept id
AT_BASE = 1 << 48  # at/<point> -> AT_BASE + serial, forgotten when the kernel forgets

ROOT_FILES = {
    b"field.json": FIELD_JSON,
    b"params": PARAMS,
    b"stats": STATS,
    b"metrics": METRICS,
    b"query": QUERY,
    b"hints": HINTS,
    b"decoder.npz": DECODER,
}
ROOT_DIRS = {b"levels": LEVELS_DIR, b"concepts": CONCEPTS_DIR, b"at": AT_DIR}


def level_inode(level: int) -> int:
    return LEVEL_BASE + level


def is_level(inode: int) -> bool:
    return LEVEL_BASE <= inode < LEVEL_BASE + 64


def is_concept(inode: int) -> bool:
    return CONCEPT_BASE <= inode < AT_BASE


def is_at(inode: int) -> bool:
    return inode >= AT_BASE
