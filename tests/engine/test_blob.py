"""Per-blob codec: every method round-trips; lossless ones bit-exact, lossy ones onto the codebook."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caffecompress.engine import blob as B
from caffecompress.errors import CorruptDataError, NonFiniteWeightsError
from fakedevice import NumpyAsDevice

SPECIAL = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-45, -1e-40, 3.4e38], np.float32)


@st.composite
def blobs(draw, finite=False):
    shape = draw(st.sampled_from([(0,), (1,), (7,), (3, 5), (16, 3, 3, 3), (40, 50), ()]))
    n = int(np.prod(shape)) if shape else 1
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["heavy", "few", "const", "zeros", "special"]))
    if kind == "heavy":  # trained-like: heavy tailed
        x = rng.standard_t(3, n) * 0.02
    elif kind == "few":
        x = rng.choice(rng.normal(0, 1, draw(st.integers(1, 300))), n)
    elif kind == "const":
        x = np.full(n, rng.normal())
    elif kind == "zeros":
        x = np.zeros(n)
    else:  # signed zeros, subnormals, huge values (+ NaN/Inf when allowed)
        x = rng.choice(SPECIAL[[0, 1, 5, 6, 7]] if finite else SPECIAL, n)
    return x.astype(np.float32).reshape(shape)


def _roundtrip(enc):
    parts = {k: np.array(v) for k, v in enc.parts.items()}  # as a reader hands them back
    return B.decode_blob(enc.method, dict(enc.meta), parts)


def _plain(enc):
    assert enc.method in B.METHODS
    for k, v in enc.meta.items():
        assert isinstance(v, (int, float, str)), (k, v)
    for k, v in enc.parts.items():
        assert isinstance(v, np.ndarray) and v.ndim == 1, k


@settings(max_examples=80, deadline=None)
@given(x=blobs())
def test_lossless_is_bit_exact(x):
    enc = B.encode_blob(x)
    _plain(enc)
    assert enc.method in ("raw", "exact")
    y = _roundtrip(enc)
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_array_equal(y.view(np.uint32), x.view(np.uint32))
    assert enc.method == "raw" or enc.nbytes < x.nbytes


@settings(max_examples=60, deadline=None)
@given(x=blobs(finite=True), bits=st.integers(1, 12), prune=st.sampled_from([0.0, 0.5, 0.9]),
       init=st.sampled_from(["linear", "density", "optimal"]))
def test_lossy_restores_onto_the_codebook(x, bits, prune, init):
    from caffecompress.engine.grid import canonicalize
    from caffecompress.engine.kmeans import share_weights
    from caffecompress.engine.prune import prune_mask

    enc = B.encode_blob(x, bits=bits, prune=prune, init=init)
    _plain(enc)
    y = _roundtrip(enc)
    assert y.dtype == np.float32 and y.shape == x.shape
    if enc.method == "raw":
        np.testing.assert_array_equal(y.view(np.uint32), x.view(np.uint32))
        return
    book = B.codebook_of(enc.meta, enc.parts)
    assert book.size <= 1 << bits
    mask = prune_mask(x, sparsity=prune) if prune else np.ones(x.shape, bool)
    if enc.method == "shared+sparse":
        assert (y[~mask] == 0).all()
    # the same clustering, restored through the codec, byte for byte
    sw = share_weights(x, k=1 << bits, init=init, keep_zero=False,
                       mask=mask if enc.method == "shared+sparse" else None)
    np.testing.assert_array_equal(y[mask], sw.restore()[mask])
    assert np.isin(y[mask], book).all()
    if enc.method == "exact":  # lossy paths canonicalise subnormals (DESIGN), else exact
        np.testing.assert_array_equal(y, canonicalize(x))


def test_raw_when_tables_outweigh_the_payload():
    x = np.array([0.1, -0.2, 0.3], np.float32)
    assert B.encode_blob(x, bits=8).method == "raw"
    big = np.random.default_rng(0).standard_t(3, 20000).astype(np.float32)
    assert B.encode_blob(big, bits=5).method == "shared"
    assert B.encode_blob(big, bits=5, prune=0.6).method == "shared+sparse"
    assert B.encode_blob(np.zeros(5000, np.float32)).method == "exact"
    assert B.encode_blob(np.zeros(5000, np.float32)).nbytes < 64  # one value: no label stream


def test_nonfinite_refused_on_the_lossy_path():
    x = np.ones(1000, np.float32)
    x[3] = np.nan
    with pytest.raises(NonFiniteWeightsError):
        B.encode_blob(x, bits=4)


def test_corrupt_records_are_detected():
    x = np.random.default_rng(1).standard_t(3, 30000).astype(np.float32).reshape(300, 100)
    for kw in (dict(bits=5), dict(bits=4, prune=0.7), dict(), dict(step=0.05)):
        enc = B.encode_blob(x, **kw)
        bad = [
            (enc.method, {**enc.meta, "shape": "300,99"}, enc.parts),
            (enc.method, {**enc.meta, "shape": "x"}, enc.parts),
            ("lzw", enc.meta, enc.parts),
            (enc.method, enc.meta, {k: v for k, v in enc.parts.items() if k != sorted(enc.parts)[-1]}),
        ]
        if "nlab" in enc.meta:
            bad.append((enc.method, {**enc.meta, "nlab": enc.meta["nlab"] - 1}, enc.parts))
        if "codebook" in enc.parts:
            bad.append((enc.method, enc.meta, {**enc.parts, "codebook": enc.parts["codebook"][:1]}))
        if enc.method == "grid":
            m = enc.meta
            bad += [("grid", {**m, "step": "nan"}, enc.parts), ("grid", {**m, "step": "-0x1p-4"}, enc.parts),
                    ("grid", {**m, "step": "0x1p+2000"}, enc.parts), ("grid", {**m, "step": "0x1p"}, enc.parts),
                    ("grid", {**m, "qmin": -5000}, enc.parts), ("grid", {**m, "nsym": m["nsym"] + 1}, enc.parts),
                    ("grid", {**m, "qmin": 2047}, enc.parts),
                    ("grid", {k: v for k, v in m.items() if k != "qmin"}, enc.parts),
                    ("grid", m, {**enc.parts, "codebook": np.zeros(3, np.float32)})]
        for method, meta, parts in bad:
            with pytest.raises(CorruptDataError):
                B.decode_blob(method, meta, parts)


def test_blob_stats():
    x = np.random.default_rng(2).standard_t(3, 50000).astype(np.float32)
    enc = B.encode_blob(x, bits=5, prune=0.5)
    s = B.blob_stats(x, enc)
    y = B.decode_blob(enc.method, enc.meta, enc.parts)
    assert s["bits"] == 5 and s["bytes"] == enc.nbytes
    assert s["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert s["sse"] == pytest.approx(float(((x.astype(np.float64) - y) ** 2).sum()))
    assert 0 < s["sqnr_db"] < 60 and s["bits_per_weight"] < 5
    assert B.blob_stats(x, B.encode_blob(x))["sqnr_db"] == float("inf")


def test_zoo_blobs_every_method(zoo):
    from caffecompress.caffe import read_caffemodel

    model = read_caffemodel(zoo / "mtcnn" / "det2.caffemodel")
    seen = set()
    for _, i, w in model.blobs():
        for kw in (dict(), dict(bits=5), dict(bits=8), dict(bits=4, prune=0.7), dict(step=2.0 ** -10)):
            enc = B.encode_blob(w, **kw)
            seen.add(enc.method)
            y = _roundtrip(enc)
            assert y.shape == w.shape
            if enc.method in ("raw", "exact"):
                np.testing.assert_array_equal(y.view(np.uint32), w.view(np.uint32))
            else:
                assert enc.nbytes < w.nbytes
                book = B.grid_codebook(enc.meta) if enc.method == "grid" else B.codebook_of(enc.meta, enc.parts)
                assert np.isin(y, book).all() or enc.method == "shared+sparse"
    assert seen == set(B.METHODS) - {"exact"} or seen == set(B.METHODS)


def test_sparse_spends_no_code_on_zero(zoo):
    """shared+sparse clusters only the kept weights: all k codes go to them.

    LeNet ip1 at 50 % pruning, k = 16: a forced zero centroid would leave 15
    codes for the kept weights (SSE 0.48 against 0.42 without).
    """
    from caffecompress.caffe import read_caffemodel
    from caffecompress.engine.kmeans import share_weights
    from caffecompress.engine.prune import prune_mask

    m = read_caffemodel(zoo / "lenet-mnist" / "lenet_iter_10000.caffemodel")
    x = next(lay.blobs[0] for lay in m.layers if lay.name == "ip1")
    enc = B.encode_blob(x, bits=4, prune=0.5)
    assert enc.method == "shared+sparse"
    mask = prune_mask(x, sparsity=0.5)
    y = B.decode_blob(enc.method, enc.meta, enc.parts)
    assert (y[~mask] == 0).all()
    sse = float(((y[mask].astype(np.float64) - x[mask]) ** 2).sum())
    kz = share_weights(x, k=16, keep_zero=True, mask=mask)
    book = B.codebook_of(enc.meta, enc.parts)
    assert book.size == 16 and 0.0 not in book
    assert sse < 0.95 * kz.sse


@pytest.mark.parametrize("n", [3000, 70_000, 300_000])
@pytest.mark.parametrize("bits,prune", [(5, 0.0), (4, 0.6), (8, 0.9), (9, 0.0)])
def test_device_branches_encode_the_host_bytes(n, bits, prune):
    """encode_blob through its device branches (NumPy posing as cupy:
    device steps, gather tables, one-piece packing, device positions) gives
    the host's method, meta and parts byte for byte, the CPU half of the
    gpu-marked identity tests."""
    x = (np.random.default_rng(n + bits).standard_t(3, n) * 0.02).astype(np.float32)
    a = B.encode_blob(x, bits=bits, prune=prune)
    b = B.encode_blob(x, bits=bits, prune=prune, xp=NumpyAsDevice())
    assert (a.method, a.meta, sorted(a.parts)) == (b.method, b.meta, sorted(b.parts))
    assert a.method in ("shared", "shared+sparse")
    for k in a.parts:
        pa, pb = np.asarray(a.parts[k]), np.asarray(b.parts[k])
        assert pa.dtype == pb.dtype and pa.tobytes() == pb.tobytes(), k



def test_codebooks_are_stored_packed_where_shorter_and_forged_ones_refused():
    """A shared/exact codebook as packed float32 fields (format 2.1): exact,
    shorter than the floats, and a forged count, width or length is a typed error."""
    from caffecompress.engine.floatpack import round_mantissa
    from caffecompress.errors import CorruptDataError

    rng = np.random.default_rng(5)
    x = (rng.standard_normal(4096) * 0.05).astype(np.float32)
    enc = B.encode_blob(x, bits=6)
    book = B.codebook_of(enc.meta, enc.parts)
    assert enc.meta["cb_n"] == book.size and enc.parts["codebook"].dtype == np.uint8
    assert enc.parts["codebook"].nbytes < 4 * book.size
    y = B.decode_blob(enc.method, enc.meta, enc.parts)
    assert np.isin(y, book).all()
    # levels already rounded (the fidelity pass's): the packed levels are short,
    # as float fields or as gaps between their keys (format 2.3), whichever is shorter
    q = round_mantissa(book, 12)[rng.integers(0, book.size, 4096)]
    ex = B.encode_blob(q, bits=6)
    assert ex.method == "exact" and ex.meta.get("cb_mbits", ex.meta.get("cb_lmbits")) <= 12
    assert ex.parts["codebook"].nbytes <= (1 + 8 + 12) * ex.meta["cb_n"] / 8 + 1
    assert np.array_equal(B.decode_blob(ex.method, ex.meta, ex.parts).view(np.uint32), q.view(np.uint32))
    width = "cb_mbits" if "cb_mbits" in ex.meta else "cb_lmbits"
    for meta, parts in [({**ex.meta, "cb_n": ex.meta["cb_n"] + 1}, ex.parts),
                        ({**ex.meta, "cb_n": 0}, ex.parts), ({**ex.meta, "cb_n": True}, ex.parts),
                        ({**ex.meta, width: 24}, ex.parts), ({**ex.meta, width: -1}, ex.parts),
                        (ex.meta, {**ex.parts, "codebook": ex.parts["codebook"][:-1]}),
                        (ex.meta, {**ex.parts, "codebook": B.codebook_of(ex.meta, ex.parts)})]:
        with pytest.raises(CorruptDataError):
            B.decode_blob(ex.method, meta, parts)
