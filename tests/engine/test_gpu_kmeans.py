"""CPU/GPU bit-identity of the grid, pruning and weight sharing.

Marked ``gpu`` (skipped without a CUDA device). Derandomised, with a fixed
small number of examples so a GPU run takes seconds. Codebooks, labels and
masks are compared byte for byte; ``sse`` exactly (it is computed on the host
from the same integer histogram).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from caffecompress.backend import get_xp, to_host
from caffecompress.engine import grid
from caffecompress.engine.kmeans import INITS, share_weights
from caffecompress.engine.prune import prune_mask

pytestmark = pytest.mark.gpu

GPU = settings(max_examples=25, derandomize=True, deadline=None, database=None)

floats32 = st.floats(-1e3, 1e3, width=32, allow_subnormal=True)
special = st.sampled_from([0.0, -0.0, 1e-45, -1e-39, 1.0, -1.0, 0.5, 3e-38])
blobs = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=30),
    elements=st.one_of(floats32, special),
)


@pytest.fixture(scope="module")
def cp():
    return get_xp("gpu")


def _same_shared(a, b):
    assert a.codebook.tobytes() == b.codebook.tobytes()
    la, lb = to_host(a.labels), to_host(b.labels)
    assert la.dtype == lb.dtype and la.shape == lb.shape
    assert la.tobytes() == lb.tobytes()
    assert a.sse == b.sse and a.exact == b.exact and a.k == b.k
    assert a.iterations == b.iterations


@GPU
@given(blobs, st.sampled_from([2, 16, 256, 300, 4096]), st.sampled_from(INITS), st.booleans(), st.data())
def test_share_weights_identical(cp, x, k, init, keep_zero, data):
    mask = data.draw(hnp.arrays(np.bool_, x.shape)) if data.draw(st.booleans()) else None
    cpu = share_weights(x, k=k, init=init, keep_zero=keep_zero, mask=mask, seed=3, xp=np)
    gpu = share_weights(
        cp.asarray(x), k=k, init=init, keep_zero=keep_zero,
        mask=None if mask is None else cp.asarray(mask), seed=3, xp=cp,
    )
    assert not isinstance(gpu.labels, np.ndarray)  # labels stay on the device
    _same_shared(cpu, gpu)


@GPU
@given(blobs, st.floats(0, 1), st.floats(0, 2), st.floats(0, 3))
def test_prune_identical(cp, x, s, t, q):
    xd = cp.asarray(x)
    for kw in ({"sparsity": s}, {"threshold": t}, {"quality": q}):
        a = prune_mask(x, xp=np, **kw)
        b = to_host(prune_mask(xd, xp=cp, **kw))
        assert a.tobytes() == b.tobytes(), kw


@GPU
@given(blobs, st.integers(8, 22))
def test_histogram_identical(cp, x, bits):
    a = grid.grid_histogram(x, bits=bits, xp=np)
    b = grid.grid_histogram(cp.asarray(x), bits=bits, xp=cp)
    assert a.step == b.step and a.n == b.n
    assert a.values.tobytes() == b.values.tobytes() and a.counts.tobytes() == b.counts.tobytes()
    assert to_host(grid.float_keys(cp.asarray(x), xp=cp)).tobytes() == grid.float_keys(x).tobytes()


def test_large_heavy_tailed_blob_in_blocks(cp, monkeypatch):
    rng = np.random.default_rng(11)
    x = (rng.standard_t(3, size=(300, 1000)) * 0.02).astype(np.float32)
    x[rng.random(x.shape) < 0.001] = 1e-41  # subnormals: flushed on the GPU, canonicalised here
    monkeypatch.setattr(grid, "BLOCK", 65536)
    xd = cp.asarray(x)
    mask = prune_mask(x, sparsity=0.5)
    assert mask.tobytes() == to_host(prune_mask(xd, sparsity=0.5, xp=cp)).tobytes()
    for init in INITS:
        for k in (16, 32, 256):
            a = share_weights(x, k=k, init=init, mask=mask)
            b = share_weights(xd, k=k, init=init, mask=cp.asarray(mask), xp=cp)
            _same_shared(a, b)


def test_zoo_blobs_identical(cp, zoo):
    cv2 = pytest.importorskip("cv2")
    net = cv2.dnn.readNetFromCaffe(
        str(zoo / "mtcnn" / "det4.prototxt"), str(zoo / "mtcnn" / "det4.caffemodel")
    )
    for name in net.getLayerNames():
        layer = net.getLayer(name)
        if layer.type not in ("Convolution", "InnerProduct") or not layer.blobs:
            continue
        w = np.ascontiguousarray(layer.blobs[0], np.float32)
        for k, init in ((16, "linear"), (32, "optimal"), (256, "density")):
            _same_shared(share_weights(w, k=k, init=init), share_weights(cp.asarray(w), k=k, init=init, xp=cp))
