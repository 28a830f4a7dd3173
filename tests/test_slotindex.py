"""The page table's index for big fields (open addressing in numpy), against a dict."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from nffs.tiers.slotindex import SlotIndex

pages = st.integers(0, (1 << 40) - 1)
small_pages = st.integers(0, 300)  # many collisions and long probe runs in a small table
ops = st.lists(st.one_of(
    st.tuples(st.just("set"), st.one_of(pages, small_pages), st.integers(0, 1 << 40)),
    st.tuples(st.just("pop"), st.one_of(pages, small_pages)),
    st.tuples(st.just("get"), st.one_of(pages, small_pages)),
), max_size=400)


@settings(max_examples=200, deadline=None)
@given(program=ops)
def test_index_behaves_like_a_dict_through_sets_pops_and_growth(program) -> None:
    index, model = SlotIndex(16), {}  # small: grows several times within a program
    for op in program:
        if op[0] == "set":
            index.set(op[1], op[2])
            model[op[1]] = op[2]
        elif op[0] == "pop":
            index.pop(op[1])
            model.pop(op[1], None)
        else:
            assert index.get(op[1]) == model.get(op[1], -1)
    assert index.count == len(model)
    probe = np.array(sorted(set(model) | {p + 1 for p in model} | {0, 7}), dtype=np.int64)
    assert index.get_many(probe).tolist() == [model.get(int(p), -1) for p in probe]
    for p, c in model.items():
        assert index.get(p) == c


def test_growth_keeps_every_entry_and_a_low_load() -> None:
    index = SlotIndex()
    rng = np.random.default_rng(2)
    keys = rng.choice(1 << 34, 100_000, replace=False)
    for i, p in enumerate(keys.tolist()):
        index.set(p, i)
    assert index.count == 100_000 and 2 * index.count <= index.mask + 1
    assert index.get_many(keys).tolist() == list(range(100_000))
    for p in keys[::2].tolist():
        index.pop(p)
    got = index.get_many(keys)
    assert (got[::2] == -1).all() and got[1::2].tolist() == list(range(1, 100_000, 2))
