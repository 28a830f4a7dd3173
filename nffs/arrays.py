"""Array helpers shared by the encoding and the storage core."""
from __future__ import annotations

import numpy as np


def sorted_unique(a: np.ndarray) -> np.ndarray:
    """The distinct values of `a`, ascending: np.unique by a sort and a neighbour test.
    numpy 2.x's np.unique hashes, several times slower on the thousands to millions of
    integers a gather, a page scan or a mount looks at."""
    out = np.sort(a.reshape(-1))
    if out.size > 1:
        keep = np.empty(out.size, dtype=bool)
        keep[0] = True
        np.not_equal(out[1:], out[:-1], out=keep[1:])
        out = out[keep]
    return out
