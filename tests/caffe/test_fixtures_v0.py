"""A V0 caffemodel built by hand (V1 ``layers`` wrapping ``V0LayerParameter``), checked with OpenCV."""

from __future__ import annotations

import numpy as np
import pytest

from caffecompress.caffe import read_caffemodel, write_caffemodel
from fixtures import ZOO, bits, fixed_input, opencv_blobs, opencv_forward

cv2 = pytest.importorskip("cv2")

V0_PROTO = ZOO / "prototxt/lenet_v0_2014.prototxt"
LENET = ZOO / "lenet-mnist/lenet_iter_10000.caffemodel"
LENET_PROTO = ZOO / "lenet-mnist/mnist_deploy.prototxt"


def _legacy4(shape):
    return (1,) * (4 - len(shape)) + tuple(shape)


def _v0_caffemodel(padding: bool) -> bytes:
    """LeNet's 2014 V0 net with the zoo LeNet's trained weights as legacy 4-D blobs."""
    from google.protobuf import text_format

    from caffecompress.caffe.proto import pb

    net = text_format.Parse(V0_PROTO.read_text(), pb.NetParameter())
    trained = read_caffemodel(LENET)
    for rec in net.layers:
        v0 = rec.layer
        assert isinstance(v0, pb.V0LayerParameter)
        try:
            lay = trained.layer(v0.name)
        except KeyError:
            continue
        for arr in lay.blobs:
            b = v0.blobs.add()
            b.num, b.channels, b.height, b.width = _legacy4(arr.shape)
            b.data.extend(arr.ravel().tolist())
    if padding:
        # a V0 "padding" layer (pad 0, so the net is unchanged) before conv2
        recs = list(net.layers)
        i = next(k for k, r in enumerate(recs) if r.layer.name == "conv2")
        pad = pb.V1LayerParameter()
        pad.layer.name, pad.layer.type, pad.layer.pad = "pad2", "padding", 0
        pad.bottom.append(recs[i].bottom[0])
        pad.top.append("pad2")
        recs[i].bottom[0] = "pad2"
        recs.insert(i, pad)
        del net.layers[:]
        net.layers.extend(recs)
    return net.SerializeToString()


@pytest.mark.parametrize("padding", [False, True])
def test_v0_caffemodel(zoo, tmp_path, padding):
    p = tmp_path / "lenet_v0.caffemodel"
    p.write_bytes(_v0_caffemodel(padding))
    model = read_caffemodel(p)
    assert model.format == "V0"
    v2 = read_caffemodel(LENET)
    # upgraded names, types, Caffe shapes and values equal the V2 zoo model's
    ours = {lay.name: lay for lay in model.layers}
    assert "pad2" not in ours  # folded into conv2 by the upgrade
    for lay in v2.layers:
        if not lay.blobs:
            continue
        o = ours[lay.name]
        assert o.type == lay.type
        assert [b.shape for b in o.blobs] == [b.shape for b in lay.blobs]
        for u, v in zip(o.blobs, lay.blobs):
            assert np.array_equal(bits(u), bits(v))
    # OpenCV reads the V0 file itself (its own copy of Caffe's upgrader)
    net = cv2.dnn.readNetFromCaffe(str(V0_PROTO), str(p))
    for name, cvb in opencv_blobs(net).items():
        for u, v in zip(ours[name].blobs, cvb):
            assert u.size == v.size and np.array_equal(bits(u), bits(v))
    # written as dense V2: loads in OpenCV with the V2 deploy net, same outputs as the zoo file
    out = tmp_path / "lenet_v2.caffemodel"
    write_caffemodel(model, out)
    x = fixed_input((1, 1, 28, 28))
    ref = opencv_forward(cv2.dnn.readNetFromCaffe(str(LENET_PROTO), str(LENET)), x)
    got = opencv_forward(cv2.dnn.readNetFromCaffe(str(LENET_PROTO), str(out)), x)
    for r, g in zip(ref, got):
        assert np.array_equal(bits(r), bits(g))
    back = read_caffemodel(out)
    assert back.format == "V2"
    assert [(x.name, x.type) for x in back.layers] == [(x.name, x.type) for x in model.layers]
