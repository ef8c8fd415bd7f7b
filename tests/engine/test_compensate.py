"""The compiled twins and fast paths of engine.compensate give the reference results."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caffecompress.engine import compensate as C


def _no_numba(monkeypatch):
    monkeypatch.setattr(C._twins, "numba", lambda: None)
    monkeypatch.setattr(C._twins, "cache", {})


def _queries(rng, cb, n):
    """Random values around the codebook, every midpoint and its float neighbours, and non-finite ones."""
    mid = (cb[1:] + cb[:-1]) * 0.5
    x = np.concatenate([rng.standard_normal(n) * (cb.std() + 1e-30) * 1.5 + cb.mean(), mid,
                        np.nextafter(mid, np.inf), np.nextafter(mid, -np.inf), cb,
                        [np.nan, np.inf, -np.inf, 0.0, -0.0, cb[0] - 1.0, cb[-1] + 1.0]])
    rng.shuffle(x)
    return x, mid


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(k=st.integers(2, 5000), kind=st.sampled_from(["normal", "grid", "clustered"]),
       scale=st.sampled_from([1e-4, 0.02, 3.0]), seed=st.integers(0, 2**31 - 1))
def test_nearest_labels_is_the_midpoint_search_on_both_twins(k, kind, scale, seed):
    rng = np.random.default_rng(seed)
    if kind == "grid":  # the uniform grids' float32 levels
        cb = (np.arange(-(k // 2), k - k // 2) * scale).astype(np.float32).astype(np.float64)
    elif kind == "clustered":  # most levels packed near zero, a few far out (buckets hold many)
        cb = np.unique(np.concatenate([rng.standard_normal(k) * scale * 1e-3, rng.standard_normal(4) * scale]))
    else:
        cb = np.unique(rng.standard_normal(k) * scale)
    x, mid = _queries(rng, cb, 40_000)  # over _LUT_MIN: the table path
    assert x.size >= C._LUT_MIN
    want = np.searchsorted(mid, x, side="left").astype(np.int32)
    got = C.nearest_labels(x.reshape(-1, 1), cb)
    assert got.shape == (x.size, 1) and got.dtype == np.int32
    np.testing.assert_array_equal(got[:, 0], want)
    with pytest.MonkeyPatch.context() as mp:
        _no_numba(mp)
        np.testing.assert_array_equal(C.nearest_labels(x, cb), want)


@pytest.mark.parametrize("cb", [
    np.concatenate([[-np.inf], np.linspace(-1, 1, 40), [np.inf]]),  # infinite levels
    np.concatenate([[-1e308], np.linspace(-1, 1, 40), [1e308]]),  # a span that overflows
    np.arange(40) * 5e-324,  # subnormal levels: buckets too narrow for a finite scale
])
def test_nearest_labels_without_a_finite_table_is_the_search(cb, recwarn):
    """Codebooks no finite bucket table fits take the plain search, without warnings."""
    mid = (cb[1:] + cb[:-1]) * 0.5
    x = np.concatenate([_queries(np.random.default_rng(4), np.linspace(-1, 1, 40), 40_000)[0], mid, cb])
    np.testing.assert_array_equal(C.nearest_labels(x, cb), np.searchsorted(mid, x, side="left"))
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_gptq_block_twin_with_one_level(monkeypatch):
    pytest.importorskip("numba")
    rng = np.random.default_rng(2)
    X = rng.standard_normal((60, 12))
    w = rng.standard_normal((5, 12))
    w[0, 3] = np.nan
    lab = C.gptq_round(w, X.T @ X, np.array([0.25]))
    assert lab.shape == w.shape and not lab.any()


def test_nearest_labels_table_walk_runs_as_python():
    """The twin's source (what numba compiles) walks the table as the search does."""
    rng = np.random.default_rng(5)
    cb = np.sort(rng.standard_normal(40))
    x, mid = _queries(rng, cb, 300)
    lo = float(mid[0])
    nb = C._LUT_PER_LEVEL * (mid.size + 1)
    scale = nb / (float(mid[-1]) - lo)
    lut = np.concatenate(([0], np.searchsorted(mid, lo + np.arange(nb + 1) / scale), [mid.size])).astype(np.int32)
    out = np.empty(x.size, np.int32)
    C._py_nearest(x, mid, lut, lo, scale, nb, out)
    np.testing.assert_array_equal(out, np.searchsorted(mid, x, side="left"))


@pytest.mark.parametrize("shape,k", [((1, 64, 300), 16), ((2, 16, 27), 4), ((4, 8, 9), 2),
                                     ((1, 3, 200), 512), ((1, 40, 129), 33)])
def test_gptq_block_twin_gives_the_numpy_labels(shape, k, monkeypatch):
    pytest.importorskip("numba")
    rng = np.random.default_rng(sum(shape) + k)
    G, rows, cols = shape
    H = np.stack([(lambda X: X.T @ X)(rng.standard_normal((cols * 3, cols))) for _ in range(G)])
    w = rng.standard_normal(shape) * 0.05
    cb = np.sort(rng.standard_normal(k) * 0.05)
    f = C.hessian_factor(H)
    compiled = C.gptq_round(w, f, cb, block=64)
    _no_numba(monkeypatch)
    np.testing.assert_array_equal(compiled, C.gptq_round(w, f, cb, block=64))


def test_gptq_block_twin_source_runs_as_python():
    rng = np.random.default_rng(9)
    W1 = rng.standard_normal((1, 5, 7))
    X = rng.standard_normal((30, 7))
    U1 = C.hessian_factor(X.T @ X).U
    cb = np.array([-1.0, -0.2, 0.3, 1.5])
    a, b = W1.copy(), W1.copy()
    ea, eb = np.empty_like(a), np.empty_like(b)
    la = np.empty(a.shape, np.int32)
    C._py_gptq_block(a, ea, U1, cb, (cb[1:] + cb[:-1]) * 0.5, la)
    # the NumPy loop of gptq_round, written out
    for j in range(7):
        lab = C.nearest_labels(b[:, :, j], cb)
        np.testing.assert_array_equal(la[:, :, j], lab)
        err = (b[:, :, j] - cb[lab]) / U1[:, j, j][:, None]
        b[:, :, j:] -= err[:, :, None] * U1[:, j, j:][:, None, :]
        eb[:, :, j] = err
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ea, eb)
