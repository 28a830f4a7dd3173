"""decoder.npz (SPEC 2.5): valid files load and run; anything else is a clean ValueError, never unpickled."""
from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from nffs.encoding import decoder as decoder_module
from nffs.encoding.decoder import Decoder

UNPICKLED: list[str] = []


class Booby:
    """Unpickling this records it; loading a decoder must never do so."""

    def __reduce__(self) -> tuple:
        return (UNPICKLED.append, ("unpickled!",))


def npz(compressed: bool = False, **arrays: object) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def mlp(widths: list[int], seed: int = 0, dtype: type = np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {}
    for k, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
        arrays[f"W{k}"] = rng.standard_normal((fan_in, fan_out)).astype(dtype)
        arrays[f"b{k}"] = rng.standard_normal(fan_out).astype(dtype)
    return arrays


def manual_forward(arrays: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    h = x.astype(np.float64)
    layers = len(arrays) // 2
    for k in range(layers):
        h = h @ arrays[f"W{k}"].astype(np.float32).astype(np.float64) + arrays[f"b{k}"].astype(np.float32)
        if k < layers - 1:
            h = np.maximum(h, 0)
    return h


@pytest.mark.parametrize("widths", [[32, 4], [32, 64, 64, 3], [6, 1, 1]])
@pytest.mark.parametrize("compressed", [False, True])
def test_apply_matches_manual_forward(widths: list[int], compressed: bool) -> None:
    arrays = mlp(widths)
    dec = Decoder.from_npz_bytes(npz(compressed, **arrays), widths[0])
    assert dec.in_width == widths[0] and dec.out_width == widths[-1] and dec.n_layers == len(widths) - 1
    x = np.random.default_rng(1).uniform(-1, 1, (257, widths[0])).astype(np.float32)
    y = dec.apply(x)
    assert y.dtype == np.float32 and y.shape == (257, widths[-1]) and y.flags.c_contiguous
    np.testing.assert_allclose(y, manual_forward(arrays, x), rtol=1e-5, atol=1e-4)
    assert dec.apply(np.empty((0, widths[0]), np.float32)).shape == (0, widths[-1])


def test_round_trip() -> None:
    arrays = mlp([12, 8, 5])
    dec = Decoder.from_npz_bytes(npz(**arrays), 12)
    again = Decoder.from_npz_bytes(dec.to_npz_bytes(), 12)
    for k in range(2):
        np.testing.assert_array_equal(again.weights[k], arrays[f"W{k}"])
        np.testing.assert_array_equal(again.biases[k], arrays[f"b{k}"])
    with np.load(io.BytesIO(dec.to_npz_bytes()), allow_pickle=False) as loaded:
        assert sorted(loaded.files) == ["W0", "W1", "b0", "b1"]
        assert loaded["W0"].dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_other_float_dtypes_are_cast(dtype: type) -> None:
    arrays = mlp([4, 3], dtype=dtype)
    dec = Decoder.from_npz_bytes(npz(**arrays), 4)
    assert dec.weights[0].dtype == np.float32 and dec.biases[0].dtype == np.float32
    np.testing.assert_array_equal(dec.weights[0], arrays["W0"].astype(np.float32))


def test_apply_rejects_wrong_input_width() -> None:
    dec = Decoder.from_npz_bytes(npz(**mlp([4, 3])), 4)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        dec.apply(np.zeros((2, 5), np.float32))


def bad_cases() -> list[tuple[str, bytes, str]]:
    good = mlp([4, 6, 2])
    cases = [
        ("wrong in_width", npz(**mlp([5, 2])), "W0 must have 4 rows"),
        ("chain mismatch", npz(W0=good["W0"], b0=good["b0"], W1=np.zeros((5, 2), np.float32), b1=good["b1"]), "W1 has 5 rows"),
        ("bias shape", npz(W0=good["W0"], b0=np.zeros(5, np.float32)), "b0 must have shape"),
        ("bias 2-D", npz(W0=good["W0"], b0=np.zeros((1, 6), np.float32)), "b0 must have shape"),
        ("W 1-D", npz(W0=np.zeros(4, np.float32), b0=np.zeros(4, np.float32)), "2-D"),
        ("W empty", npz(W0=np.zeros((4, 0), np.float32), b0=np.zeros(0, np.float32)), "non-empty"),
        ("missing bias", npz(W0=good["W0"], b0=good["b0"], W1=good["W1"]), "missing b1"),
        ("missing W", npz(b0=good["b0"]), "no W0"),
        ("gap", npz(W0=good["W0"], b0=good["b0"], W2=good["W1"], b2=good["b1"]), "missing W1"),
        ("stray bias", npz(W0=good["W0"], b0=good["b0"], b1=good["b1"]), "b1 without W1"),
        ("extra key", npz(**good, scale=np.ones(1, np.float32)), "unexpected array 'scale'"),
        ("leading zero", npz(W0=good["W0"], b0=good["b0"], W01=good["W1"], b01=good["b1"]), "unexpected array 'W01'"),
        ("empty archive", npz(), "no W0"),
        ("ints", npz(W0=np.ones((4, 2), np.int32), b0=np.ones(2, np.int32)), "real floating-point"),
        ("complex", npz(W0=np.ones((4, 2), np.complex64), b0=np.ones(2, np.float32)), "real floating-point"),
        ("nan", npz(W0=np.full((4, 2), np.nan, np.float32), b0=np.ones(2, np.float32)), "finite"),
        ("single npy", _npy(np.ones((4, 2), np.float32)), "single array"),
        ("garbage", b"this is not a zip file", "not a valid .npz"),
        ("empty bytes", b"", "not a valid .npz"),
        ("truncated", npz(**good)[:100], "not a valid .npz|unreadable|cannot be read"),
    ]
    return cases


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


@pytest.mark.parametrize("name, data, message", bad_cases(), ids=[c[0] for c in bad_cases()])
def test_bad_decoders_are_rejected(name: str, data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Decoder.from_npz_bytes(data, 4)


def test_object_arrays_are_never_unpickled() -> None:
    UNPICKLED.clear()
    booby = np.empty((4, 2), dtype=object)
    booby[...] = Booby()
    data = npz(W0=booby, b0=np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="real floating-point"):
        Decoder.from_npz_bytes(data, 4)
    # a raw pickle, too
    import pickle

    with pytest.raises(ValueError):
        Decoder.from_npz_bytes(pickle.dumps(Booby()), 4)
    assert UNPICKLED == []


def test_member_without_npy_suffix_is_rejected() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("W0", _npy(np.ones((4, 2), np.float32)))
        zf.writestr("b0.npy", _npy(np.ones(2, np.float32)))
    with pytest.raises(ValueError, match="W0"):
        Decoder.from_npz_bytes(buf.getvalue(), 4)


def test_oversized_decoder_rejected_before_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decoder_module, "MAX_DECODER_VALUES", 100)
    data = npz(compressed=True, W0=np.zeros((4, 64), np.float32), b0=np.zeros(64, np.float32))
    with pytest.raises(ValueError, match="too large"):
        Decoder.from_npz_bytes(data, 4)
