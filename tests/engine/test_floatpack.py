"""Packed float32 fields (the lossless ``fpack`` codec) and mantissa rounding."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caffecompress.engine import floatpack as F

_bits = st.lists(st.integers(0, 0xFFFFFFFF), min_size=0, max_size=300)


def _f32(words):
    return np.array(words, np.uint32).view(np.float32)


@settings(max_examples=200, deadline=None)
@given(_bits)
def test_pack_is_exact_for_any_float32_bits(words):
    # NaN payloads, infinities, signed zeros and subnormals included
    x = _f32(words)
    meta, data = F.pack(x)
    assert data.dtype == np.uint8 and data.size == F.pack_nbytes(x)
    y = F.unpack(meta, data, x.size)
    assert y.dtype == np.float32 and np.array_equal(y.view(np.uint32), x.view(np.uint32))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-2.0 ** 100, 2.0 ** 100, width=32, allow_nan=False), min_size=1, max_size=200),
       st.integers(0, 23))
def test_rounding_keeps_a_relative_error_under_half_a_unit_and_is_idempotent(vals, bits):
    x = np.array(vals, np.float32)
    r = F.round_mantissa(x, bits)
    assert np.array_equal(F.round_mantissa(r, bits).view(np.uint32), r.view(np.uint32))
    nz = (x != 0) & (np.abs(x) >= np.finfo(np.float32).tiny)  # normal numbers: a relative bound
    rel = np.abs(r[nz].astype(np.float64) - x[nz]) / np.abs(x[nz].astype(np.float64))
    assert (rel <= 2.0 ** -(bits + 1) * (1 + 1e-12)).all()
    # the packed stream of a rounded array spends at most ``bits`` a mantissa
    meta, data = F.pack(r)
    assert meta["mbits"] <= bits
    assert np.array_equal(F.unpack(meta, data, r.size).view(np.uint32), r.view(np.uint32))


def test_rounding_is_half_to_even_and_leaves_nan_inf_and_overflow_alone():
    one = np.float32(1.0)
    ulp12 = np.float32(2.0 ** -12)
    x = np.array([one + ulp12 / 2, one + ulp12 * 1.5, np.nan, np.inf, -np.inf, np.float32(3.4028235e38), -0.0],
                 np.float32)
    r = F.round_mantissa(x, 12)
    assert r[0] == one and r[1] == one + 2 * ulp12  # ties to the even neighbour
    assert np.isnan(r[2]) and r[3] == np.inf and r[4] == -np.inf
    assert r[5] == x[5]  # rounding up would overflow to infinity: kept
    assert r[6] == 0 and np.signbit(r[6])
    assert np.array_equal(F.round_mantissa(x, 23).view(np.uint32), x.view(np.uint32))
    with pytest.raises(ValueError):
        F.round_mantissa(x, 24)


def test_rounded_blobs_pack_to_about_half_of_lzma():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(500) * 0.1).astype(np.float32)
    import lzma

    raw = lzma.compress(x.tobytes(), format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}])
    assert F.pack_nbytes(x) < len(raw)  # exact floats: the fields beat LZMA on small blobs
    assert F.pack_nbytes(F.round_mantissa(x, 12)) < 0.6 * len(raw)


@pytest.mark.parametrize("meta, nbytes, n, what", [
    ({"ebase": 0, "ebits": 9, "mbits": 0}, 2, 1, "ebits"),
    ({"ebase": 0, "ebits": 1, "mbits": 24}, 4, 1, "mbits"),
    ({"ebase": 256, "ebits": 0, "mbits": 0}, 1, 1, "ebase"),
    ({"ebase": 0, "ebits": True, "mbits": 0}, 1, 1, "ebits"),
    ({"ebase": 0, "mbits": 0}, 1, 1, "ebits"),
    ({"ebase": 0, "ebits": 0, "mbits": 7}, 2, 1, "bytes"),
    ({"ebase": 255, "ebits": 1, "mbits": 0}, 1, 4, "255"),
    ({"ebase": 0, "ebits": 0, "mbits": 0}, 0, F.FPACK_MAX + 1, "values"),
])
def test_forged_streams_are_value_errors(meta, nbytes, n, what):
    with pytest.raises(ValueError, match=what):
        F.unpack(meta, np.full(nbytes, 0xFF, np.uint8), n)
