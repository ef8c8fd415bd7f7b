"""The packed (1 bit a weight) keep-mask: the same mask, and the same coded bytes, as the bool one."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from caffecompress.engine import grid, kmeans, prune
from caffecompress.engine import sparse as S
from caffecompress.engine.packedmask import PackedMask
from caffecompress.engine.prune import prune_mask, prune_packed
from fakedevice import NumpyAsDevice

floats32 = st.floats(width=32, allow_nan=False, allow_infinity=False, allow_subnormal=True)
# few distinct magnitudes: ties (+x / -x, subnormals as zero) decided by the index rule
tied = st.sampled_from([0.0, -0.0, 1e-45, -1e-42, 0.5, -0.5, 1.0, -1.0, 2.0, 3.0e38])
blobs = hnp.arrays(np.float32, st.integers(0, 3000), elements=st.one_of(floats32, tied))
criteria = st.one_of(
    st.builds(lambda s: {"sparsity": s}, st.floats(0.0, 1.0)),
    st.builds(lambda t: {"threshold": t}, st.floats(0.0, 4.0)),
    st.builds(lambda q: {"quality": q}, st.floats(0.0, 3.0)),
)


@settings(max_examples=150, deadline=None)
@given(x=blobs, crit=criteria, step=st.sampled_from([8, 64, 1 << 20]))
def test_prune_packed_equals_prune_mask(x, crit, step):
    # small steps put the tie cut-off and the last partial byte in different blocks
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(prune, "_STEP", step)
        got = prune_packed(x, **crit)
    want = prune_mask(x, **crit)
    assert got.size == x.size and got.count == int(want.sum())
    assert got.packed.tobytes() == np.packbits(want).tobytes()
    np.testing.assert_array_equal(got.unpack(), want)


@given(m=hnp.arrays(np.bool_, st.integers(0, 200)), a=st.integers(-250, 250), b=st.integers(-250, 250))
def test_slices_equal_the_bool_array(m, a, b):
    pm = PackedMask(np.packbits(m), m.size, int(m.sum()))
    for s in (slice(a, b), slice(a, None), slice(None, b)):
        got = pm[s]
        assert got.dtype == np.bool_
        np.testing.assert_array_equal(got, m[s])
    assert pm.all() == bool(m.all())


def test_bad_use_is_refused():
    with pytest.raises(ValueError):
        PackedMask(np.zeros(2, np.uint8), 17, 0)  # 17 bits need 3 bytes
    pm = PackedMask(np.zeros(3, np.uint8), 17, 0)
    with pytest.raises(TypeError):
        pm[::2]
    with pytest.raises(TypeError):
        pm[3]
    with pytest.raises(ValueError, match="elements"):
        grid.grid_histogram(np.zeros(16, np.float32), mask=pm)


@settings(max_examples=60, deadline=None)
@given(m=hnp.arrays(np.bool_, st.integers(0, 5000), elements=st.booleans()),
       method=st.sampled_from(["auto", "gaps", "bitmask", "gap4"]))
def test_positions_coded_alike(m, method):
    pm = PackedMask(np.packbits(m), m.size, int(m.sum()))
    want = S.encode_positions(m, method=method)
    got = S.encode_positions(pm, method=method)
    assert got.method == want.method and got.meta == want.meta
    assert set(got.parts) == set(want.parts)
    for k in want.parts:
        assert got.parts[k].tobytes() == want.parts[k].tobytes()
    assert S.candidate_sizes(pm) == S.candidate_sizes(m)


@pytest.mark.parametrize("block", [1000, 999, 1 << 22])
@pytest.mark.parametrize("k,few", [(16, False), (256, False), (8, True)])
def test_sharing_with_a_packed_mask(monkeypatch, block, k, few):
    """Histogram, codebook and labels are those of the bool mask, whatever the
    block size (999: blocks that start inside a packed byte)."""
    rng = np.random.default_rng(k + block)
    x = (rng.standard_t(3, 20_011) * 0.02).astype(np.float32)
    if few:  # few distinct values: the exact path
        x = rng.choice(x[:6], x.size)
    monkeypatch.setattr(grid, "BLOCK", block)
    mask = prune_mask(x, sparsity=0.6)
    pm = prune_packed(x, sparsity=0.6)
    want = kmeans.share_weights(x, k=k, mask=mask)
    got = kmeans.share_weights(x, k=k, mask=pm)
    assert got.exact == want.exact == few
    np.testing.assert_array_equal(got.codebook, want.codebook)
    np.testing.assert_array_equal(got.labels, want.labels)
    assert got.sse == want.sse


def test_device_step_sizes_give_the_same_results(monkeypatch):
    from caffecompress.engine import huffman as H

    dev = NumpyAsDevice()
    rng = np.random.default_rng(9)
    x = np.round(rng.standard_t(3, 1_100_003) * 40).astype(np.float32) / 40  # ties
    for step in (1 << 18, 4096):
        monkeypatch.setattr(prune, "_STEP", step)
        monkeypatch.setattr(grid, "_INDEX_STEP", step)
        monkeypatch.setattr(H, "_COUNT_BLOCK", step)
        m = prune_mask(x, sparsity=0.55)
        np.testing.assert_array_equal(prune_mask(x, sparsity=0.55, xp=dev), m)
        np.testing.assert_array_equal(prune_packed(x, sparsity=0.55).unpack(), m)
        q = grid.grid_index(x, 1e-3, 1000)
        np.testing.assert_array_equal(grid.grid_index(x, 1e-3, 1000, xp=dev), q)
        h, hd = grid.grid_histogram(x, bits=20, mask=m), grid.grid_histogram(x, bits=20, mask=m, xp=dev)
        assert np.array_equal(h.values, hd.values) and np.array_equal(h.counts, hd.counts) and h.step == hd.step
        lab = (q & 31).astype(np.uint8)
        np.testing.assert_array_equal(H._symbol_counts(lab, 32, dev), np.bincount(lab, minlength=32))
        np.testing.assert_array_equal(H._symbol_counts(lab, 32, np), np.bincount(lab, minlength=32))
