"""Issue 9, part 3: every blob keeps its stored shape fields under every preset.

A V1 file stores biases with legacy 4-D dims (1, 1, 1, N); restored they must
come back that way (not as shape (N)): the wire-level test below is what
proves it (it fails when the reader rewrites legacy dims as ``shape``). The
OpenCV test checks equal blobs and equal shapes as OpenCV 4.x sees them
(``layer.blobs``, ``net.getParam``); with the OpenCV here its conv and
InnerProduct layers reshape their bias on load, so those shapes are the same
either way and that test alone would not catch the regression.
"""

from __future__ import annotations

import numpy as np
import pytest

import caffecompress as cc
from caffecompress.caffe import caffemodel_bytes, read_caffemodel
from caffecompress.config import PRESETS
from fixtures import bits, opencv_blobs, zoo_pair, zoo_models

V1 = [rel for rel in zoo_models() if "-v1/" in rel]


def _shape_fields(data: bytes) -> list:
    """Each blob's shape fields as stored: ('legacy', n, c, h, w) or ('shape', dims)."""
    from caffecompress.caffe.tolerant import parse_tolerant

    net = parse_tolerant(data)[0]
    out = []
    for lp in list(net.layer) + list(net.layers):
        for b in lp.blobs:
            if any(b.HasField(f) for f in ("num", "channels", "height", "width")):
                out.append((lp.name, "legacy", (b.num, b.channels, b.height, b.width)))
            else:
                out.append((lp.name, "shape", tuple(b.shape.dim)))
    return out


def test_the_v1_zoo_models_are_there():
    assert set(V1) == {"lenet-mnist-v1/lenet_iter_10000.caffemodel",
                       "cifar10-quick-v1/cifar10_quick_iter_5000.caffemodel"}


@pytest.mark.parametrize("rel", V1)
@pytest.mark.parametrize("preset", PRESETS)
def test_v1_blobs_keep_their_stored_shape_fields(zoo, rel, preset, tmp_path):
    src = (zoo / rel).read_bytes()
    want = _shape_fields(src)
    assert any(kind == "legacy" and dims[:3] == (1, 1, 1) for _, kind, dims in want)  # the biases
    out = tmp_path / "m.ccz.h5"
    cc.save(cc.compress(read_caffemodel(zoo / rel), preset=preset), out)
    restored = caffemodel_bytes(cc.decompress(out))
    assert _shape_fields(restored) == want


@pytest.mark.parametrize("rel", V1)
def test_v1_lossless_restore_equal_blobs_and_shapes_in_opencv(zoo, rel, tmp_path):
    cv2 = pytest.importorskip("cv2")
    proto = np.frombuffer(zoo_pair(rel).read_bytes(), np.uint8)
    out = tmp_path / "m.ccz.h5"
    cc.save(cc.compress(read_caffemodel(zoo / rel), preset="lossless"), out)
    restored = caffemodel_bytes(cc.decompress(out))
    a = opencv_blobs(cv2.dnn.readNetFromCaffe(proto, np.frombuffer((zoo / rel).read_bytes(), np.uint8)))
    b = opencv_blobs(cv2.dnn.readNetFromCaffe(proto, np.frombuffer(restored, np.uint8)))
    assert a.keys() == b.keys() and a
    shapes = set()
    for name in a:
        assert [x.shape for x in a[name]] == [y.shape for y in b[name]], name
        for x, y in zip(a[name], b[name]):
            assert np.array_equal(bits(x), bits(y))
            shapes.add(x.shape)
    assert any(len(s) == 4 and s[:3] == (1, 1, 1) for s in shapes)  # the stored (1, 1, 1, N)


def test_v2_shapes_and_mixed_placeholders_roundtrip(tmp_path):
    """A V2 file whose blobs store legacy dims (as old V2 writers did) keeps them;
    an array that no longer matches the stored dims gets a fresh shape."""
    from caffecompress.caffe import wire

    def rec(n, payload):
        return wire.encode_len_field(n, len(payload)) + payload

    bias = np.arange(4, dtype=np.float32)
    weight = np.arange(12, dtype=np.float32)
    legacy = b"".join(wire.encode_key(k, 0) + wire.encode_varint(v) for k, v in ((1, 1), (2, 1), (3, 1), (4, 4)))
    blob_b = legacy + rec(5, bias.tobytes())
    blob_w = rec(5, weight.tobytes()) + rec(7, rec(1, b"\x04\x03"))
    layer = rec(1, b"ip") + rec(2, b"InnerProduct") + rec(7, blob_w) + rec(7, blob_b)
    src = rec(100, layer)
    p = tmp_path / "m.caffemodel"
    p.write_bytes(src)
    model = read_caffemodel(p)
    assert [b.shape for b in model.layers[0].blobs] == [(4, 3), (4,)]
    assert caffemodel_bytes(model) == src
    model.layers[0].blobs[1] = np.zeros(5, np.float32)  # not the stored (1, 1, 1, 4) any more
    again = read_caffemodel_bytes(caffemodel_bytes(model), tmp_path)
    assert _shape_fields(caffemodel_bytes(again))[1] == ("ip", "shape", (5,))


def read_caffemodel_bytes(data, tmp_path):
    p = tmp_path / "again.caffemodel"
    p.write_bytes(data)
    return read_caffemodel(p)
