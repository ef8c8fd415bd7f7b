"""verify.py: fidelity through OpenCV 4.x, checked against real zoo nets and
against OpenCV's own preprocessing and prototxt parser."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from caffecompress import verify as V  # noqa: E402

# The retrained MTCNN det2/det3 prototxts are swapped upstream (MANIFEST notes).
_SWAPPED = {
    "mtcnn-retrained/det2.caffemodel": "mtcnn-retrained/det3.prototxt",
    "mtcnn-retrained/det3.caffemodel": "mtcnn-retrained/det2.prototxt",
}


def _manifest(zoo: Path) -> list[dict]:
    lines = (zoo / "MANIFEST.tsv").read_text().splitlines()
    head = lines[0].split("\t")
    return [dict(zip(head, ln.split("\t"))) for ln in lines[1:] if ln.strip()]


def _pairs(zoo: Path) -> list[tuple[Path, Path]]:
    rows = _manifest(zoo)
    out = []
    for r in rows:
        p = r["path"]
        if p.startswith("prototxt/") or p.endswith((".prototxt", ".txt", ".binaryproto")):
            continue
        folder, base = p.rsplit("/", 1)
        if p in _SWAPPED:
            proto = _SWAPPED[p]
        else:
            protos = [q["path"] for q in rows if q["path"].startswith(folder + "/") and q["path"].endswith(".prototxt")]
            named = [q for q in protos if q.rsplit("/", 1)[1].split(".")[0] == base.split(".")[0]]
            proto = (named or protos)[0]
        out.append((zoo / p, zoo / proto))
    return out


def _perturbed(model: Path, proto: Path, layer: str, factor: float) -> bytes:
    """The caffemodel bytes with one layer's weight blob scaled, found through OpenCV.

    Independent of our reader: the blob's float32 bytes, as OpenCV decoded
    them, are located in the file and rewritten in place.
    """
    net = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    w = np.asarray(net.getLayer(layer).blobs[0], dtype="<f4")
    raw = bytearray(model.read_bytes())
    pos = raw.find(w.tobytes())
    assert pos >= 0 and raw.find(w.tobytes(), pos + 1) < 0
    raw[pos : pos + w.nbytes] = (w * np.float32(factor)).astype("<f4").tobytes()
    return bytes(raw)


# --------------------------------------------------------------------------- parsing


def _textformat():
    """tools/textformat.py: the synthetic-model tool's own schema-free text reader."""
    import importlib
    import sys
    from pathlib import Path

    tools = str(Path(__file__).resolve().parents[1] / "tools")
    if tools not in sys.path:
        sys.path.insert(0, tools)
    return importlib.import_module("textformat")


def test_text_parser_nested_and_lists():
    msg = _textformat().parse_prototxt_text(
        'name: "n" # comment\nlayer { name: "a" type: "Conv" bottom: "x" top: "y" '
        "param { lr_mult: 1 } } layer < name: 'b' > input_dim: [1, 3, 8, 8]\n"
        's: "con" "cat"'
    )
    assert msg.get("name") == "n"
    layers = msg.all("layer")
    assert [lay.get("name") for lay in layers] == ["a", "b"]
    assert layers[0].get("param").get("lr_mult") == "1"
    assert msg.all("input_dim") == ["1", "3", "8", "8"]
    assert msg.get("s") == "concat"


@pytest.mark.parametrize("bad", ["layer { name: 'a' ", "layer { } }", "a: "])
def test_text_parser_rejects_unbalanced(bad):
    with pytest.raises(ValueError):
        _textformat().parse_prototxt_text(bad)


def test_every_zoo_prototxt_matches_opencv(zoo):
    """Layer names agree with OpenCV's parse; input shapes with the MANIFEST."""
    checked = 0
    for row in _manifest(zoo):
        if not row["path"].endswith(".prototxt"):
            continue
        path = zoo / row["path"]
        spec = V.net_spec(path.read_text())
        m = re.search(r"input via (?:Input layer|input_dim|input_shape) (\d+(?:x\d+)+)", row["notes"])
        if m:
            want = tuple(int(x) for x in m.group(1).split("x"))
            assert list(spec.inputs.values())[0] == want, row["path"]
        try:
            net = cv2.dnn.readNetFromCaffe(str(path))
        except cv2.error:
            continue  # e.g. a train_val net OpenCV refuses
        ours = {lay.name for lay in spec.layers}
        missing = set(net.getLayerNames()) - ours
        assert not missing, (row["path"], sorted(missing)[:5])
        checked += 1
    assert checked >= 20


# --------------------------------------------------------------------------- preprocessing


def test_make_blob_equals_opencv_blobFromImage():
    img = V.sample_images(["astronaut"])[0]
    ours = V.make_blob([img], (1, 3, 40, 56))
    ref = cv2.dnn.blobFromImage(img, scalefactor=1 / 128, size=(56, 40), mean=(127.5, 127.5, 127.5), swapRB=False)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
    ours = V.make_blob([img], (3, 40, 56), mean=[104, 117, 123], scale=0.5, swap_rb=True)
    ref = cv2.dnn.blobFromImage(img, scalefactor=0.5, size=(56, 40), mean=(104, 117, 123), swapRB=True)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)


def test_make_blob_gray_is_channel_average_and_mean_image():
    img = V.sample_images(["coffee"])[0]
    blob = V.make_blob([img], (1, 1, 20, 30))
    rgb = cv2.resize(img, (30, 20)).astype(np.float32)
    np.testing.assert_allclose(blob[0, 0], (rgb.mean(axis=2) - 127.5) / 128, atol=1e-5)
    # a mean image is resized to the input and subtracted per pixel
    mean_img = np.full((3, 8, 8), 10.0, np.float32)
    b2 = V.make_blob([img], (1, 3, 20, 30), mean=mean_img, scale=1.0)
    np.testing.assert_allclose(b2[0], rgb.transpose(2, 0, 1) - 10.0, atol=1e-3)
    with pytest.raises(ValueError):
        V.make_blob([img], (1, 3, 20, 30), mean=[1.0, 2.0])


def test_sample_images_are_bundled_skimage_in_bgr():
    skd = pytest.importorskip("skimage.data")
    ims = V.sample_images()
    assert len(ims) == len(V.SAMPLE_IMAGES)
    np.testing.assert_array_equal(ims[0], skd.astronaut()[..., ::-1])
    assert ims[V.SAMPLE_IMAGES.index("camera")].ndim == 2


def test_sample_images_fallback_without_skimage(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    a, b = V.sample_images(), V.sample_images()
    assert len(a) == len(V.SAMPLE_IMAGES)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert len({x.tobytes() for x in a}) == len(a)


def test_load_images_folder(tmp_path):
    img = V.sample_images(["chelsea"])[0]
    cv2.imwrite(str(tmp_path / "b.png"), img)
    cv2.imwrite(str(tmp_path / "a.png"), img[:, ::-1])
    (tmp_path / "notes.txt").write_text("not an image")
    ims = V.load_images(tmp_path)
    assert len(ims) == 2
    np.testing.assert_array_equal(ims[1], img)
    with pytest.raises(FileNotFoundError):
        V.load_images(_empty(tmp_path))


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return d


# --------------------------------------------------------------------------- targets and metrics

_INPLACE = b"""name: "t"
input: "data"
input_shape { dim: 1 dim: 4 dim: 1 dim: 1 }
layer { name: "pw" type: "Power" bottom: "data" top: "p" power_param { shift: -0.5 } }
layer { name: "relu" type: "ReLU" bottom: "p" top: "p" }
layer { name: "prob" type: "Softmax" bottom: "p" top: "prob" }
"""


def test_softmax_input_follows_inplace_layers():
    net = V.load_net(_INPLACE, b"")
    targets = V._targets(V.net_spec(_INPLACE), net)
    assert [(t.layer, t.kind) for t in targets] == [("relu", "softmax-input"), ("prob", "output")]


def test_detection_output_replaced_by_its_inputs(zoo):
    proto = zoo / "yufacedetectnet/yufacedetectnet-open-v1.prototxt"
    net = cv2.dnn.readNetFromCaffe(str(proto))
    targets = V._targets(V.net_spec(proto.read_text()), net)
    names = [t.name for t in targets if t.kind == "detection-input"]
    assert names == ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"]
    assert all(t.layer != "detection_out" for t in targets)
    assert [t.name for t in targets if t.kind == "softmax-input"] == ["mbox_conf_reshape"]


def test_metrics_against_independent_formulas():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 1, 10)).astype(np.float32)
    b = a + rng.normal(scale=0.1, size=a.shape).astype(np.float32)
    b[2, 0, :] = a[2, 0, ::-1]  # image 2 scrambles the class order
    r = V._metrics(V._Target("x", "x", "output", 1), a, b)
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    assert r.rel_l2 == pytest.approx(np.sqrt(((a64 - b64) ** 2).sum() / (a64**2).sum()), rel=1e-12)
    assert r.cosine == pytest.approx(a64 @ b64 / np.sqrt((a64 @ a64) * (b64 @ b64)), rel=1e-12)
    per = [np.linalg.norm(b[i] - a[i]) / np.linalg.norm(a[i]) for i in range(4)]
    assert r.rel_l2_worst == pytest.approx(max(per), rel=1e-6)
    want_top1 = np.mean(a.argmax(axis=2) == b.argmax(axis=2))
    assert r.top1 == pytest.approx(want_top1) and r.top1 < 1.0
    assert r.shape == (1, 10) and r.n_images == 4
    zero = V._metrics(V._Target("z", "z", "output", None), np.zeros((2, 3)), np.zeros((2, 3)))
    assert zero.rel_l2 == 0 and zero.cosine == 1 and zero.top1 is None
    nonfinite = V._metrics(V._Target("z", "z", "output", None), np.ones((1, 2)), np.array([[1.0, np.nan]]))
    assert nonfinite.rel_l2 == float("inf")


# --------------------------------------------------------------------------- end to end on the zoo


def test_every_zoo_model_against_itself_is_exact(zoo):
    pairs = _pairs(zoo)
    assert len(pairs) >= 15
    for model, proto in pairs:
        reps = V.compare((proto, model), (proto, model))
        assert reps, model
        for r in reps:
            assert r.rel_l2 == 0.0 and r.max_abs == 0.0 and r.cosine == pytest.approx(1.0), (model, r)
            assert r.top1 in (None, 1.0)
        assert V.max_rel_error(reps) == 0.0


def test_perturbed_weights_are_detected(zoo):
    model = zoo / "cifar10-quick/cifar10_quick_iter_5000.caffemodel"
    proto = zoo / "cifar10-quick/cifar10_quick.prototxt"
    text = proto.read_text()
    small = V.compare((text, model.read_bytes()), (text, _perturbed(model, proto, "ip2", 1.001)))
    big = V.compare((text, model.read_bytes()), (text, _perturbed(model, proto, "conv1", -1.0)))
    by = {r.name: r for r in small}
    # ip2 = W x + b feeds the softmax: scaling W by 1.001 moves it by 0.1 % of ||W x||
    assert 1e-4 < by["ip2"].rel_l2 < 2e-3
    assert 0 < V.max_rel_error(small) < 0.01
    assert V.max_rel_error(big) > 0.1
    assert min(r.cosine for r in big) < min(r.cosine for r in small)
    assert "ip2" in V.format_reports(small)


def test_compare_accepts_images_and_size(zoo, tmp_path):
    model = zoo / "mtcnn/det1.caffemodel"
    proto = zoo / "mtcnn/det1.prototxt"
    img = V.sample_images(["astronaut"])[0]
    cv2.imwrite(str(tmp_path / "a.png"), img)
    reps = V.compare((proto, model), (proto, _perturbed(model, proto, "conv1", 1.01)), tmp_path, size=(48, 36))
    # P-Net is fully convolutional: a 48x36 input gives a 19x13 score map per image
    prob = [r for r in reps if r.name == "prob1"][0]
    assert prob.n_images == 1 and prob.shape == (1, 2, 13, 19)
    assert 0 < prob.rel_l2 < 0.1


def test_missing_input_shape_is_a_clear_error():
    proto = b'layer { name: "relu" type: "ReLU" bottom: "x" top: "x" }'
    with pytest.raises(ValueError, match="input"):
        V.compare((proto, b""), (proto, b""), [np.zeros((4, 4), np.uint8)])


def test_compare_accepts_str_paths_and_models(zoo):
    import caffecompress

    model = zoo / "hyperlpr/Segmentation.caffemodel"
    proto = zoo / "hyperlpr/Segmentation.prototxt"
    m = caffecompress.read_caffemodel(model, proto)  # carries its prototxt
    reps = V.compare((str(proto), str(model)), m)
    assert reps and V.max_rel_error(reps) == 0.0
    w = next(lay for lay in reversed(m.layers) if lay.blobs)
    w.blobs[0] = w.blobs[0] * np.float32(1.01)
    assert V.max_rel_error(V.compare((proto, model), m)) > 0


_SLICE = b"""name: "s"
input: "data"
input_shape { dim: 1 dim: 4 dim: 1 dim: 1 }
layer { name: "slice" type: "Slice" bottom: "data" top: "a" top: "b" slice_param { axis: 1 } }
layer { name: "pa" type: "Softmax" bottom: "a" top: "pa" }
layer { name: "pb" type: "Softmax" bottom: "b" top: "pb" }
"""


def test_second_top_of_a_multi_output_layer_is_not_mistaken_for_the_first():
    net = V.load_net(_SLICE, b"")
    targets = V._targets(V.net_spec(_SLICE), net)
    assert ("a", "slice", "softmax-input") in [(t.name, t.layer, t.kind) for t in targets]
    assert "b" not in [t.name for t in targets]
    reps = V.compare((_SLICE, b""), (_SLICE, b""), [np.zeros((2, 2), np.uint8)])
    assert {r.name for r in reps} == {"a", "pa", "pb"} and V.max_rel_error(reps) == 0


def test_opencv_net_from_a_compressed_file(tmp_path):
    import caffecompress as cc

    data = Path(cc.__file__).parent / "data"
    model = cc.read_caffemodel(data / "example.caffemodel", data / "example.prototxt")
    out = tmp_path / "example.ccz.h5"
    cc.save(cc.compress(model, preset="lossless"), out)
    net = cc.opencv_net(out)  # the prototxt stored in the file
    blob = V.make_blob(V.sample_images(["astronaut"]), (1, 3, 32, 32))
    ref = V.load_net(data / "example.prototxt", data / "example.caffemodel")
    for n in (net, ref):
        n.setInput(blob)
    np.testing.assert_array_equal(net.forward(), ref.forward())
    assert V.opencv_net(str(out), prototxt=data / "example.prototxt") is not None


def test_mismatched_weights_give_one_clear_error(zoo, capfd):
    from caffecompress.errors import SchemaMismatchError

    proto = zoo / "cifar10-quick/cifar10_quick.prototxt"
    other = zoo / "mtcnn/det3.caffemodel"  # weights of another net: OpenCV cannot run it
    with pytest.raises(SchemaMismatchError, match="OpenCV 4.x cannot"):
        V.compare((proto, zoo / "cifar10-quick/cifar10_quick_iter_5000.caffemodel"), (proto, other))
    with pytest.raises(SchemaMismatchError):
        V.load_net(b"layer { name: 'x' type: 'NoSuchLayerType' bottom: 'a' top: 'b' }", b"")
    err = capfd.readouterr().err
    assert "getLayerShapesRecursively" not in err  # OpenCV's own log lines are silenced


def test_missing_opencv_is_a_clear_typed_error(monkeypatch):
    """Without OpenCV, verify says which extra to install (no bare ImportError text)."""
    from caffecompress.errors import CaffeCompressError, MissingDependencyError

    monkeypatch.setitem(sys.modules, "cv2", None)  # makes `import cv2` raise ImportError
    with pytest.raises(MissingDependencyError, match=r"caffecompress\[verify\]") as info:
        V.load_net("input: 'data'", b"")
    assert isinstance(info.value, CaffeCompressError) and isinstance(info.value, ImportError)


def test_nets_load_through_a_memory_backed_folder_only_with_room(tmp_path, monkeypatch):
    from caffecompress import runtime

    monkeypatch.setattr(runtime, "_SHM", str(tmp_path))
    assert runtime._scratch(1 << 20) == str(tmp_path)
    assert runtime._scratch(1 << 62) is None  # no room for it: the system's temporary folder
    monkeypatch.setattr(runtime, "_SHM", str(tmp_path / "missing"))
    assert runtime._scratch(1) is None
