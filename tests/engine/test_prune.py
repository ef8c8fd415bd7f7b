"""Magnitude pruning: exact counts, the documented tie rule, thresholds, Han's quality."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from caffecompress.engine import grid
from caffecompress.engine.prune import magnitude_std, prune_mask
from caffecompress.errors import NonFiniteWeightsError

TINY = np.finfo(np.float32).tiny

floats32 = st.floats(width=32, allow_nan=False, allow_infinity=False, allow_subnormal=True)
# few distinct magnitudes on purpose: lots of ties (incl. +x / -x and subnormals)
tied = st.sampled_from([0.0, -0.0, 1e-45, -1e-42, 0.5, -0.5, 1.0, -1.0, 2.0, 3.0e38])
blobs = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=30),
    elements=st.one_of(floats32, tied),
)


def canon_abs(x):
    a = np.abs(np.asarray(x, np.float32).astype(np.float64).ravel())
    a[a < TINY] = 0.0
    return a


def oracle_sparsity(x, s):
    a = canon_abs(x)
    n_prune = min(a.size, math.floor(s * a.size + 0.5))
    order = np.argsort(a, kind="stable")  # by |x|, then by index
    keep = np.ones(a.size, bool)
    keep[order[:n_prune]] = False
    return keep.reshape(np.shape(x)), n_prune


@given(blobs, st.floats(0.0, 1.0))
def test_sparsity_exact_count_and_tie_rule(x, s):
    got = prune_mask(x, sparsity=s)
    want, n_prune = oracle_sparsity(x, s)
    assert got.dtype == np.bool_ and got.shape == x.shape
    assert int((~got).sum()) == n_prune
    assert np.array_equal(got, want)


def test_tie_rule_lower_index_pruned_first():
    x = np.array([0.5, -0.5, 0.25, 0.5, -0.25, 1.0], np.float32)
    # 3 pruned: both 0.25s (indices 2, 4), then the first of the 0.5 ties (index 0)
    assert prune_mask(x, sparsity=0.5).tolist() == [False, True, False, True, False, True]
    assert prune_mask(x, sparsity=4 / 6).tolist() == [False, False, False, True, False, True]


@given(blobs, st.floats(0.0, 3.5e38, allow_subnormal=True))
def test_threshold_keeps_strictly_larger(x, t):
    got = prune_mask(x, threshold=t)
    assert np.array_equal(got.ravel(), canon_abs(x) > t)


@given(blobs, st.floats(0.0, 4.0))
def test_quality_is_q_times_std(x, q):
    c = np.asarray(x, np.float32).astype(np.float64).ravel()
    c[np.abs(c) < TINY] = 0.0
    std = float(np.std(c)) if c.size else 0.0
    assert magnitude_std(x) == pytest.approx(std, rel=1e-9, abs=0.0)
    got = prune_mask(x, quality=q)
    want = canon_abs(x) > q * magnitude_std(x)
    assert np.array_equal(got.ravel(), want)


def test_quality_on_real_blob(zoo):
    cv2 = pytest.importorskip("cv2")
    net = cv2.dnn.readNetFromCaffe(
        str(zoo / "lenet-mnist" / "mnist_deploy.prototxt"),
        str(zoo / "lenet-mnist" / "lenet_iter_10000.caffemodel"),
    )
    w = net.getLayer("ip1").blobs[0]
    keep = prune_mask(w, quality=1.0)
    thr = float(np.std(w.astype(np.float64)))
    assert np.array_equal(keep, np.abs(w.astype(np.float64)) > thr)
    # a Gaussian-ish layer keeps roughly a third beyond one std
    assert 0.05 < keep.mean() < 0.6


def test_blocks_give_the_same_mask(monkeypatch):
    rng = np.random.default_rng(3)
    x = np.round(rng.standard_normal(50_000) * 8).astype(np.float32) / 8  # many ties
    ref = prune_mask(x, sparsity=0.37)
    monkeypatch.setattr(grid, "BLOCK", 1000)
    got = prune_mask(x, sparsity=0.37)
    assert np.array_equal(got, ref)
    assert int((~got).sum()) == math.floor(0.37 * x.size + 0.5)
    assert magnitude_std(x) == pytest.approx(float(np.std(x.astype(np.float64))), rel=1e-12)


def test_edges():
    x = np.array([1.0, -2.0, 0.0], np.float32)
    assert prune_mask(x, sparsity=0).all()
    assert not prune_mask(x, sparsity=1).any()
    assert prune_mask(np.zeros(0, np.float32), sparsity=0.5).shape == (0,)
    assert prune_mask(x, threshold=0).tolist() == [True, True, False]
    assert prune_mask(np.zeros((2, 3), np.float32), quality=1.0).shape == (2, 3)


@pytest.mark.parametrize(
    "kw", [{}, {"sparsity": 0.5, "threshold": 0.1}, {"sparsity": 1.5}, {"sparsity": -0.1},
           {"threshold": -1.0}, {"threshold": math.nan}, {"quality": -1.0}, {"quality": math.inf}]
)
def test_bad_criteria(kw):
    with pytest.raises(ValueError):
        prune_mask(np.ones(4, np.float32), **kw)


def test_non_finite_refused():
    with pytest.raises(NonFiniteWeightsError, match="1 of 3"):
        prune_mask(np.array([1.0, np.nan, 2.0], np.float32), sparsity=0.5)
