"""Codebook levels as exp-Golomb-coded gaps between their float keys: round trips, sizes, forged streams."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caffecompress.engine import blob as B
from caffecompress.engine import floatpack as F
from caffecompress.engine import levelpack as LP
from caffecompress.errors import CorruptDataError


def _levels(rng, n, scale=0.05, mbits=18):
    return np.sort(F.round_mantissa(rng.laplace(0, scale, n).astype(np.float32), mbits))


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 4096), scale=st.floats(1e-30, 1e30), mbits=st.integers(0, 23),
       seed=st.integers(0, 2**32 - 1))
def test_sorted_levels_round_trip_bit_for_bit(n, scale, mbits, seed):
    b = _levels(np.random.default_rng(seed), n, scale, mbits)
    b[b == 0] = 0.0  # a negative zero is not taken (its key is zero's)
    got = LP.pack(b)
    assert got is not None
    meta, stream = got
    assert meta["lmbits"] <= mbits and stream.size == LP.pack_nbytes(b)
    assert np.array_equal(LP.unpack(meta, stream, n).view(np.uint32), b.view(np.uint32))


def test_about_two_thirds_of_the_float_fields_on_rounded_k_means_like_levels():
    # 256 levels of a Laplacian blob at 8 + 10 mantissa bits (the fidelity pass's rounding)
    b = _levels(np.random.default_rng(1), 256)
    assert LP.pack_nbytes(b) < 0.7 * F.pack_nbytes(b), (LP.pack_nbytes(b), F.pack_nbytes(b))  # measured: 0.62


@pytest.mark.parametrize("book", [
    np.array([0.5, 0.25], np.float32),  # not sorted
    np.array([np.nan, 1.0], np.float32),
    np.array([1.0, np.inf], np.float32),
    np.array([-0.0, 1.0], np.float32),
])
def test_levels_it_cannot_hold_are_not_packed(book):
    assert LP.pack(book) is None and LP.pack_nbytes(book) is None


def test_the_blob_codebook_takes_the_smaller_form():
    r = _levels(np.random.default_rng(2), 200)
    meta, parts = {}, {}
    B._put_codebook(r, meta, parts)
    assert "cb_lk" in meta and parts["codebook"].dtype == np.uint8
    assert B.codebook_nbytes(r) == parts["codebook"].size
    assert np.array_equal(B.codebook_of(meta, parts), r)
    # unsorted levels keep the float fields
    odd = np.array([2.5, -1.0e-3, 3.0e-7], np.float32)
    meta2, parts2 = {}, {}
    B._put_codebook(odd, meta2, parts2)
    assert "cb_lk" not in meta2 and np.array_equal(B.codebook_of(meta2, parts2), odd)


def _packed():
    r = _levels(np.random.default_rng(3), 100)
    meta, parts = {}, {}
    B._put_codebook(r, meta, parts)
    assert "cb_lk" in meta
    return r, meta, parts


@pytest.mark.parametrize("forge", [
    {"cb_lmbits": 24}, {"cb_lmbits": True}, {"cb_lmbits": 1.0}, {"cb_lbase": 1 << 31}, {"cb_lk": 31},
    {"cb_lk": -1}, {"cb_lk": None}, {"cb_n": 101}, {"cb_n": 0}, {"cb_ebits": 3},
])
def test_forged_level_meta_is_refused(forge):
    r, meta, parts = _packed()
    try:
        got = B.codebook_of(dict(meta, **forge), parts)
    except CorruptDataError:
        return
    raise AssertionError(f"{forge} decoded to {got.size} levels")


@pytest.mark.parametrize("cut", ["short", "long", "zeros", "ones"])
def test_forged_level_streams_are_refused(cut):
    r, meta, parts = _packed()
    s = parts["codebook"]
    s = {"short": s[:-2], "long": np.concatenate([s, np.zeros(1, np.uint8)]),
         "zeros": np.zeros(s.size, np.uint8), "ones": np.full(s.size, 255, np.uint8)}[cut]
    with pytest.raises(CorruptDataError):
        B.codebook_of(meta, {"codebook": s})
