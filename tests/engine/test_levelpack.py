"""Codebook levels as Rice-coded gaps on a power-of-two grid: rounding, round trips, forged streams."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caffecompress.engine import blob as B
from caffecompress.engine import floatpack as F
from caffecompress.engine import levelpack as LP
from caffecompress.errors import CorruptDataError


def _levels(rng, n, scale=0.05):
    return np.sort(rng.laplace(0, scale, n)).astype(np.float32)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 4096), scale=st.floats(1e-6, 10.0), seed=st.integers(0, 2**32 - 1))
def test_rounded_levels_round_trip_within_the_bound(n, scale, seed):
    b = _levels(np.random.default_rng(seed), n, scale)
    if b[-1] <= b[0]:
        return
    r = LP.round_levels(b)
    assert r is not None and r.dtype == np.float32 and np.all(np.diff(r) >= 0)
    spacing = (float(b[-1]) - float(b[0])) / (n - 1)
    assert np.abs(r.astype(np.float64) - b).max() <= spacing * 2.0 ** -(LP.EXTRA + 1) * (1 + 1e-9)
    meta, stream = LP.pack(r)
    assert np.array_equal(LP.unpack(meta, stream, n), r)
    assert stream.size == LP.pack_nbytes(r)


def test_about_half_the_float_fields_on_k_means_like_levels():
    # 256 levels of a Laplacian blob: float fields at 8 + 10 mantissa bits against the gaps
    b = _levels(np.random.default_rng(1), 256)
    r = LP.round_levels(b)
    fields = F.pack_nbytes(F.round_mantissa(b, 18))
    assert LP.pack_nbytes(r) < 0.6 * fields, (LP.pack_nbytes(r), fields)  # measured: 376 against 736


@pytest.mark.parametrize("book", [
    np.array([0.5, 0.25], np.float32),  # not sorted
    np.array([np.nan, 1.0], np.float32),
    np.array([1.0, np.inf], np.float32),
])
def test_levels_off_any_grid_are_not_packed(book):
    assert LP.pack(book) is None and LP.pack_nbytes(book) is None and LP.round_levels(book) is None


def test_any_sorted_float32_levels_pack_exactly_when_they_fit():
    # unrounded levels: the grid is their finest bit; it packs when 24 bits hold them
    b = np.array([-3.0, -0.5, 0.0, 0.0, 0.125, 7.0], np.float32)
    meta, stream = LP.pack(b)
    assert meta["lexp"] == -3 and np.array_equal(LP.unpack(meta, stream, b.size), b)
    wide = np.array([1e-7, 1.0], np.float32)  # 2**-23-ish grid beside 1: over 24 bits
    assert LP.pack(wide) is None


def test_the_blob_codebook_takes_the_smaller_form():
    r = LP.round_levels(_levels(np.random.default_rng(2), 200))
    meta, parts = {}, {}
    B._put_codebook(r, meta, parts)
    assert "cb_lexp" in meta and parts["codebook"].dtype == np.uint8
    assert B.codebook_nbytes(r) == parts["codebook"].size
    assert np.array_equal(B.codebook_of(meta, parts), r)
    # levels the grid does not suit (a few far apart) keep the float fields
    odd = np.array([-1.0e-3, 3.0e-7, 2.5], np.float32)
    meta2, parts2 = {}, {}
    B._put_codebook(odd, meta2, parts2)
    assert "cb_lexp" not in meta2 and np.array_equal(B.codebook_of(meta2, parts2), odd)


def _packed():
    r = LP.round_levels(_levels(np.random.default_rng(3), 100))
    meta, parts = {}, {}
    B._put_codebook(r, meta, parts)
    return r, meta, parts


@pytest.mark.parametrize("forge", [
    {"cb_lexp": 200}, {"cb_lexp": True}, {"cb_lexp": 1.0}, {"cb_lbase": 1 << 24}, {"cb_lrice": 32},
    {"cb_lrice": -1}, {"cb_lrice": None}, {"cb_n": 101}, {"cb_n": 0}, {"cb_ebits": 3},
])
def test_forged_level_meta_is_refused(forge):
    _, meta, parts = _packed()
    with pytest.raises(CorruptDataError):
        B.codebook_of(dict(meta, **forge), parts)


@pytest.mark.parametrize("cut", ["short", "long", "trailing_one", "huge"])
def test_forged_level_streams_are_refused(cut):
    r, meta, parts = _packed()
    s = parts["codebook"]
    if cut == "short":
        s = s[:-2]
    elif cut == "long":
        s = np.concatenate([s, np.zeros(1, np.uint8)])
    elif cut == "trailing_one":
        s = s.copy()
        s[-1] |= 1
    else:
        s = np.zeros(10 * s.size, np.uint8)
    try:
        got = B.codebook_of(meta, {"codebook": s})
    except CorruptDataError:
        return
    # the only other outcome: a stream that still holds exactly 100 levels
    assert got.size == r.size and cut == "trailing_one"
