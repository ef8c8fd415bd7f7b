"""The grid method: uniform quantisation with rate-distortion index choice."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caffecompress.engine import blob as B
from caffecompress.engine import uniform as U
from caffecompress.errors import NonFiniteWeightsError


def _w(n=20000, seed=0, scale=0.05):
    return (np.random.default_rng(seed).standard_t(4, n) * scale).astype(np.float32)


def test_nearest_levels_and_roundtrip():
    x = _w()
    step = 2.0 ** -9
    enc = B.encode_blob(x, step=step)
    assert enc.method == "grid" and "codebook" not in enc.parts
    y = B.decode_blob(enc.method, enc.meta, enc.parts)
    assert float.fromhex(enc.meta["step"]) == step
    # the nearest level: error at most half a step, and the level is q * step
    assert np.abs(x.astype(np.float64) - y).max() <= step / 2 * (1 + 1e-6)
    q = np.rint(y.astype(np.float64) / step)
    np.testing.assert_array_equal(y, (q * step).astype(np.float32))
    assert enc.meta["qmin"] == int(q.min()) and enc.meta["nsym"] == int(q.max() - q.min() + 1)
    # pieces agree with the whole
    z = np.concatenate(list(B.iter_decode_blob(enc.method, enc.meta, enc.parts, block=777)))
    np.testing.assert_array_equal(z, y)


def test_coded_size_near_the_index_entropy():
    x = _w(200000)
    enc = B.encode_blob(x, step=2.0 ** -9)
    q = np.rint(x.astype(np.float64) / 2.0 ** -9)
    _, c = np.unique(q, return_counts=True)
    ent = float(-(c * np.log2(c / c.sum())).sum()) / 8
    assert ent <= enc.nbytes <= 1.03 * ent + 600


def test_values_on_the_grid_come_back_exactly():
    # what the allocation hands the pipeline: values already on a grid
    step = 0.0123
    q = np.random.default_rng(3).integers(-300, 300, 5000)
    x = (q * step).astype(np.float32)
    enc = B.encode_blob(x, step=step)
    np.testing.assert_array_equal(B.decode_blob(enc.method, enc.meta, enc.parts), x)


def test_wide_range_makes_the_step_coarser():
    x = _w() * 1000
    s = U.grid_step_for(x, 2.0 ** -10)
    assert s > 2.0 ** -10
    assert np.abs(np.rint(x.astype(np.float64) / s)).max() <= U.MAX_LEVEL
    enc = B.encode_blob(x, step=2.0 ** -10)
    assert enc.meta["nsym"] <= 2 * U.MAX_LEVEL + 1
    assert float.fromhex(enc.meta["step"]) == s
    assert U.grid_step_for(np.zeros(10, np.float32), 0.1) == 1.0


def test_rdoq_trades_distortion_for_rate():
    x = _w(50000)
    step = 0.02  # a coarse grid, where the rate term matters
    sizes, errs = [], []
    for lam in (0.0, 0.1, 0.3, 1.0):
        q = U.quantize(x, step, lam=lam)
        q0 = U.quantize(x, step)
        # only moves toward zero, by at most one level
        d = np.abs(q0) - np.abs(q)
        assert ((d == 0) | (d == 1)).all() and (np.sign(q) * np.sign(q0) >= 0).all()
        _, c = np.unique(q, return_counts=True)
        sizes.append(float(-(c * np.log2(c / c.sum())).sum()))
        errs.append(float(((x - q * step) ** 2).sum()))
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0]
    assert errs == sorted(errs)


def test_floored_step():
    x = _w(scale=1e-4)
    s = U.floored_step(x, 2.0 ** -9.5, 24.0)
    assert s < 2.0 ** -9.5
    noise = s * s / 12
    assert 10 * math.log10(np.mean(x.astype(np.float64) ** 2) / noise) == pytest.approx(24.0)
    assert U.floored_step(_w(), 2.0 ** -9.5, 24.0) == 2.0 ** -9.5
    assert U.floored_step(np.zeros(8, np.float32), 0.5, 24.0) == 0.5


def test_bad_input():
    x = _w(1000)
    x[5] = np.inf
    with pytest.raises(NonFiniteWeightsError):
        B.encode_blob(x, step=0.01)
    with pytest.raises(ValueError):
        B.encode_blob(_w(100), step=0.01, bits=4)
    with pytest.raises(ValueError):
        U.grid_step_for(_w(100), 0.0)
    assert B.encode_blob(np.zeros(0, np.float32), step=0.1).method == "raw"


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3000), st.floats(1e-6, 10.0), st.floats(-30, 30), st.integers(0, 2 ** 31))
def test_roundtrip_property(n, scale, logstep, seed):
    x = (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)
    step = 2.0 ** (logstep / 2)
    enc = B.encode_blob(x, step=step)
    y = B.decode_blob(enc.method, enc.meta, enc.parts)
    if enc.method == "raw":
        np.testing.assert_array_equal(y, x)
        return
    s = float.fromhex(enc.meta["step"])
    assert s >= step
    # within half a step of the level, plus the level's rounding to float32 (half an ulp of y)
    err = np.abs(x.astype(np.float64) - y)
    assert (err <= s / 2 * (1 + 1e-6) + np.spacing(np.abs(y)).astype(np.float64) / 2 + 1e-38).all()
    np.testing.assert_array_equal(y, B.grid_codebook(enc.meta)[
        (np.rint(y.astype(np.float64) / s) - enc.meta["qmin"]).astype(np.int64)])


def test_huge_steps_never_round_past_float32():
    """A level rounded up beyond float32's range would restore as inf: the
    grid takes the level next to it toward zero (finite, within a step)."""
    from caffecompress.engine import blob as B

    f = np.finfo(np.float32).max
    rng = np.random.default_rng(0)
    x = np.concatenate([np.full(50, f), np.full(50, -f), rng.uniform(-f, f, 2000)]).astype(np.float32)
    for step in (float(f) / 2.6, float(f) / 1000.5, float(f) / 2047.0):
        enc = B.encode_blob(x, step=step)
        y = B.decode_blob(enc.method, enc.meta, enc.parts)
        assert np.isfinite(y).all()
        s = float.fromhex(enc.meta["step"])
        assert np.max(np.abs(y.astype(np.float64) - x)) <= s
