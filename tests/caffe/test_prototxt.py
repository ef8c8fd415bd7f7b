"""read_prototxt on every zoo prototxt, checked against OpenCV 4.x's own reading.

Comparison rule with OpenCV (``cv2.dnn.readNetFromCaffe``): OpenCV turns
``Input`` layers (ours, including the one made from legacy ``input_dim``/
``input_shape``) into its single ``__NetInputLayer__`` and keeps every other
layer, data layers included, under the prototxt's name, in order; it does not
fuse or rename anything until the first forward pass. So our upgraded layers
minus ``Input`` must equal ``getLayerNames()`` exactly, and the per-type
counts (``getLayersCount``) must agree, ``__NetInputLayer__`` aside. Per-layer
types are compared where OpenCV can build the layer (some, e.g. PReLU, need
weights): always when the matching caffemodel is loaded too.
"""

from __future__ import annotations

import collections
import os
import stat

import pytest

from caffecompress.caffe.prototxt import NetDef, parse_prototxt, read_prototxt
from caffecompress.errors import FormatError

cv2 = pytest.importorskip("cv2", reason="OpenCV 4.x is the oracle for layer names/types")


def _zoo_prototxts(zoo):
    files = sorted(zoo.glob("**/*.prototxt"))
    assert len(files) >= 38
    return files


def test_every_zoo_prototxt_parses(zoo):
    from conftest import zoo_manifest

    fmt = {r["path"]: r["format"] for r in zoo_manifest()}
    want = {"V0": "V0", "V1 'layers'": "V1", "V2 'layer'": "V2"}
    for path in _zoo_prototxts(zoo):
        nd = read_prototxt(path)
        assert isinstance(nd, NetDef)
        assert nd.text == path.read_text(encoding="utf-8")  # verbatim
        assert nd.format == want[fmt[str(path.relative_to(zoo))]]
        assert nd.skipped == []  # our schema knows every name the zoo uses
        assert nd.layers == [(lp.name, lp.type) for lp in nd.net.layer]
        assert not nd.net.layers and not nd.net.input
        assert all(t for _, t in nd.layers), path.name


def _opencv_view(net):
    names = list(net.getLayerNames())
    counts = {t: net.getLayersCount(t) for t in net.getLayerTypes()}
    counts.pop("__NetInputLayer__", None)
    return names, counts


def _manifest_layer_count(row) -> int | None:
    import re

    m = re.search(r"parses \((\d+) layers\)", row["notes"])
    return int(m.group(1)) if m else None


def test_layers_agree_with_opencv(zoo):
    from conftest import zoo_manifest

    rows = {r["path"]: r for r in zoo_manifest()}
    compared = typed = 0
    for path in _zoo_prototxts(zoo):
        nd = read_prototxt(path)
        try:
            net = cv2.dnn.readNetFromCaffe(str(path))
        except cv2.error:
            # only the AlexNet train_val (duplicate tops) is refused by OpenCV
            assert path.name == "bvlc_alexnet_train_val.prototxt"
            continue
        ours = [(n, t) for n, t in nd.layers if t != "Input"]
        names, counts = _opencv_view(net)
        assert names == [n for n, _ in ours], path.name
        assert counts == dict(collections.Counter(t for _, t in ours)), path.name
        want = _manifest_layer_count(rows[str(path.relative_to(zoo))])
        if want is not None:
            assert len(names) == want
        for name, t in ours:
            try:
                layer = net.getLayer(name)
            except cv2.error:
                continue  # needs weights to be built (e.g. PReLU)
            assert layer.type == t, (path.name, name)
            typed += 1
        compared += 1
    assert compared == 37 and typed > 2900  # of 3616; the rest need weights to be built


# (prototxt, caffemodel) pairs OpenCV loads; the retrained MTCNN det2/det3
# prototxts are swapped upstream (MANIFEST).
PAIRS = [
    ("mtcnn/det1.prototxt", "mtcnn/det1.caffemodel"),
    ("mtcnn/det4.prototxt", "mtcnn/det4.caffemodel"),
    ("mtcnn-retrained/det1.prototxt", "mtcnn-retrained/det1.caffemodel"),
    ("mtcnn-retrained/det2.prototxt", "mtcnn-retrained/det3.caffemodel"),
    ("ultraface/RFB-320.prototxt", "ultraface/RFB-320.caffemodel"),
    ("yufacedetectnet/yufacedetectnet-open-v1.prototxt", "yufacedetectnet/yufacedetectnet-open-v1.caffemodel"),
    ("lenet-mnist-v1/lenet.prototxt", "lenet-mnist-v1/lenet_iter_10000.caffemodel"),
]


@pytest.mark.parametrize("proto,model", PAIRS, ids=[p for p, _ in PAIRS])
def test_every_layer_type_agrees_with_opencv_when_weights_load(zoo, proto, model):
    nd = read_prototxt(zoo / proto)
    net = cv2.dnn.readNetFromCaffe(str(zoo / proto), str(zoo / model))
    ours = [(n, t) for n, t in nd.layers if t != "Input"]
    theirs = [(n, net.getLayer(n).type) for n in net.getLayerNames()]
    assert theirs == ours


def test_input_shapes_match_manifest(zoo):
    from conftest import zoo_manifest

    import re

    checked = 0
    for row in zoo_manifest():
        m = re.search(r"input via (Input layer|input_dim|input_shape) (\d+(?:x\d+)*)", row["notes"])
        if not (m and row["path"].endswith(".prototxt")):
            continue
        nd = read_prototxt(zoo / row["path"])
        shape = tuple(int(d) for d in m.group(2).split("x"))
        assert list(nd.input_shapes.values()) == [shape], row["path"]
        checked += 1
    assert checked >= 30


def test_input_shapes_agree_with_opencv_forward(zoo):
    """OpenCV runs LeNet at the prototxt's input shape: our shape feeds it."""
    import numpy as np

    nd = read_prototxt(zoo / "lenet-mnist" / "mnist_deploy.prototxt")
    ((name, shape),) = nd.input_shapes.items()
    net = cv2.dnn.readNetFromCaffe(str(zoo / "lenet-mnist" / "mnist_deploy.prototxt"),
                                   str(zoo / "lenet-mnist" / "lenet_iter_10000.caffemodel"))
    net.setInput(np.zeros(shape, np.float32), name)
    assert net.forward().shape == (shape[0], 10)


# ---------------------------------------------------------------- lenient parse

FORK_NET = """\
name: "forky"
input: "data"
input_shape { dim: 1 dim: 3 dim: 32 dim: 32 }
layer {
  name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 engine_x: CUDNN }
}
layer {
  name: "up" type: "Interp" bottom: "conv1" top: "up"
  interp_param { zoom_factor: 2 nested { a: 1 b: [1, 2] } s: "x" 'y' }
}
layer { name: "up2" type: "Interp" bottom: "up" top: "up2" interp_param { zoom_factor: 2 } }
"""


def test_unknown_fields_are_skipped_and_reported(tmp_path):
    p = tmp_path / "fork.prototxt"
    p.write_text(FORK_NET)
    nd = read_prototxt(p)
    assert nd.skipped == ["layer.convolution_param.engine_x", "layer.interp_param"]
    assert [(s.path, s.line, s.layer) for s in nd.skipped_at] == [
        ("layer.convolution_param.engine_x", 6, "conv1"),
        ("layer.interp_param", 10, "up"),
        ("layer.interp_param", 12, "up2"),
    ]
    assert nd.layers == [("input", "Input"), ("conv1", "Convolution"), ("up", "Interp"), ("up2", "Interp")]
    assert nd.net.layer[1].convolution_param.num_output == 8  # known siblings kept
    assert nd.input_shapes == {"data": (1, 3, 32, 32)}
    assert nd.text == FORK_NET
    # OpenCV reads unknown *_param blocks of flat "name: value" pairs too
    simple = tmp_path / "simple.prototxt"
    simple.write_text(FORK_NET.replace(" engine_x: CUDNN", "").replace(
        " nested { a: 1 b: [1, 2] } s: \"x\" 'y'", ""))
    nd = read_prototxt(simple)
    assert nd.skipped == ["layer.interp_param"] and len(nd.skipped_at) == 2
    net = cv2.dnn.readNetFromCaffe(str(simple))
    assert list(net.getLayerNames()) == [n for n, t in nd.layers if t != "Input"]


def test_v0_lenient_layer_names(tmp_path):
    text = 'input: "d" input_dim: 1 input_dim: 1 input_dim: 4 input_dim: 4\n' \
           'layers { layer { name: "r" type: "relu" weird: 3 } bottom: "d" top: "r" }\n'
    nd = parse_prototxt(text)
    assert nd.format == "V0"
    assert [(s.path, s.layer) for s in nd.skipped_at] == [("layers.layer.weird", "r")]
    assert nd.layers == [("input", "Input"), ("r", "ReLU")]


# ---------------------------------------------------------------- errors


def _error(path) -> FormatError:
    with pytest.raises(FormatError) as e:
        read_prototxt(path)
    assert e.value.path == str(path)
    return e.value


def test_bad_paths(tmp_path):
    assert "no such file" in str(_error(tmp_path / "missing.prototxt"))
    assert "directory" in str(_error(tmp_path))
    if os.geteuid() != 0:
        p = tmp_path / "locked.prototxt"
        p.write_text(FORK_NET)
        p.chmod(0)
        try:
            assert "permission" in str(_error(p))
        finally:
            p.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_binary_given_as_text(zoo):
    e = _error(zoo / "mtcnn" / "det1.caffemodel")
    assert "binary" in str(e)


def test_invalid_text_names_the_line(tmp_path):
    p = tmp_path / "bad.prototxt"
    p.write_text('name: "x"\nlayer {\n  name: "a"\n  type: "ReLU"\n  phase: SOMETIMES\n}\n')
    e = _error(p)
    assert "line 5" in str(e) and "SOMETIMES" in str(e)
    p.write_text('layer {\n  name: "a"\n')  # unterminated
    assert "line" in str(_error(p))


def test_mixed_generations_and_empty_net(tmp_path):
    p = tmp_path / "mixed.prototxt"
    p.write_text('layer { name: "a" type: "ReLU" }\nlayers { name: "b" type: RELU }\n')
    assert "mixes" in str(_error(p))
    p.write_text("# nothing here\n")
    assert "no layers" in str(_error(p))
    p.write_text("base_lr: 0.01\nmax_iter: 100\n")  # a solver file
    e = _error(p)
    assert "solver" in str(e)


def test_unknown_v1_enum_name_is_an_error_not_a_skip(tmp_path):
    p = tmp_path / "v1.prototxt"
    p.write_text('layers { name: "a" type: RELU6 }\n')
    assert "RELU6" in str(_error(p))


def test_blanked_text_parses_like_protobufs_lenient_mode():
    """The fallback for old runtimes (unknown fields blanked out, strict parse)
    gives the same net as protobuf's own skipping, line numbers unchanged."""
    from google.protobuf import text_format

    from caffecompress.caffe.prototxt import _unknown_fields
    from caffecompress.caffe.proto import pb

    found, blanked = _unknown_fields(FORK_NET)
    assert len(found) == 3
    assert blanked.count("\n") == FORK_NET.count("\n") and len(blanked) == len(FORK_NET)
    strict = text_format.Parse(blanked, pb.NetParameter())
    try:
        lenient = text_format.Parse(FORK_NET, pb.NetParameter(), allow_unknown_field=True,
                                    allow_unknown_extension=True)
    except text_format.ParseError:
        pytest.skip("this protobuf runtime cannot skip lists inside unknown fields")
    assert strict == lenient


def test_hostile_nesting_and_large_binary(tmp_path):
    p = tmp_path / "deep.prototxt"
    p.write_text("layer { " + "convolution_param { weight_filler { x { " * 3000 + "} " * 9000 + "}\n")
    assert "invalid prototxt" in str(_error(p))
    big = tmp_path / "big.caffemodel"
    with open(big, "wb") as f:  # sparse: 4 GiB of zeros on disk costs nothing
        f.truncate(4 << 30)
    assert "binary" in str(_error(big))
