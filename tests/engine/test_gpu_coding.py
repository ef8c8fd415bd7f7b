"""CPU/GPU identity of the coding stages (run only where a CUDA device exists).

Derandomised and few examples, so a GPU run fits in minutes. The CPU suite
runs the same properties on the NumPy twin (``decode_numpy``) in
test_huffman.py.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caffecompress.engine import huffman as H
from caffecompress.errors import CorruptDataError

pytestmark = pytest.mark.gpu

GPU = settings(max_examples=25, deadline=None, derandomize=True)


@pytest.fixture(scope="module")
def cp():
    from caffecompress.backend import get_xp

    return get_xp("gpu")


def _stream(seed, n, nsym):
    rng = np.random.default_rng(seed)
    x = np.minimum(rng.geometric(0.05, n) - 1, nsym - 1)
    return x.astype(np.uint8 if nsym <= 256 else np.uint16)


@GPU
@given(seed=st.integers(0, 1000), n=st.integers(0, 50_000), nsym=st.sampled_from([1, 2, 16, 256, 4096]),
       chunk=st.sampled_from([1, 7, 256, 4096]))
def test_gpu_encode_and_decode_match_numpy_byte_for_byte(cp, seed, n, nsym, chunk):
    x = _stream(seed, n, nsym)
    ref = H.encode(x, nsym=nsym, chunk=chunk, engine="numpy")
    dev = H.encode(cp.asarray(x), nsym=nsym, chunk=chunk, xp=cp)
    for f in ("lengths", "payload", "offsets"):
        np.testing.assert_array_equal(getattr(dev, f), getattr(ref, f))
    y = H.decode(ref, xp=cp)
    np.testing.assert_array_equal(cp.asnumpy(y), H.decode_numpy(ref))
    np.testing.assert_array_equal(cp.asnumpy(y), x)


def test_gpu_decoder_detects_what_the_twin_detects(cp):
    x = _stream(3, 20_000, 200)
    s = H.encode(x, nsym=200, chunk=333)
    off = s.offsets.copy()
    off[5] += np.uint64(1)
    with pytest.raises(CorruptDataError):
        H.decode(dataclasses.replace(s, offsets=off), xp=cp)
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = s.payload.copy()
        b = int(rng.integers(0, 8 * p.size))
        p[b >> 3] ^= np.uint8(0x80 >> (b & 7))
        bad = dataclasses.replace(s, payload=p)
        try:
            ref = H.decode_numpy(bad)
        except CorruptDataError:
            with pytest.raises(CorruptDataError):
                H.decode(bad, xp=cp)
        else:
            np.testing.assert_array_equal(cp.asnumpy(H.decode(bad, xp=cp)), ref)


@pytest.mark.parametrize("kw", [dict(), dict(bits=5), dict(bits=8), dict(bits=4, prune=0.7)])
def test_gpu_blob_codec_matches_numpy_byte_for_byte(cp, zoo, kw):
    from caffecompress.caffe import read_caffemodel
    from caffecompress.engine import blob as B

    model = read_caffemodel(zoo / "mtcnn" / "det3.caffemodel")
    for _, _, w in list(model.blobs())[:8]:
        ref = B.encode_blob(w, **kw)
        dev = B.encode_blob(cp.asarray(w), xp=cp, **kw)
        assert dev.method == ref.method and dev.meta == ref.meta
        assert sorted(dev.parts) == sorted(ref.parts)
        for k in ref.parts:
            np.testing.assert_array_equal(np.asarray(dev.parts[k]), ref.parts[k])
        y_ref = B.decode_blob(ref.method, ref.meta, ref.parts)
        y_dev = B.decode_blob(ref.method, ref.meta, ref.parts, xp=cp)
        np.testing.assert_array_equal(y_dev.view(np.uint32), y_ref.view(np.uint32))
