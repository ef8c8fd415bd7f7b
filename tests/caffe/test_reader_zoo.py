"""Reader vs real zoo files, with OpenCV 4.x and protobuf as independent oracles."""

from __future__ import annotations

import numpy as np
import pytest

from caffecompress.caffe import read_caffemodel
from fixtures import bits, opencv_blobs, zoo_models, zoo_pair, zoo_v2_models

cv2 = pytest.importorskip("cv2")

MODELS = zoo_models()


def _pb_records(path):
    """(name, [float32 arrays]) of every layer record, by protobuf's own parser."""
    from caffecompress.caffe.proto import pb

    net = pb.NetParameter()
    net.ParseFromString((path).read_bytes())
    recs = net.layer if len(net.layer) else net.layers
    return [(r.name, [np.array(b.data, dtype=np.float32) for b in r.blobs]) for r in recs]


@pytest.mark.parametrize("rel", MODELS)
def test_blobs_equal_opencv_bit_for_bit(zoo, rel):
    model = read_caffemodel(zoo / rel)
    net = cv2.dnn.readNetFromCaffe(str(zoo_pair(rel)), str(zoo / rel))
    held = opencv_blobs(net)
    assert held, "OpenCV holds no blobs?"
    for name, cvblobs in held.items():
        # OpenCV takes the first same-named layer that has blobs
        ours = next(lay for lay in model.layers if lay.name == name and lay.blobs)
        assert len(ours.blobs) == len(cvblobs), name
        for a, b in zip(ours.blobs, cvblobs):
            assert a.size == b.size, name
            assert np.array_equal(bits(a), bits(b)), name
        if ours.type == "Convolution":
            # OpenCV keeps Caffe's 4-D kernel shape (it reshapes only biases and fc weights)
            assert ours.blobs[0].shape == cvblobs[0].shape, name
    # blobs OpenCV drops (extra branches, training layers) against the file's own
    # bytes, decoded by protobuf (parsed only when needed: slow on pure-python protobuf)
    dropped = [lay for lay in model.layers if lay.blobs and lay.name not in held]
    if dropped:
        records = _pb_records(zoo / rel)
        for lay in dropped:
            src = next(arrs for n, arrs in records if n == lay.name)
            assert len(src) == len(lay.blobs)
            for a, s in zip(lay.blobs, src):
                assert np.array_equal(bits(a), bits(s)), lay.name


def test_opencv_dropped_branch_is_kept(zoo):
    # the original MTCNN R-Net caffemodel carries conv5-3 which its prototxt lacks
    model = read_caffemodel(zoo / "mtcnn/det2.caffemodel")
    net = cv2.dnn.readNetFromCaffe(str(zoo / "mtcnn/det2.prototxt"), str(zoo / "mtcnn/det2.caffemodel"))
    assert "conv5-3" not in opencv_blobs(net)
    assert model.layer("conv5-3").num_params == 1290


@pytest.mark.slow  # parses whole files with protobuf (minutes on pure-python protobuf)
@pytest.mark.parametrize("rel", zoo_v2_models())
def test_v2_shapes_are_the_files_shapes(zoo, rel):
    from caffecompress.caffe.proto import pb

    net = pb.NetParameter()
    net.ParseFromString((zoo / rel).read_bytes())
    model = read_caffemodel(zoo / rel)
    assert [lay.name for lay in model.layers] == [lp.name for lp in net.layer]
    assert [lay.type for lay in model.layers] == [lp.type for lp in net.layer]
    for lay, lp in zip(model.layers, net.layer):
        assert [b.shape for b in lay.blobs] == [tuple(b.shape.dim) for b in lp.blobs]
        assert all(b.dtype == np.float32 and b.flags.writeable for b in lay.blobs)


@pytest.mark.parametrize(
    "v1, v2",
    [
        ("lenet-mnist-v1/lenet_iter_10000.caffemodel", "lenet-mnist/lenet_iter_10000.caffemodel"),
        ("cifar10-quick-v1/cifar10_quick_iter_5000.caffemodel", "cifar10-quick/cifar10_quick_iter_5000.caffemodel"),
    ],
)
def test_v1_legacy_dims_get_caffe_shapes(zoo, v1, v2):
    # V1 files store legacy 4-D num/channels/height/width; Caffe's loader compares
    # them right-aligned, so an InnerProduct weight 1x1xNxK is (N, K) and a bias (N,).
    old = read_caffemodel(zoo / v1)
    new = read_caffemodel(zoo / v2)
    assert old.format == "V1" and new.format == "V2"
    olds = {lay.name: lay for lay in old.layers if lay.blobs}
    for lay in new.layers:
        if lay.blobs:
            o = olds[lay.name]
            assert o.type == lay.type
            assert [b.shape for b in o.blobs] == [b.shape for b in lay.blobs]
    for lay in old.layers:
        if lay.type == "InnerProduct":
            assert lay.blobs[0].ndim == 2 and lay.blobs[1].ndim == 1
        if lay.type == "Convolution":
            assert lay.blobs[0].ndim == 4 and lay.blobs[1].ndim == 1


@pytest.mark.parametrize("rel", MODELS)
def test_model_metadata(zoo, rel):
    model = read_caffemodel(zoo / rel)
    assert model.source == str(zoo / rel)
    assert model.skeleton
    assert all(lay.type for lay in model.layers)
    for lay in model.layers:
        assert len(lay.param_names) == len(lay.blobs)


def _caffe_shapes(lp, bottom):
    """Blob shapes Caffe's LayerSetUp gives a layer with input shape ``bottom`` (None: not checked)."""
    t = lp.type
    if t == "Convolution":
        cp = lp.convolution_param
        if cp.HasField("kernel_h"):
            k = (cp.kernel_h, cp.kernel_w)
        else:
            ks = list(cp.kernel_size)
            k = tuple(ks * (len(bottom) - 2)) if len(ks) == 1 else tuple(ks)
        w = (cp.num_output, bottom[1] // (cp.group or 1), *k)
        return [w, (cp.num_output,)] if cp.bias_term else [w]
    if t == "InnerProduct":
        ip = lp.inner_product_param
        axis = ip.axis % len(bottom)
        k = int(np.prod(bottom[axis:]))
        w = (k, ip.num_output) if ip.transpose else (ip.num_output, k)
        return [w, (ip.num_output,)] if ip.bias_term else [w]
    if t == "BatchNorm":
        return [(bottom[1],), (bottom[1],), (1,)]
    if t == "Scale" and len(lp.bottom) == 1:
        sp = lp.scale_param
        axis = sp.axis % len(bottom)
        shape = tuple(bottom[axis:] if sp.num_axes == -1 else bottom[axis : axis + sp.num_axes])
        return [shape, shape] if sp.bias_term else [shape]
    if t == "PReLU":
        return [()] if lp.prelu_param.channel_shared else [(bottom[1],)]
    return None


@pytest.mark.parametrize("rel", MODELS)
def test_shapes_follow_caffes_rules(zoo, rel):
    """Each blob's shape is what Caffe's layer set-up computes from the prototxt.

    Input shapes per layer come from OpenCV (``getLayersShapes``); the rules
    (format reference §3.1) are applied here independently of the reader.
    """
    from caffecompress.caffe import read_prototxt
    from fixtures import zoo_input_shape

    proto = zoo_pair(rel)
    net = cv2.dnn.readNetFromCaffe(str(proto), str(zoo / rel))
    ids, ins, _ = net.getLayersShapes(list(zoo_input_shape(rel)))
    bottoms = {net.getLayer(int(i)).name: tuple(int(d) for d in s[0]) for i, s in zip(ids, ins) if len(s)}
    model = read_caffemodel(zoo / rel)
    checked = 0
    for lp in read_prototxt(proto).net.layer:
        if lp.name not in bottoms:
            continue
        want = _caffe_shapes(lp, bottoms[lp.name])
        if want is None:
            continue
        lay = next(x for x in model.layers if x.name == lp.name and x.blobs)
        assert [b.shape for b in lay.blobs] == want, lp.name
        checked += 1
    assert checked >= 2
