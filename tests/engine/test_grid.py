"""The integer grid: screening, canonicalisation, grid values, exact histogram."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from caffecompress.engine import grid
from caffecompress.errors import NonFiniteWeightsError

TINY = np.finfo(np.float32).tiny

floats32 = st.floats(width=32, allow_nan=False, allow_infinity=False, allow_subnormal=True)
blobs = hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=40), elements=floats32)


def canon64(x):
    a = np.asarray(x, np.float32).astype(np.float64).ravel()
    a[np.abs(a) < TINY] = 0.0
    return a


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_screen_counts_non_finite(bad):
    x = np.ones(100, np.float32)
    x[[3, 50, 99]] = bad
    with pytest.raises(NonFiniteWeightsError, match="3 of 100") as ei:
        grid.screen_finite(x)
    assert isinstance(ei.value, ValueError)
    with pytest.raises(NonFiniteWeightsError):
        grid.grid_histogram(x)


def test_screen_passes_finite_and_subnormal():
    grid.screen_finite(np.array([0.0, -0.0, 1e-45, -3.4e38], np.float32))


def test_canonicalize_subnormals_and_negative_zero():
    x = np.array([1e-45, -1e-40, -0.0, TINY, -TINY, 1.5], np.float32)
    c = grid.canonicalize(x)
    assert c.tobytes() == np.array([0, 0, 0, TINY, -TINY, 1.5], np.float32).tobytes()
    y = np.array([1.0, 2.0], np.float32)
    assert grid.canonicalize(y) is y  # nothing to change: no copy


@given(blobs)
def test_float_keys_order_and_inverse(x):
    keys = grid.float_keys(x)
    c = canon64(x)
    assert keys.dtype == np.int32
    # same order as the canonical values, equal keys iff equal values
    o = np.argsort(c, kind="stable")
    ks = keys[o]
    assert np.all(ks[1:] >= ks[:-1])
    assert np.array_equal(ks[1:] == ks[:-1], c[o][1:] == c[o][:-1])
    assert np.array_equal(grid.keys_to_float(keys).astype(np.float64), c)


@given(blobs, st.integers(2, 24))
def test_grid_index_is_rounded_quotient(x, bits):
    L = grid.grid_levels(bits)
    c = canon64(x)
    mx = grid.max_abs(x)
    assert mx == (np.abs(c).max() if c.size else 0.0)
    step = grid.grid_step(mx, bits)
    assert step == (mx / L if mx > 0 else 1.0)
    q = grid.grid_index(x, step, L)
    assert q.dtype == np.int32
    assert np.array_equal(q, np.clip(np.rint(c / step), -L, L).astype(np.int32))
    assert np.all(np.abs(q) <= L)
    if c.size and mx > 0:
        assert np.abs(q).max() == L  # the largest magnitude hits the end of the grid
    # zero-anchored and symmetric
    assert np.array_equal(grid.grid_index(-np.asarray(x), step, L), -q)
    assert np.all(q[c == 0] == 0)


@given(blobs, st.integers(8, 20), st.data())
def test_histogram_is_exact(x, bits, data):
    mask = data.draw(hnp.arrays(np.bool_, x.shape)) if data.draw(st.booleans()) else None
    h = grid.grid_histogram(x, bits=bits, mask=mask)
    kept = canon64(x) if mask is None else canon64(x)[mask.ravel()]
    assert h.n == kept.size and h.size == x.size
    assert h.max_abs == (np.abs(kept).max() if kept.size else 0.0)
    q = np.clip(np.rint(kept / h.step), -h.levels, h.levels).astype(np.int64)
    uv, uc = np.unique(q, return_counts=True)
    assert np.array_equal(h.values, uv) and np.array_equal(h.counts, uc)
    assert h.values.dtype == np.int64 and h.counts.dtype == np.int64
    W, S1, S2 = h.prefix_sums()
    assert W[-1] == h.n and S1[-1] == int(np.sum(q))
    assert S2[-1] == pytest.approx(float(np.sum(q.astype(np.float64) ** 2)), rel=1e-12)


def test_all_zero_and_empty_do_not_divide_by_zero():
    for x in (np.zeros(10, np.float32), np.zeros(0, np.float32), np.full(5, 1e-42, np.float32)):
        h = grid.grid_histogram(x)
        assert h.step == 1.0
        assert h.counts.sum() == x.size
        assert set(h.values.tolist()) <= {0}


def test_blocks_give_the_same_histogram(monkeypatch):
    rng = np.random.default_rng(0)
    x = (rng.standard_t(4, size=100_000) * 0.01).astype(np.float32)
    mask = rng.random(x.size) < 0.7
    ref = grid.grid_histogram(x, mask=mask)
    monkeypatch.setattr(grid, "BLOCK", 4096)
    got = grid.grid_histogram(x, mask=mask)
    assert got.step == ref.step
    assert np.array_equal(got.values, ref.values) and np.array_equal(got.counts, ref.counts)


@pytest.mark.parametrize("block,step", [(1 << 22, 777), (4096, 1000), (50_000, 3)])
@pytest.mark.parametrize("bits", [8, 18])
def test_histogram_steps_give_the_same_histogram(monkeypatch, block, step, bits):
    """Counted in steps (steps that start inside a packed mask's byte
    included), with a bool or a packed mask: one histogram."""
    from caffecompress.engine.packedmask import PackedMask

    rng = np.random.default_rng(bits)
    x = (rng.standard_t(4, size=100_000) * 0.01).astype(np.float32)
    mask = rng.random(x.size) < 0.7
    kept = canon64(x)[mask]
    ref = grid.grid_histogram(x, bits=bits, mask=mask)
    monkeypatch.setattr(grid, "BLOCK", block)
    monkeypatch.setattr(grid, "_INDEX_STEP", step)
    monkeypatch.setattr(grid, "_COUNT_STEP", step)
    for m in (mask, PackedMask(np.packbits(mask), mask.size, int(mask.sum()))):
        got = grid.grid_histogram(x, bits=bits, mask=m)
        assert got.step == ref.step and got.n == kept.size
        assert np.array_equal(got.values, ref.values) and np.array_equal(got.counts, ref.counts)
    q = np.clip(np.rint(kept / ref.step), -ref.levels, ref.levels).astype(np.int64)
    uv, uc = np.unique(q, return_counts=True)
    assert np.array_equal(ref.values, uv) and np.array_equal(ref.counts, uc)


def test_dense_and_sparse_histogram_paths_agree():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(3000).astype(np.float32)
    small = grid.grid_histogram(x, bits=16)  # 3000 * 4 < 65535 bins: sort path
    big = grid.grid_histogram(np.tile(x, 30), bits=16)  # bincount path
    assert np.array_equal(small.values, big.values)
    assert np.array_equal(small.counts * 30, big.counts)


def test_float64_input_is_rounded_to_float32():
    x = np.array([0.1, -0.25, 3.0], np.float64)
    h = grid.grid_histogram(x, bits=12)
    assert h.max_abs == 3.0
    assert np.array_equal(grid.float_keys(x), grid.float_keys(x.astype(np.float32)))


def test_bad_inputs():
    with pytest.raises(ValueError):
        grid.grid_levels(1)
    with pytest.raises(TypeError):
        grid.grid_histogram(np.arange(4))
    with pytest.raises(ValueError):
        grid.grid_histogram(np.ones(4, np.float32), mask=np.ones(3, bool))
    with pytest.raises(TypeError):
        grid.grid_histogram(np.ones(4, np.float32), mask=np.ones(4, np.int8))


@pytest.mark.skipif(not grid.NUMBA, reason="numba not installed")
@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    hnp.arrays(np.float32, st.integers(0, 3000),
               elements=st.one_of(st.floats(-1e3, 1e3, width=32), st.sampled_from([0.0, -0.0, 1e-40, -3e-39, 1.5, -1.5]))),
    st.sampled_from([2, 6, 12, 20, 24]),
    st.data(),
)
def test_compiled_small_histogram_is_the_numpy_one(x, bits, data):
    mask = data.draw(st.none() | hnp.arrays(np.bool_, x.size))
    h, q = grid.grid_histogram(x, bits=bits, mask=mask, keep_index=True)
    grid.NUMBA = False
    try:
        r, qr = grid.grid_histogram(x, bits=bits, mask=mask, keep_index=True)
    finally:
        grid.NUMBA = True
    assert (h.step, h.max_abs, h.n, h.size, h.levels) == (r.step, r.max_abs, r.n, r.size, r.levels)
    assert np.array_equal(h.values, r.values) and np.array_equal(h.counts, r.counts)
    assert h.values.dtype == r.values.dtype == np.int64 and h.counts.dtype == np.int64
    if x.size == 0:
        assert q is None and qr is None
    else:
        assert q.dtype == qr.dtype == np.int32 and np.array_equal(q, qr)


@pytest.mark.skipif(not grid.NUMBA, reason="numba not installed")
def test_compiled_small_histogram_refuses_non_finite():
    x = np.array([1.0, np.nan, np.inf, 2.0], np.float32)
    with pytest.raises(NonFiniteWeightsError, match="2 of 4"):
        grid.grid_histogram(x)


@pytest.mark.skipif(not grid.NUMBA, reason="numba not installed")
@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.sampled_from([2, 8, 13, 20, 24, 25, 30]), st.data())
def test_compiled_sorted_runs_are_numpy_unique(bits, data):
    L = grid.grid_levels(bits)
    x = data.draw(hnp.arrays(np.int32, st.integers(0, 2000),
                             elements=st.integers(-L, L) | st.sampled_from([-L, L, 0])))
    v, c = grid._sorted_runs_numba(x, L)
    uv, uc = np.unique(x, return_counts=True)
    assert v.dtype == c.dtype == np.int64
    assert np.array_equal(v, uv) and np.array_equal(c, uc)


@pytest.mark.skipif(not grid.NUMBA, reason="numba not installed")
@pytest.mark.parametrize("bits", [20, 24])
def test_compiled_sorted_runs_on_a_large_blob(bits):
    # above grid.SMALL: the block path, sorted by the compiled radix sort
    x = (np.random.default_rng(bits).standard_t(3, 300_000) * 0.02).astype(np.float32)
    h = grid.grid_histogram(x, bits=bits)
    grid.NUMBA = False
    try:
        r = grid.grid_histogram(x, bits=bits)
    finally:
        grid.NUMBA = True
    assert np.array_equal(h.values, r.values) and np.array_equal(h.counts, r.counts) and h.step == r.step


@pytest.mark.skipif(not grid.NUMBA, reason="numba not installed")
@pytest.mark.parametrize("bits", [12, 16, 22])
@pytest.mark.parametrize("masking", ["none", "bool", "packed"])
@pytest.mark.parametrize("block", [None, 250_001])
def test_compiled_dense_counting_is_the_numpy_one(bits, masking, block, monkeypatch):
    """Above grid.SMALL with few bins a weight: counted straight into the
    bins by the compiled twin, in blocks (one block starting inside a packed
    mask's byte): the NumPy path's histogram and grid index, subnormals,
    -0.0 and clamped values included."""
    from caffecompress.engine.packedmask import PackedMask

    count_dense = grid._count_dense
    rng = np.random.default_rng(bits)
    x = (rng.standard_t(3, 1_000_003) * 0.02).astype(np.float32)
    x[::997] = rng.choice(np.array([0.0, -0.0, 1e-40, -3e-39, 2.5, -2.5], np.float32), x[::997].size)
    mask = rng.random(x.size) < 0.6
    m = {"none": None, "bool": mask,
         "packed": PackedMask(np.packbits(mask), mask.size, int(mask.sum()))}[masking]
    if block:
        monkeypatch.setattr(grid, "BLOCK", block)
    seen = []
    monkeypatch.setattr(grid, "_count_dense", lambda *a: seen.append(1) or count_dense(*a))
    h, q = grid.grid_histogram(x, bits=bits, mask=m, keep_index=True)
    assert seen  # the compiled dense path ran
    monkeypatch.setattr(grid, "NUMBA", False)
    r, qr = grid.grid_histogram(x, bits=bits, mask=m, keep_index=True)
    assert (h.step, h.max_abs, h.n, h.size) == (r.step, r.max_abs, r.n, r.size)
    assert np.array_equal(h.values, r.values) and np.array_equal(h.counts, r.counts)
    assert h.values.dtype == h.counts.dtype == np.int64
    assert (q is None) == (qr is None) == bool(block)
    if q is not None:
        assert q.dtype == qr.dtype == np.int32 and np.array_equal(q, qr)


@pytest.mark.skipif(not grid.NUMBA, reason="numba not installed")
def test_compiled_dense_counting_keeps_no_index_above_a_count_step(monkeypatch):
    # 1.5M weights on a 22-bit grid: counted whole, but the int32 index
    # (6 MB here, 16 MB for VGG-16's fc8) is not held for the caller
    x = (np.random.default_rng(5).standard_t(3, 1_500_000) * 0.02).astype(np.float32)
    h, q = grid.grid_histogram(x, bits=22, keep_index=True)
    assert q is None
    monkeypatch.setattr(grid, "NUMBA", False)
    r, qr = grid.grid_histogram(x, bits=22, keep_index=True)
    assert qr is not None and qr.size == x.size
    assert np.array_equal(h.values, r.values) and np.array_equal(h.counts, r.counts)
