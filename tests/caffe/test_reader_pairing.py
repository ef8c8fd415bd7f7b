"""Pairing weights with a deploy prototxt by layer name, as Caffe does."""

from __future__ import annotations

import re

import numpy as np
import pytest

from caffecompress import errors
from caffecompress.caffe import read_caffemodel, write_caffemodel, write_caffemodel_h5
from fixtures import bits, fixed_input, opencv_forward, zoo_input_shape, zoo_models, zoo_pair

pytest.importorskip("caffecompress.caffe.prototxt")

MODELS = zoo_models()


@pytest.mark.parametrize("rel", MODELS)
def test_zoo_pairs(zoo, rel):
    proto = zoo_pair(rel)
    model = read_caffemodel(zoo / rel, prototxt=proto)
    alone = read_caffemodel(zoo / rel)
    assert model.prototxt == proto.read_text()
    from caffecompress.caffe import read_prototxt

    types = {n: t for n, t in read_prototxt(proto).layers}
    for lay, lay0 in zip(model.layers, alone.layers):
        assert lay.name == lay0.name
        if lay.name in types:
            assert lay.type == types[lay.name]
        for u, v in zip(lay.blobs, lay0.blobs):
            assert np.array_equal(bits(u), bits(v))
    expected = ["conv5-3"] if rel == "mtcnn/det2.caffemodel" else []
    assert model.unmatched == expected


def test_swapped_upstream_pair_is_refused(zoo):
    # mtcnn-retrained/det2.caffemodel is an R-Net; det2.prototxt upstream is the O-Net
    w, p = zoo / "mtcnn-retrained/det2.caffemodel", zoo / "mtcnn-retrained/det2.prototxt"
    with pytest.raises(errors.SchemaMismatchError) as ei:
        read_caffemodel(w, prototxt=p)
    msg = str(ei.value)
    assert str(w) in msg and str(p) in msg and ei.value.layer


def _edited(tmp_path, src, pattern, repl, count=1):
    text = src.read_text()
    new, n = re.subn(pattern, repl, text, count=count, flags=re.S)
    assert n == count
    out = tmp_path / src.name
    out.write_text(new)
    return out


def test_missing_layer(zoo, tmp_path):
    w = zoo / "mtcnn/det1.caffemodel"
    p = _edited(tmp_path, zoo / "mtcnn/det1.prototxt", r'name: "conv2"', 'name: "conv2_renamed"')
    with pytest.raises(errors.SchemaMismatchError) as ei:
        read_caffemodel(w, prototxt=p)
    assert ei.value.layer == "conv2_renamed"
    assert str(w) in str(ei.value) and str(p) in str(ei.value)


def test_wrong_blob_count(zoo, tmp_path):
    w = zoo / "mtcnn/det1.caffemodel"
    p = _edited(tmp_path, zoo / "mtcnn/det1.prototxt", r"(name: \"conv1\".*?convolution_param\s*\{)",
                r"\1 bias_term: false")
    with pytest.raises(errors.SchemaMismatchError) as ei:
        read_caffemodel(w, prototxt=p)
    assert ei.value.layer == "conv1" and "blobs" in str(ei.value)


def test_wrong_shape(zoo, tmp_path):
    w = zoo / "mtcnn/det1.caffemodel"
    p = _edited(tmp_path, zoo / "mtcnn/det1.prototxt", r"(name: \"conv1\".*?num_output:\s*)10", r"\g<1>12")
    with pytest.raises(errors.SchemaMismatchError) as ei:
        read_caffemodel(w, prototxt=p)
    assert ei.value.layer == "conv1" and "num_output" in str(ei.value)


def test_v1_weights_with_v1_prototxt(zoo):
    rel = "lenet-mnist-v1/lenet_iter_10000.caffemodel"
    model = read_caffemodel(zoo / rel, prototxt=zoo_pair(rel))
    assert model.layer("conv1").type == "Convolution" and model.layer("ip1").type == "InnerProduct"


def test_caffe_style_h5_with_shared_params_needs_and_uses_prototxt(zoo, tmp_path):
    """Caffe's ToHDF5 writes a shared blob only in its owner; the prototxt restores it."""
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(5)
    w = rng.standard_normal((8, 8)).astype(np.float32)
    b1, b2 = rng.standard_normal(8).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    proto = tmp_path / "shared.prototxt"
    proto.write_text(
        'name: "shared"\ninput: "data"\ninput_shape { dim: 1 dim: 8 }\n'
        'layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1" param { name: "w" } param { }\n'
        "  inner_product_param { num_output: 8 } }\n"
        'layer { name: "act" type: "TanH" bottom: "ip1" top: "ip1" }\n'
        'layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" param { name: "w" } param { }\n'
        "  inner_product_param { num_output: 8 } }\n"
    )
    h5 = tmp_path / "shared.caffemodel.h5"
    with h5py.File(h5, "w") as f:
        f.create_dataset("data/ip1/0", data=w)
        f.create_dataset("data/ip1/1", data=b1)
        f.create_dataset("data/ip2/1", data=b2)  # blob 0 is owned by ip1
        f.create_group("data/act")
    with pytest.raises(errors.FormatError) as ei:
        read_caffemodel(h5)
    assert ei.value.layer == "ip2"
    model = read_caffemodel(h5, prototxt=proto)
    # the prototxt's order, after Caffe's input upgrade (legacy `input` -> an Input layer)
    assert [lay.name for lay in model.layers] == ["input", "ip1", "act", "ip2"]
    assert [lay.type for lay in model.layers] == ["Input", "InnerProduct", "TanH", "InnerProduct"]
    assert model.layer("ip2").param_names == ["w", ""]
    assert np.array_equal(model.layer("ip2").blobs[0], w) and np.array_equal(model.layer("ip2").blobs[1], b2)
    # a dense caffemodel from it loads in OpenCV with that prototxt; outputs match a numpy forward
    cv2 = pytest.importorskip("cv2")
    out = tmp_path / "shared.caffemodel"
    write_caffemodel(model, out)
    x = fixed_input((1, 8))
    (y,) = opencv_forward(cv2.dnn.readNetFromCaffe(str(proto), str(out)), x)
    ref = np.tanh(x @ w.T + b1) @ w.T + b2
    assert np.allclose(y, ref, rtol=1e-5, atol=1e-5)
    # and the h5 we write round-trips through the same path
    out_h5 = tmp_path / "again.caffemodel.h5"
    write_caffemodel_h5(model, out_h5)
    again = read_caffemodel(out_h5, prototxt=proto)
    for a, b in zip(model.layers, again.layers):
        for u, v in zip(a.blobs, b.blobs):
            assert np.array_equal(bits(u), bits(v))


@pytest.mark.parametrize("rel", ["mtcnn/det1.caffemodel", "lenet-mnist/lenet_iter_10000.caffemodel"])
def test_h5_with_prototxt_restores_structure_for_opencv(zoo, rel, tmp_path):
    cv2 = pytest.importorskip("cv2")
    proto = zoo_pair(rel)
    h5 = tmp_path / "m.caffemodel.h5"
    write_caffemodel_h5(read_caffemodel(zoo / rel), h5)
    model = read_caffemodel(h5, prototxt=proto)
    out = tmp_path / "m.caffemodel"
    write_caffemodel(model, out)
    x = fixed_input(zoo_input_shape(rel))
    ref = opencv_forward(cv2.dnn.readNetFromCaffe(str(proto), str(zoo / rel)), x)
    got = opencv_forward(cv2.dnn.readNetFromCaffe(str(proto), str(out)), x)
    for r, g in zip(ref, got):
        assert np.array_equal(bits(r), bits(g))


def test_train_only_layers_need_no_weights(zoo, tmp_path):
    # a deploy net is built in the TEST phase: TRAIN-only layers are never instantiated
    src = (zoo / "mtcnn/det1.prototxt").read_text()
    extra = ('\nlayer { name: "aux_fc" type: "InnerProduct" bottom: "conv3" top: "aux" '
             "include { phase: TRAIN } inner_product_param { num_output: 3 } }\n")
    p = tmp_path / "det1_train_extra.prototxt"
    p.write_text(src + extra)
    model = read_caffemodel(zoo / "mtcnn/det1.caffemodel", prototxt=p)
    assert "aux_fc" not in {lay.name for lay in model.layers}
    p.write_text(src + extra.replace("TRAIN", "TEST"))
    with pytest.raises(errors.SchemaMismatchError) as ei:
        read_caffemodel(zoo / "mtcnn/det1.caffemodel", prototxt=p)
    assert ei.value.layer == "aux_fc"
