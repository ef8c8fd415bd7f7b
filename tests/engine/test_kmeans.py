"""Weight sharing: properties, exact small blobs, and oracles.

Oracles: a plain reference Lloyd over the grid values (must reach the same
fixed point), Lloyd on the original floats (SSE within 0.1 %), the ckmeans
package (exact Ckmeans.1d.dp; ``optimal`` within 1.001x) and brute force
over all partitions of small histograms. Real blobs come from the zoo,
read with OpenCV 4.x.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from caffecompress.engine import grid, lloyd, optimal, refine
from caffecompress.engine.kmeans import INITS, default_bits, share_weights
from caffecompress.engine.lloyd import lloyd_histogram
from caffecompress.errors import NonFiniteWeightsError
from fakedevice import NumpyAsDevice

TINY = np.finfo(np.float32).tiny

floats32 = st.floats(-1e6, 1e6, width=32, allow_subnormal=True)
special = st.sampled_from([0.0, -0.0, 1e-45, -2e-40, 1.0, -1.0, 0.25])
blobs = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=25),
    elements=st.one_of(floats32, special),
)
ks = st.sampled_from([2, 3, 4, 7, 16, 32, 255, 256, 257, 4096])


def canon(x):
    return grid.canonicalize(np.asarray(x, np.float32))


# ---------------------------------------------------------------- zoo blobs

ZOO_LAYERS = {
    ("lenet-mnist", "mnist_deploy.prototxt", "lenet_iter_10000.caffemodel"): ["conv1", "conv2", "ip1", "ip2"],
    ("mtcnn", "det3.prototxt", "det3.caffemodel"): ["conv2", "conv4", "conv5", "conv6-3"],
    ("yufacedetectnet", "yufacedetectnet-open-v1.prototxt", "yufacedetectnet-open-v1.caffemodel"): [
        "conv1_1", "conv4_3", "conv6_3"
    ],
    ("ultraface", "slim-320.prototxt", "slim-320.caffemodel"): [None],  # None: the net's largest blob
}


@functools.lru_cache(maxsize=None)
def _net_blobs(zoo, folder, proto, model):
    cv2 = pytest.importorskip("cv2")
    net = cv2.dnn.readNetFromCaffe(str(zoo / folder / proto), str(zoo / folder / model))
    out = {}
    for name in net.getLayerNames():
        layer = net.getLayer(name)
        if layer.type in ("Convolution", "InnerProduct") and layer.blobs:
            out[name] = np.ascontiguousarray(layer.blobs[0], np.float32)
    return out


def zoo_blobs(zoo, max_size=None):
    """(name, weights) of selected real conv/fc weight blobs."""
    picked = []
    for (folder, proto, model), names in ZOO_LAYERS.items():
        got = _net_blobs(zoo, folder, proto, model)
        for name in names:
            if name is None:  # take the largest conv of that net
                name = max(got, key=lambda n: got[n].size)
            w = got[name]
            if max_size is None or w.size <= max_size:
                picked.append((f"{folder}/{name}", w))
    assert picked
    return picked


# ---------------------------------------------------------------- references


def _split_largest_gain(vals_all, assign, means, occ, missing=0):
    """Drop empty clusters; split the clusters whose best two-way split (of
    their sorted distinct values) lowers the SSE most (lowest split on ties,
    lower cluster on ties), gain ``(nL * nR / n) * (mean_R - mean_L)**2``;
    sums are exact for integer values."""
    e = int((~occ).sum()) + max(0, int(missing))
    best = []
    for j in np.flatnonzero(occ):
        u, cnt = np.unique(vals_all[assign == j], return_counts=True)
        if u.size < 2:
            continue
        cw = np.cumsum(cnt)
        cs = np.cumsum(cnt * u)
        nL, sL = cw[:-1], cs[:-1]
        nR, sR = cw[-1] - nL, cs[-1] - sL
        mL = sL.astype(np.float64) / nL.astype(np.float64)
        mR = sR.astype(np.float64) / nR.astype(np.float64)
        d = mR - mL
        g = (nL.astype(np.float64) * nR.astype(np.float64) / (nL + nR).astype(np.float64)) * d * d
        i = int(np.argmax(g))  # first maximum: lowest split
        if g[i] > 0:
            best.append((-float(g[i]), int(j), (mL[i], mR[i])))
    best.sort(key=lambda t: (t[0], t[1]))
    keep = occ.copy()
    extra = []
    for _, j, (ml, mr) in best[:e]:
        keep[j] = False
        extra += [ml, mr]
    return np.sort(np.concatenate([means[keep], np.array(extra, np.float64)]))


def reference_grid_lloyd(q, k):
    """Plain Lloyd on the integer grid values ``q``: argmin assignment (first
    centroid on ties), integer-sum means, empty clusters stay put; at a fixed
    point with ``e`` empty clusters, they are dropped and the ``e`` clusters
    whose best two-way split gains most are split (and, while fewer than
    ``k`` clusters remain because too few cells could split, as many more as
    are missing); until a fixed point without empty or missing clusters, or
    one where nothing is left to split."""
    q = np.asarray(q, np.int64)
    lo, hi = float(q.min()), float(q.max())
    target = k
    c = lo + (hi - lo) * (np.arange(k, dtype=np.float64) / (k - 1))
    assign = None
    while True:
        new = np.argmin(np.abs(q[:, None] - c[None, :]), axis=1)
        fixed = assign is not None and np.array_equal(new, assign)
        k = c.size
        full = np.bincount(new, minlength=k).all()
        if fixed and full and k >= target:
            break
        assign = new
        cnt = np.bincount(assign, minlength=k)
        sm = np.array([int(q[assign == j].sum()) for j in range(k)], np.int64)
        occ = cnt > 0
        nc = c.copy()
        nc[occ] = sm[occ] / cnt[occ]
        if fixed:
            nc = _split_largest_gain(q, assign, nc, occ, missing=target - k)
            if full and nc.size == c.size:
                break  # missing clusters, but no cell can be split
        c = nc
    used = np.bincount(assign, minlength=c.size) > 0
    remap = np.cumsum(used) - 1
    return c[used], remap[assign]


def reference_float_lloyd(x, k, init=None):
    """Lloyd on the original floats from the linear init (or ``init``), to its
    fixed point, with the same empty-cluster rule (split the cells that gain
    most, at fixed points)."""
    xs = np.sort(canon(x).astype(np.float64).ravel())
    if init is None:
        c = xs[0] + (xs[-1] - xs[0]) * (np.arange(k) / (k - 1))
    else:
        c = np.asarray(init, np.float64)
        k = c.size
    P = np.concatenate([[0.0], np.cumsum(xs)])
    cuts = None
    for _ in range(100_000):
        new = np.concatenate([[0], np.searchsorted(xs, (c[:-1] + c[1:]) / 2, side="right"), [xs.size]])
        fixed = cuts is not None and np.array_equal(new, cuts)
        if fixed and np.all(np.diff(cuts) > 0):
            break
        cuts = new
        cnt = np.diff(cuts)
        occ = cnt > 0
        nc = c.copy()
        nc[occ] = (P[cuts[1:]] - P[cuts[:-1]])[occ] / cnt[occ]
        if fixed:
            nc = _split_largest_gain(xs, np.repeat(np.arange(k), cnt), nc, occ)
            k = nc.size
        c = nc
    lab = np.repeat(np.arange(k), np.diff(cuts))
    return float(np.sum((xs - c[lab]) ** 2))


def true_sse(x, r, mask=None):
    d = canon(x).astype(np.float64).ravel() - r.restore().astype(np.float64).ravel()
    if mask is not None:
        d = d[np.asarray(mask).ravel()]
    return float(np.dot(d, d))


# ---------------------------------------------------------------- properties


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blobs, ks, st.sampled_from(INITS), st.booleans(), st.data())
def test_properties(x, k, init, keep_zero, data):
    mask = data.draw(hnp.arrays(np.bool_, x.shape)) if data.draw(st.booleans()) else None
    r = share_weights(x, k=k, init=init, keep_zero=keep_zero, mask=mask, seed=7)
    cb = r.codebook
    assert cb.dtype == np.float32 and cb.ndim == 1
    assert 1 <= r.k == cb.size <= k
    assert np.all(cb[1:] > cb[:-1])  # strictly ascending
    assert r.labels.shape == x.shape
    assert r.labels.dtype == (np.uint8 if k <= 256 else np.uint16)
    assert r.labels.size == 0 or int(r.labels.max()) < r.k
    assert r.converged
    c = canon(x)
    kept = np.ones(x.shape, bool) if mask is None else mask
    vals = set(c[kept].astype(np.float64).tolist()) | ({0.0} if keep_zero else set())
    assert r.exact == (len(vals) <= k or not kept.any())
    rec = r.restore()
    if r.exact:
        assert r.sse == 0.0 and r.sqnr_db == np.inf
        assert rec[kept].tobytes() == c[kept].tobytes()
    if keep_zero:
        assert 0.0 in cb.tolist()
    if mask is not None and (~kept).any():
        # masked positions carry one label: zero's (keep_zero) or the nearest to zero
        lab = np.unique(r.labels[~kept])
        assert lab.size == 1
        z = cb[lab[0]]
        assert np.abs(cb).min() == abs(z)
        if keep_zero:
            assert z == 0.0
    # every kept element sits at (one grid step from) its nearest shared value
    d = np.abs(c[kept].astype(np.float64)[:, None] - cb.astype(np.float64)[None, :])
    if d.size:
        mine = np.abs(c[kept].astype(np.float64) - rec[kept].astype(np.float64))
        assert np.all(mine <= d.min(axis=1) + r.step * (1 + 1e-9))
    # the host SSE is the histogram's: within the grid rounding of the true one
    ts = true_sse(x, r, kept)
    n = int(kept.sum())
    assert abs(np.sqrt(r.sse) - np.sqrt(ts)) <= np.sqrt(n) * r.step / 2 * (1 + 1e-9) + 1e-30
    # deterministic
    r2 = share_weights(x, k=k, init=init, keep_zero=keep_zero, mask=mask, seed=7)
    assert r2.codebook.tobytes() == cb.tobytes() and r2.labels.tobytes() == r.labels.tobytes()


def _numpy_only(fn):
    """Run ``fn()`` with every compiled twin of the clustering path off."""
    from caffecompress.engine import kmeans

    mods = (grid, lloyd, kmeans)
    saved = [m.NUMBA for m in mods]
    try:
        for m in mods:
            m.NUMBA = False
        return fn()
    finally:
        for m, v in zip(mods, saved):
            m.NUMBA = v


@pytest.mark.skipif(not lloyd.NUMBA, reason="numba not installed")
@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(blobs, ks, st.sampled_from(INITS), st.booleans(), st.data())
def test_compiled_twins_give_the_numpy_result(x, k, init, keep_zero, data):
    """Histogram, Lloyd, SSE and label twins together: the same codebook,
    labels, SSE and SQNR bits, iterations and grid as the NumPy-only path."""
    mask = data.draw(hnp.arrays(np.bool_, x.shape)) if data.draw(st.booleans()) else None
    kw = dict(k=k, init=init, keep_zero=keep_zero, mask=mask, seed=3)
    a = share_weights(x, **kw)
    b = _numpy_only(lambda: share_weights(x, **kw))
    assert a.codebook.tobytes() == b.codebook.tobytes()
    assert a.labels.dtype == b.labels.dtype and a.labels.tobytes() == b.labels.tobytes()
    assert np.float64(a.sse).tobytes() == np.float64(b.sse).tobytes()
    assert np.float64(a.sqnr_db).tobytes() == np.float64(b.sqnr_db).tobytes()
    assert (a.k, a.exact, a.iterations, a.converged, a.bits, a.step) == (b.k, b.exact, b.iterations, b.converged, b.bits, b.step)


@pytest.mark.skipif(not lloyd.NUMBA, reason="numba not installed")
@pytest.mark.parametrize("k", [16, 256])
def test_compiled_twins_give_the_numpy_result_on_a_large_masked_blob(k, monkeypatch):
    # above grid.SMALL and over several blocks: block-wise histogram, the
    # compiled radix sort, and labels block by block
    monkeypatch.setattr(grid, "BLOCK", 1 << 16)
    rng = np.random.default_rng(k)
    x = (rng.standard_t(3, 300_000) * 0.02).astype(np.float32)
    mask = np.abs(x) > 0.01
    a = share_weights(x, k=k, mask=mask)
    b = _numpy_only(lambda: share_weights(x, k=k, mask=mask))
    assert a.codebook.tobytes() == b.codebook.tobytes() and a.labels.tobytes() == b.labels.tobytes()
    assert np.float64(a.sse).tobytes() == np.float64(b.sse).tobytes() and a.iterations == b.iterations


@pytest.mark.skipif(not lloyd.NUMBA, reason="numba not installed")
def test_compiled_twins_give_the_numpy_result_on_zoo(zoo):
    for name, w in zoo_blobs(zoo, max_size=70_000)[::3]:
        for k in (16, 256):
            a = share_weights(w, k=k)
            b = _numpy_only(lambda: share_weights(w, k=k))
            assert a.codebook.tobytes() == b.codebook.tobytes() and a.labels.tobytes() == b.labels.tobytes(), (name, k)
            assert np.float64(a.sse).tobytes() == np.float64(b.sse).tobytes() and a.iterations == b.iterations, (name, k)


@pytest.mark.parametrize("k", [2, 16, 256, 4096])
@pytest.mark.parametrize("init", INITS)
def test_special_blobs(k, init):
    empty = share_weights(np.zeros((0, 3), np.float32), k=k, init=init)
    assert empty.codebook.tolist() == [0.0] and empty.labels.shape == (0, 3) and empty.exact
    z = share_weights(np.zeros(10, np.float32), k=k, init=init)
    assert z.codebook.tolist() == [0.0] and z.exact and z.sse == 0.0
    const = share_weights(np.full((4, 4), -0.75, np.float32), k=k, init=init, keep_zero=True)
    assert const.codebook.tolist() == [-0.75, 0.0] and const.exact
    assert np.all(const.restore() == -0.75)
    sub = share_weights(np.array([1e-45, -1e-42, 0.0, -0.0], np.float32), k=k, init=init)
    assert sub.codebook.tolist() == [0.0] and np.all(sub.restore() == 0.0)
    tiny = np.array([3e-38, -3e-38, 1e-45], np.float32)  # 3 distinct values after canonicalising
    rt = share_weights(tiny, k=k, init=init)
    assert rt.exact == (k >= 3)
    if k >= 3:
        assert np.array_equal(rt.restore(), np.array([3e-38, -3e-38, 0.0], np.float32))
    allmasked = share_weights(np.ones(5, np.float32), k=k, init=init, mask=np.zeros(5, bool))
    assert allmasked.codebook.tolist() == [0.0] and np.all(allmasked.labels == 0)


@pytest.mark.parametrize("init", INITS)
def test_k4096_on_many_distinct_values(init):
    rng = np.random.default_rng(5)
    x = (rng.standard_t(5, size=40_000) * 0.02).astype(np.float32)
    r = share_weights(x, k=4096, init=init)
    assert r.labels.dtype == np.uint16 and not r.exact and r.converged
    assert 1000 < r.k <= 4096
    # heavy tails: a density-placed codebook leaves outliers far off, but
    # every init must beat 12-bit uniform-ish quality by a wide margin
    assert r.sqnr_db > (60 if init == "optimal" else 30)


def test_exact_when_few_distinct_values_even_if_grid_merges_them():
    # 1.0 and 1.0000001 share a grid bin; there are only 3 distinct floats
    x = np.array([1.0, 1.0000001, -2.0, 1.0, -2.0], np.float32)
    r = share_weights(x, k=3, bits=8)
    assert r.exact and r.restore().tobytes() == x.tobytes()
    r = share_weights(x, k=2, bits=8)  # 2 grid bins, 3 floats: one centroid per bin
    assert not r.exact and r.k == 2


def test_requantising_is_exact():
    rng = np.random.default_rng(9)
    x = rng.standard_normal(20_000).astype(np.float32)
    first = share_weights(x, k=16)
    again = share_weights(first.restore(), k=16, init="optimal")
    assert again.exact and again.restore().tobytes() == first.restore().tobytes()


def test_blocks_give_the_same_result(monkeypatch):
    rng = np.random.default_rng(2)
    x = (rng.standard_t(3, size=(60, 1000)) * 0.05).astype(np.float32)
    mask = rng.random(x.shape) < 0.6
    for kw in ({"k": 32}, {"k": 300, "init": "density", "keep_zero": True, "mask": mask},
               {"k": 16, "init": "optimal", "mask": mask}):
        ref = share_weights(x, **kw)
        monkeypatch.setattr(grid, "BLOCK", 7000)
        got = share_weights(x, **kw)
        monkeypatch.undo()
        assert got.codebook.tobytes() == ref.codebook.tobytes()
        assert got.labels.tobytes() == ref.labels.tobytes()
        assert got.sse == ref.sse


def test_keep_zero_with_pruning():
    rng = np.random.default_rng(4)
    x = rng.standard_normal(5000).astype(np.float32)
    x[np.abs(x) < 0.5] = 0.0
    r = share_weights(x, k=16, keep_zero=True)
    z = r.codebook.tolist().index(0.0)
    assert np.all(r.labels[x == 0] == z)
    assert np.all(r.restore()[x == 0] == 0.0)
    mask = x != 0
    rm = share_weights(x, k=16, keep_zero=True, mask=mask)
    assert np.all(rm.restore()[~mask] == 0.0)


def test_random_init_is_seeded():
    rng = np.random.default_rng(6)
    x = rng.standard_normal(3000).astype(np.float32)
    a = share_weights(x, k=8, init="random", seed=1)
    b = share_weights(x, k=8, init="random", seed=1)
    assert a.codebook.tobytes() == b.codebook.tobytes()


def test_errors():
    x = np.ones(4, np.float32)
    for k in (1, 4097):
        with pytest.raises(ValueError):
            share_weights(x, k=k)
    with pytest.raises(ValueError):
        share_weights(x, k=4, init="kmeans++")
    with pytest.raises(NonFiniteWeightsError, match="1 of 4"):
        share_weights(np.array([1, 2, np.inf, 3], np.float32), k=2)
    with pytest.raises(ValueError):
        share_weights(x, k=2, mask=np.ones(5, bool))


def test_default_bits():
    assert [default_bits(k) for k in (2, 16, 64, 65, 4096)] == [22, 22, 22, 24, 24]
    assert default_bits(256, 1 << 22) == 24 and default_bits(256, (1 << 22) + 1) == 22
    assert default_bits(32, 1 << 22) == 22 and default_bits(32, (1 << 22) + 1) == 20


# ---------------------------------------------------------------- oracles


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(np.float32, st.integers(2, 400), elements=st.floats(-100, 100, width=32)),
    st.sampled_from([2, 3, 5, 8, 16]),
    st.sampled_from([6, 10, 16]),
)
def test_linear_reaches_reference_grid_lloyd_fixed_point(x, k, bits):
    r = share_weights(x, k=k, bits=bits)
    h = grid.grid_histogram(x, bits=bits)
    if h.nbins <= k:
        return  # one centroid per value: nothing to iterate
    q = grid.grid_index(x, h.step, h.levels)
    c, lab = reference_grid_lloyd(q, k)
    assert r.codebook.tobytes() == (c * h.step).astype(np.float32).tobytes()
    assert np.array_equal(r.labels.ravel(), lab)


def test_linear_matches_reference_grid_lloyd_on_zoo(zoo):
    for name, w in zoo_blobs(zoo, max_size=30_000):
        for k in (4, 16, 32):
            r = share_weights(w, k=k)
            h = grid.grid_histogram(w, bits=r.bits)
            q = grid.grid_index(w, h.step, h.levels)
            c, lab = reference_grid_lloyd(q, k)
            assert r.codebook.tobytes() == (c * h.step).astype(np.float32).tobytes(), (name, k)
            assert np.array_equal(r.labels.ravel(), lab), (name, k)


@pytest.mark.parametrize("k", [16, 32, 256])
def test_linear_sse_within_0p1_percent_of_float_lloyd(zoo, k):
    """Against Lloyd on the original floats from the same linear init.

    Lloyd is sensitive: the grid's rounding, and (at large k) its stopping
    once centroid drifts fall below half a grid step, can send a run to a
    neighbouring local optimum, in either direction. So: every blob's SSE
    is at most 0.1 % above float Lloyd's (at k = 16 also at most 0.1 %
    below); at every k the median ratio and the summed SSE are within
    0.1 %, and polishing our codebook with float Lloyd gains less than 1 %
    on any blob.
    """
    ratios, ours_sum, ref_sum = [], 0.0, 0.0
    for name, w in zoo_blobs(zoo):
        if np.unique(w).size <= k:
            continue
        r = share_weights(w, k=k)
        ours = true_sse(w, r)
        polished = reference_float_lloyd(w, k, init=r.codebook)
        assert polished <= ours * (1 + 1e-12) and ours <= polished * 1.01, (name, k, ours / polished)
        ref = reference_float_lloyd(w, k)
        assert ours <= ref * 1.001, (name, k, ours / ref)
        if k == 16:
            assert 0.999 <= ours / ref, (name, ours / ref)
        ratios.append(ours / ref)
        ours_sum, ref_sum = ours_sum + ours, ref_sum + ref
    assert len(ratios) >= 8
    assert ours_sum <= ref_sum * 1.001
    assert 0.999 <= float(np.median(ratios)) <= 1.001


@pytest.mark.parametrize("k", [2, 5, 16, 32, 255])
def test_optimal_within_1p001_of_ckmeans(zoo, k):
    ckmeans = pytest.importorskip("ckmeans")
    for name, w in zoo_blobs(zoo):
        if k == 255 and w.size > 200_000:
            continue  # ckmeans itself needs seconds there
        r = share_weights(w, k=k, init="optimal")
        clusters = ckmeans.ckmeans(w.ravel().astype(np.float64), k)
        ref = sum(float(np.sum((c - c.mean()) ** 2)) for c in clusters)
        ours = true_sse(w, r)
        assert ours <= ref * 1.001, (name, k, ours / ref)
        others = min(share_weights(w, k=k, init=i).sse for i in ("linear", "density"))
        # cuts on <= auto_max_bins groups, then Lloyd: near-optimal
        assert r.sse <= others * (1 + 1e-4), (name, k)
        if k <= 32 and w.size <= 50_000:  # the programme on every occupied bin: the grid optimum
            full = share_weights(w, k=k, init="optimal", optimal_bins=None)
            assert true_sse(w, full) <= ref * 1.001, (name, k)
            assert full.sse <= r.sse * (1 + 1e-9), (name, k)
            assert full.sse <= others * (1 + 1e-9), (name, k)


def _brute_force(v, w, k):
    best = np.inf
    m = v.size
    for cut in itertools.combinations(range(1, m), k - 1):
        edges = (0, *cut, m)
        s = 0.0
        for a, b in zip(edges[:-1], edges[1:]):
            vv, ww = v[a:b].astype(np.float64), w[a:b].astype(np.float64)
            mu = np.dot(vv, ww) / ww.sum()
            s += float(np.dot(ww, (vv - mu) ** 2))
        best = min(best, s)
    return best


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-50, 50), min_size=2, max_size=9, unique=True),
    st.data(),
    st.integers(2, 5),
    st.booleans(),
)
def test_optimal_partition_is_exact_by_brute_force(vals, data, k, use_numba):
    v = np.array(sorted(vals), np.int64)
    w = np.array(data.draw(st.lists(st.integers(1, 20), min_size=v.size, max_size=v.size)), np.int64)
    k = min(k, v.size)
    cuts = optimal.optimal_partition(v, w, k, use_numba=use_numba)
    assert cuts[0] == 0 and cuts[-1] == v.size and np.all(np.diff(cuts) > 0)
    W, S1, S2 = optimal.prefix_moments(v, w)
    got = sum(float(optimal._cost(W, S1, S2, cuts[j], cuts[j + 1] - 1)) for j in range(cuts.size - 1))
    assert got == pytest.approx(_brute_force(v, w, k), rel=1e-9, abs=1e-9)


@pytest.mark.skipif(not optimal.NUMBA, reason="numba not installed")
def test_optimal_numpy_and_numba_agree(zoo):
    for name, w in zoo_blobs(zoo, max_size=150_000):
        h = grid.grid_histogram(w, bits=16)
        for k in (3, 16, 64):
            a = optimal.optimal_partition(h.values, h.counts, k, use_numba=False)
            b = optimal.optimal_partition(h.values, h.counts, k, use_numba=True)
            assert np.array_equal(a, b), (name, k)


def test_optimal_coarsening_keeps_exact_costs():
    rng = np.random.default_rng(8)
    v, c = np.unique(np.round(rng.standard_t(3, 30_000) * 500).astype(np.int64), return_counts=True)
    W, S1, S2 = optimal.prefix_moments(v, c)

    def sse(cuts):
        return sum(float(optimal._cost(W, S1, S2, cuts[j], cuts[j + 1] - 1)) for j in range(cuts.size - 1))

    full = optimal.optimal_partition(v, c, 8, max_bins=None)
    coarse = optimal.optimal_partition(v, c, 8, max_bins=256)
    assert coarse.size == 9 and sse(full) <= sse(coarse) <= sse(full) * 1.01


def test_lloyd_histogram_pinned_and_empty():
    v = np.array([-10, -9, 5, 6, 100], np.int64)
    w = np.array([1, 1, 1, 1, 1], np.int64)
    c, cuts, it, conv = lloyd_histogram(v, w, np.array([-9.5, 0.0, 2.0, 60.0]), pinned=1)
    assert conv and c[1] == 0.0
    assert c.tolist()[0] == -9.5 and c.tolist()[3] == 100.0
    # the pinned zero is empty here and keeps its place; 5 and 6 go to 2.0's cell
    assert cuts.tolist() == [0, 2, 2, 4, 5]


@pytest.mark.parametrize("use_numba", [False, True])
def test_lloyd_relocates_empty_cluster_to_farthest_bin(use_numba):
    v = np.array([0, 1, 2, 100], np.int64)
    w = np.ones(4, np.int64)
    # Lloyd stops at [1, 40, 100] with 40.0's cell empty; the cell {0, 1, 2}
    # gains 1.5 from a split at 0|1 and at 1|2; the lower split wins, giving
    # [0, 1.5, 100], a fixed point
    c, cuts, it, conv = lloyd_histogram(v, w, np.array([0.5, 40.0, 60.0]), use_numba=use_numba)
    assert conv and c.tolist() == [0.0, 1.5, 100.0] and cuts.tolist() == [0, 1, 3, 4]


@pytest.mark.skipif(not lloyd.NUMBA, reason="numba not installed")
def test_lloyd_numpy_and_numba_agree(zoo):
    from caffecompress.engine.kmeans import _init_linear

    for name, w in zoo_blobs(zoo):
        h = grid.grid_histogram(w, bits=20)
        for k in (4, 16, 256):
            if h.nbins <= k:
                continue
            c0 = _init_linear(h.values, h.counts, k)
            a = lloyd_histogram(h.values, h.counts, c0, use_numba=True)
            b = lloyd_histogram(h.values, h.counts, c0, use_numba=False)
            assert a[0].tobytes() == b[0].tobytes() and np.array_equal(a[1], b[1]) and a[2:] == b[2:], (name, k)


@pytest.mark.skipif(not lloyd.NUMBA, reason="numba not installed")
@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.data())
def test_compiled_lloyd_driver_is_the_numpy_one(data):
    """The compiled driver (incremental steps, galloping searches, compiled
    relocation) gives the NumPy driver's centroid bits, cells, iteration
    count and status: with a pinned zero, missing clusters, and a cap."""
    m = data.draw(st.integers(3, 300))
    v = np.cumsum(data.draw(hnp.arrays(np.int64, m, elements=st.integers(1, 50)))) - 25 * m // 2
    w = data.draw(hnp.arrays(np.int64, m, elements=st.integers(1, 1000)))
    k = data.draw(st.integers(2, min(m - 1, 40)))
    n0 = data.draw(st.integers(1, k))
    c = np.unique(data.draw(hnp.arrays(np.float64, n0, elements=st.floats(float(v[0]), float(v[-1])))))
    pinned = None
    if data.draw(st.booleans()):
        c = np.union1d(c, [0.0])
        pinned = int(np.flatnonzero(c == 0.0)[0])
    k = max(k, c.size)
    max_iter = data.draw(st.sampled_from([1, 3, 20_000]))
    a = lloyd_histogram(v, w, c, pinned=pinned, max_iter=max_iter, k=k, use_numba=True)
    b = lloyd_histogram(v, w, c, pinned=pinned, max_iter=max_iter, k=k, use_numba=False)
    assert a[0].tobytes() == b[0].tobytes() and np.array_equal(a[1], b[1]) and a[2:] == b[2:]


@pytest.mark.skipif(not lloyd.NUMBA, reason="numba not installed")
@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.data())
def test_compiled_relocation_splits_the_numpy_cells_on_tied_gains(data):
    """Cells of two repeated shapes have equal split gains: the compiled
    relocation (a selection, no sort) splits the same cells and returns the
    same centroids as the NumPy twin's stable sort (lower cell on ties)."""
    shapes = [
        (np.cumsum(data.draw(hnp.arrays(np.int64, n, elements=st.integers(1, 9)))),
         data.draw(hnp.arrays(np.int64, n, elements=st.integers(1, 5))))
        for n in (data.draw(st.integers(2, 4)), data.draw(st.integers(2, 4)))
    ]
    order = data.draw(st.lists(st.integers(0, 1), min_size=2, max_size=12))
    v = np.concatenate([shapes[s][0] + 1000 * i for i, s in enumerate(order)]).astype(np.int64)
    w = np.concatenate([shapes[s][1] for s in order]).astype(np.int64)
    means = [float(np.dot(shapes[s][0] + 1000 * i, shapes[s][1])) / float(shapes[s][1].sum())
             for i, s in enumerate(order)]
    n_empty = data.draw(st.integers(0, len(order) + 2))
    c = np.array(means + [float(v[-1]) + 10_000.0 * (i + 1) for i in range(n_empty)])
    missing = data.draw(st.integers(0, 2))
    vf, W, S1 = lloyd._moments(v, w)
    cuts = lloyd.assign_cuts(vf, c)
    a = lloyd._relocate_numba(W, S1, c, cuts, -1, missing)
    b = lloyd._relocate(vf, W, S1, c, cuts, -1, missing)
    assert a[0].tobytes() == b[0].tobytes() and a[1] == b[1]


@pytest.mark.skipif(not lloyd.NUMBA, reason="numba not installed")
@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.integers(-(1 << 29), 1 << 29), min_size=0, max_size=300, unique=True),
       st.integers(1, 1 << 20))
def test_compiled_moments_are_the_numpy_ones(vals, wmax):
    v = np.sort(np.array(vals, np.int64))
    w = (np.arange(v.size, dtype=np.int64) * 7919) % wmax + 1
    for x, y in zip(lloyd._moments_numba(v, w), lloyd._moments(v, w)):
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()


@pytest.mark.skipif(not lloyd.NUMBA, reason="numba not installed")
def test_compiled_lloyd_driver_gives_plus_zero_for_a_minus_zero_init():
    v = np.array([-5, -1, 0, 3, 9], np.int64)
    w = np.array([2, 1, 4, 1, 3], np.int64)
    for pinned in (None, 1):
        c0 = np.array([-3.0, -0.0, 6.0])
        a = lloyd_histogram(v, w, c0, pinned=pinned, use_numba=True)
        b = lloyd_histogram(v, w, c0, pinned=pinned, use_numba=False)
        assert a[0].tobytes() == b[0].tobytes() and np.array_equal(a[1], b[1]) and a[2:] == b[2:]
        assert not np.signbit(a[0][1])


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.data())
def test_coarse_label_table_equals_a_search_on_the_boundaries(data):
    from caffecompress.engine.labels import _coarse_table

    span = data.draw(st.sampled_from([10, 5000, 100_000]))
    lo = data.draw(st.integers(-span, 0))
    hi = data.draw(st.integers(0, span))
    k = data.draw(st.integers(2, 300))
    # ascending boundaries in lo..hi+1, often bunched (outlier clusters)
    first = np.sort(data.draw(hnp.arrays(np.int64, k - 1, elements=st.integers(lo, hi + 1))))
    n = data.draw(st.integers(1, 3000))
    dtype = np.uint8 if k <= 256 else np.uint16
    table, shift, rounds, bounds = _coarse_table(first, k, lo, hi, n, dtype)
    g = np.arange(lo, hi + 1, dtype=np.int32)
    lab = table[(g - lo) >> shift]
    for _ in range(rounds):
        lab += (g >= bounds[lab]).astype(dtype)
    assert table.size <= max(n, 4096) or shift == 0
    assert rounds <= k - 1
    assert np.array_equal(lab, np.searchsorted(first, g, side="right"))


@pytest.mark.skipif(not lloyd.NUMBA, reason="numba not installed")
@settings(max_examples=120, deadline=None, derandomize=True)
@given(st.data())
def test_compiled_refinement_is_the_numpy_one(data):
    m = data.draw(st.integers(4, 300))
    v = np.cumsum(data.draw(hnp.arrays(np.int64, m, elements=st.integers(1, 50)))) - 25 * m // 2
    w = data.draw(hnp.arrays(np.int64, m, elements=st.integers(1, 1000)))
    k = data.draw(st.integers(3, min(m - 1, 40)))
    c0 = np.linspace(float(v[0]), float(v[-1]), k)
    pinned = None
    if data.draw(st.booleans()) and v[0] < 0 < v[-1]:
        c0 = np.union1d(c0[:-1], [0.0])
        pinned = int(np.flatnonzero(c0 == 0.0)[0])
    c, cuts, _, conv = lloyd_histogram(v, w, c0, pinned=pinned, k=k)
    if pinned is not None:
        pinned = int(np.flatnonzero(c == 0.0)[0])
    max_swaps = data.draw(st.sampled_from([1, 2, None]))
    a = refine.refine_histogram(v, w, c, cuts, pinned=pinned, k=k, max_swaps=max_swaps, use_numba=True)
    b = refine.refine_histogram(v, w, c, cuts, pinned=pinned, k=k, max_swaps=max_swaps, use_numba=False)
    assert a[0].tobytes() == b[0].tobytes() and np.array_equal(a[1], b[1]) and a[2:] == b[2:]
    if pinned is not None:
        assert 0.0 in a[0].tolist()


def _hist_sse(v, w, c, cuts):
    lab = np.repeat(np.arange(c.size), np.diff(cuts))
    d = v.astype(np.float64) - c[lab]
    return float(np.sum(w * d * d))


@pytest.mark.parametrize("k", [4, 16, 32, 256])
def test_refinement_lowers_the_sse_and_ends_at_a_fixed_point(zoo, k):
    gains = []
    for name, w_ in zoo_blobs(zoo, max_size=160_000):
        h = grid.grid_histogram(w_, bits=default_bits(k, w_.size))
        if h.nbins <= k:
            continue
        c0 = np.linspace(float(h.values[0]), float(h.values[-1]), k)
        c, cuts, _, conv = lloyd_histogram(h.values, h.counts, c0, k=k)
        r, rcuts, swaps, _, rconv = refine.refine_histogram(h.values, h.counts, c, cuts, k=k)
        before, after = _hist_sse(h.values, h.counts, c, cuts), _hist_sse(h.values, h.counts, r, rcuts)
        assert rconv and after <= before * (1 + 1e-12), (name, k)
        assert (swaps == 0) == (after == before), (name, k)
        # a Lloyd fixed point: one more Lloyd run from it changes nothing
        again = lloyd_histogram(h.values, h.counts, r, k=k)
        assert again[0].tobytes() == r.tobytes() and np.array_equal(again[1], rcuts), (name, k)
        gains.append(after / before)
    assert len(gains) >= 5
    if k >= 16:
        assert min(gains) < 0.95  # it does find swaps on real blobs


@pytest.mark.skipif(not lloyd.NUMBA, reason="numba not installed")
def test_refined_share_weights_numpy_only_is_the_same(zoo):
    for name, w_ in zoo_blobs(zoo, max_size=20_000)[::5]:
        for k, kz in ((16, False), (32, True), (256, False)):
            # without keep_zero a small blob is refined inside the fused call
            a = share_weights(w_, k=k, keep_zero=kz, refine=True)
            b = _numpy_only(lambda: share_weights(w_, k=k, keep_zero=kz, refine=True))
            assert a.codebook.tobytes() == b.codebook.tobytes() and a.labels.tobytes() == b.labels.tobytes(), (name, k)
            assert (a.sse, a.iterations, a.converged, a.k) == (b.sse, b.iterations, b.converged, b.k), (name, k)
            assert a.sse <= share_weights(w_, k=k, keep_zero=kz).sse * (1 + 1e-12), (name, k)


def test_every_k_from_2_to_4096():
    # every k up to 300, then a stride (each call costs the same; the suite stays fast)
    rng = np.random.default_rng(12)
    x = (rng.standard_t(3, size=6000) * 0.05).astype(np.float32)
    prev_sse = np.inf
    for k in [*range(2, 301), *range(301, 4096, 97), 4095, 4096]:
        r = share_weights(x, k=k)
        assert r.converged and 1 <= r.k <= k and not r.exact, k
        assert r.labels.dtype == (np.uint8 if k <= 256 else np.uint16)
        cb = r.codebook
        assert np.all(cb[1:] > cb[:-1]) and int(r.labels.max()) < r.k
        if k in (2, 3, 16, 64, 65, 256, 257, 4096):
            assert r.k == k  # empty clusters were refilled
        if k <= 64:  # same grid: more clusters never hurt much
            assert r.sse <= prev_sse * 1.05, k
            prev_sse = r.sse


def test_split_gains_in_chunks_match(monkeypatch):
    rng = np.random.default_rng(13)
    v = np.unique(rng.integers(-(10**6), 10**6, 50_000))
    w = rng.integers(1, 5, v.size)
    W, S = np.r_[0, np.cumsum(w)], np.r_[0, np.cumsum(w * v)]
    cuts = np.r_[0, np.sort(rng.choice(np.arange(1, v.size), 40, replace=False)), v.size]
    g1, p1 = lloyd.split_gains(W, S, cuts, pinned=3)
    monkeypatch.setattr(lloyd, "_SPLIT_CHUNK", 777)
    g2, p2 = lloyd.split_gains(W, S, cuts, pinned=3)
    assert g1.tobytes() == g2.tobytes() and np.array_equal(p1, p2)
    assert g1[3] == -1.0 and np.all(g1[np.arange(g1.size) != 3] > 0)
    # brute force on one cell: the gain is the SSE drop of the best split
    j = 7
    a, b = cuts[j], cuts[j + 1]
    vv, ww = v[a:b].astype(np.float64), w[a:b].astype(np.float64)

    def sse(x, y):
        return float(np.dot(y, (x - np.dot(x, y) / y.sum()) ** 2))

    drops = [sse(vv, ww) - sse(vv[:i], ww[:i]) - sse(vv[i:], ww[i:]) for i in range(1, b - a)]
    assert g1[j] == pytest.approx(max(drops), rel=1e-6)
    assert p1[j] == a + 1 + int(np.argmax(drops))


@pytest.mark.parametrize("init", ["linear", "optimal"])
def test_keep_zero_on_pruned_blob_is_k_minus_1_free_clusters_plus_zero(init):
    rng = np.random.default_rng(14)
    x = (rng.standard_t(4, size=20_000) * 0.05).astype(np.float32)
    from caffecompress.engine.prune import prune_mask

    mask = prune_mask(x, sparsity=0.5)  # no kept value near zero
    a = share_weights(x, k=16, keep_zero=True, mask=mask, init=init)
    b = share_weights(x, k=15, mask=mask, init=init)
    assert a.k == 16 and 0.0 in a.codebook.tolist()
    assert a.codebook[a.codebook != 0].tobytes() == b.codebook.tobytes()
    assert a.sse == b.sse


@pytest.mark.parametrize("n, k", [(3000, 16), (3000, 256), (40_000, 32), (40_000, 256), (300_000, 16)])
def test_device_branches_give_the_host_result(n, k):
    # small device blobs search the boundaries; >= 16k weights or dense in
    # the grid gather through the coarse table plus compare rounds
    rng = np.random.default_rng(n + k)
    x = (rng.standard_t(3, n) * 0.02).astype(np.float32)
    mask = np.abs(x) > 0.004
    for m in (None, mask):
        a = share_weights(x, k=k, mask=m)
        b = share_weights(x, k=k, mask=m, xp=NumpyAsDevice())
        assert a.codebook.tobytes() == b.codebook.tobytes(), (n, k)
        assert np.asarray(b.labels).tobytes() == a.labels.tobytes(), (n, k)
        assert a.sse == b.sse and a.iterations == b.iterations


@pytest.mark.parametrize("reps", [1, 200])
def test_every_label_path_puts_boundary_values_in_the_upper_cell(reps):
    # grid values on, just below and just above every cell boundary: the
    # host walk, the device search (few values in a wide grid) and the
    # device coarse table (>= 16k values) all agree with searchsorted
    from caffecompress.engine.labels import _first_above, _label_blocks_on_grid

    rng = np.random.default_rng(reps)
    lo, hi = -50_000, 50_000
    c_grid = np.sort(rng.uniform(lo, hi, 40))
    first = _first_above(c_grid, lo, hi)
    q = np.unique(np.concatenate([first - 1, first, first + 1, [lo, hi]])).clip(lo, hi).astype(np.int32)
    q = np.tile(q, reps)
    h = grid.GridHistogram(bits=18, levels=(1 << 17) - 1, step=1.0, values=np.array([lo, hi]),
                           counts=np.array([1, 1]), n=q.size, size=q.size, max_abs=float(hi))
    want = np.searchsorted(first, q, side="right")
    for xp in (np, NumpyAsDevice()):
        got = np.concatenate(list(_label_blocks_on_grid(np.zeros(q.size, np.float32), None, h, c_grid, q, xp,
                                                        np.uint8)))
        np.testing.assert_array_equal(got, want)
