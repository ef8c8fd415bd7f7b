"""A net's large fully connected tail run in NumPy beside OpenCV (``caffecompress.headnet``).

``runtime.model_net`` splits such a net; every layer's output, the net's
outputs and its layer names must be what the whole net in OpenCV gives,
and the allocator's probes on a split net must measure what they measure
on the whole one. The zoo's tails are below the size that splits, so the
threshold is lowered here.
"""

from __future__ import annotations


import numpy as np
import pytest

import caffecompress as cc
from caffecompress import allocate as A
from caffecompress import calibrate, headnet, runtime
from caffecompress.caffe.graph import LayerNode, NetGraph, net_graph, prefix_prototxt
from caffecompress.errors import SchemaMismatchError
from caffecompress.model import Layer, Model
from zoofiles import with_noisy_weights

CASES = [
    ("lenet-mnist/lenet_iter_10000", "lenet-mnist/mnist_deploy", 5),  # ip1 relu1 ip2 Softmax
    ("lenet-mnist-v1/lenet_iter_10000", "lenet-mnist-v1/lenet", None),  # V1 net: start found below
    ("cifar10-quick/cifar10_quick_iter_5000", "cifar10-quick/cifar10_quick", 10),
    ("mtcnn/det3", "mtcnn/det3", 15),  # three products of one blob: three outputs
]


def _model(zoo, w, p):
    return cc.read_caffemodel(zoo / (w + ".caffemodel"), prototxt=zoo / (p + ".prototxt"))


def test_zoo_tails_stay_in_opencv_at_the_shipped_threshold(zoo):
    # the zoo's largest tail (lenet-mnist's ip1+ip2, 405K weights) is far below it
    for w, p, _ in CASES:
        m = _model(zoo, w, p)
        assert headnet.tail_start(net_graph(m.prototxt), m) is None


@pytest.mark.parametrize(("w", "p", "start"), CASES)
def test_split_net_gives_every_layer_as_opencv(zoo, monkeypatch, w, p, start):
    pytest.importorskip("cv2")
    m = _model(zoo, w, p)
    g = net_graph(m.prototxt)
    monkeypatch.setattr(headnet, "MIN_WEIGHTS", 0)
    got = headnet.tail_start(g, m)
    assert got == (start if start is not None else next(i for i, lay in enumerate(g.layers) if lay.name == "ip1"))
    split = runtime.model_net(m)
    monkeypatch.setattr(headnet, "MIN_WEIGHTS", 1 << 60)
    whole = runtime.model_net(m)
    assert type(split).__name__ == "_SplitNet" and type(whole).__name__ != "_SplitNet"
    assert set(split.getLayerNames()) == set(whole.getLayerNames())
    assert sorted(split.getUnconnectedOutLayersNames()) == sorted(whole.getUnconnectedOutLayersNames())
    rng = np.random.default_rng(1)
    feeds = {k: rng.standard_normal((3,) + tuple(v[1:])).astype(np.float32) for k, v in g.inputs.items()}
    names = [lay.name for lay in g.layers if lay.type != "Input"]
    a = runtime.run_net(split, feeds, names)
    b = runtime.run_net(whole, feeds, names)
    for name, x, y in zip(names, a, b):
        assert x.shape == y.shape, name
        np.testing.assert_allclose(x, y, rtol=0, atol=2e-6 * float(np.abs(y).max()), err_msg=name)
    # one image through the per-image interface gives the batch's first row
    for k, v in feeds.items():
        split.setInput(np.ascontiguousarray(v[:1]), k)
    for name, x, y in zip(names, split.forward(names), a):
        np.testing.assert_allclose(x, y[0], rtol=0, atol=2e-6 * float(np.abs(y).max()), err_msg=name)
    # the compared outputs, as the allocator and verify pick them
    assert ([(t.name, t.layer, t.kind) for t in runtime.compared_outputs(g.layers, g.inputs, split)]
            == [(t.name, t.layer, t.kind) for t in runtime.compared_outputs(g.layers, g.inputs, whole)])


def test_probes_on_a_split_net_measure_as_on_the_whole_net(zoo, monkeypatch):
    # the cut at ip1 feeds the tail straight from the suffix's Input layer (no trunk net)
    pytest.importorskip("cv2")
    m = _model(zoo, "lenet-mnist/lenet_iter_10000", "lenet-mnist/mnist_deploy")
    g = net_graph(m.prototxt)
    cal = calibrate.calibration_inputs(g.inputs, rows=6)
    rng = np.random.default_rng(0)
    got = {}
    for label, floor in (("split", 0), ("whole", 1 << 60)):
        monkeypatch.setattr(headnet, "MIN_WEIGHTS", floor)
        probe = A._Meter(m, g, cal.feeds).rows(np.array([0, 3, 5]))
        probe.cut_at(m, g, ["conv2", "ip1", "ip2"])
        errs = []
        for name in ("conv2", "ip1", "ip2"):
            qm = with_noisy_weights(m, name, rng)
            errs.append((probe.sq_errors(qm), probe.sq_errors(qm, at=name)))
        got[label] = errs
        rng = np.random.default_rng(0)  # the same noise for the other net
    for (ws, cs), (ww, cw) in zip(got["split"], got["whole"]):
        assert ww.max() > 0
        np.testing.assert_allclose(ws, ww, rtol=1e-3)
        np.testing.assert_allclose(cs, cw, rtol=1e-3)
        np.testing.assert_allclose(cs, ws, rtol=1e-3)


def _fc_net(slope=0.0, transpose=False, bias=True):
    g = NetGraph(layers=[
        LayerNode("input", "Input", [], ["data"]),
        LayerNode("fc", "InnerProduct", ["data"], ["fc"], transpose=transpose, bias_term=bias, num_output=5),
        LayerNode("act", "ReLU", ["fc"], ["fc"], slope=slope),
        LayerNode("drop", "Dropout", ["fc"], ["fc"]),
        LayerNode("fc2", "InnerProduct", ["fc"], ["out"], num_output=4),
        LayerNode("prob", "Softmax", ["out"], ["prob"]),
    ], inputs={"data": (1, 2, 3, 2)})
    rng = np.random.default_rng(2)
    w = rng.standard_normal((5, 12)).astype(np.float32)
    blobs = [w.T.copy() if transpose else w] + ([rng.standard_normal(5).astype(np.float32)] if bias else [])
    w2 = rng.standard_normal((4, 5)).astype(np.float32)
    m = Model(layers=[Layer("fc", "InnerProduct", blobs), Layer("fc2", "InnerProduct", [w2, np.zeros(4, np.float32)])])
    return g, m, w, (blobs[1] if bias else 0.0), w2


@pytest.mark.parametrize(("slope", "transpose", "bias"), [(0.0, False, True), (0.25, True, False)])
def test_tail_is_the_layers_arithmetic(monkeypatch, slope, transpose, bias):
    g, m, w, b, w2 = _fc_net(slope, transpose, bias)
    monkeypatch.setattr(headnet, "MIN_WEIGHTS", 60)
    assert headnet.tail_start(g, m) == 1
    t = headnet.Tail(g, 1, m)
    assert t.feed == "data" and t.outputs == ["prob"]
    x = np.random.default_rng(3).standard_normal((2, 2, 3, 2)).astype(np.float32)
    out = t.run(x, ["fc", "act", "prob"])
    y = x.reshape(2, 12) @ w.T + b
    np.testing.assert_allclose(out["fc"], y, rtol=1e-6, atol=1e-6)
    a = np.where(y > 0, y, slope * y)
    np.testing.assert_allclose(out["act"], a, rtol=1e-6, atol=1e-6)
    z = a @ w2.T
    p = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(out["prob"], p / p.sum(1, keepdims=True), rtol=1e-5)
    monkeypatch.setattr(headnet, "MIN_WEIGHTS", 81)  # the two products hold 60 + 20 weights
    assert headnet.tail_start(g, m) is None


def test_a_tail_that_does_not_fit_its_weights_is_a_typed_error(monkeypatch):
    g, m, *_ = _fc_net()
    monkeypatch.setattr(headnet, "MIN_WEIGHTS", 0)
    t = headnet.Tail(g, 1, m)
    with pytest.raises(SchemaMismatchError, match="'fc'.*InnerProduct"):
        t.run(np.zeros((1, 2, 3, 3), np.float32), ["prob"])
    # 6 inputs divide the 60 weights but num_output is 5: still an error, not 10 outputs
    with pytest.raises(SchemaMismatchError, match="60 weights are not num_output 5 x 6 inputs"):
        t.run(np.zeros((1, 6), np.float32), ["prob"])


def test_no_tail_where_the_products_read_two_blobs_or_none_exist():
    g = NetGraph(layers=[
        LayerNode("input", "Input", [], ["a", "b"]),
        LayerNode("fa", "InnerProduct", ["a"], ["fa"]),
        LayerNode("fb", "InnerProduct", ["b"], ["fb"]),
    ], inputs={"a": (1, 4), "b": (1, 4)})
    m = Model(layers=[Layer("fa", "InnerProduct", [np.zeros((2, 4), np.float32)]),
                      Layer("fb", "InnerProduct", [np.zeros((2, 4), np.float32)])])
    assert headnet.tail_start(g, m) is None  # two blobs cross into the tail
    g2 = NetGraph(layers=[LayerNode("input", "Input", [], ["a"]), LayerNode("r", "ReLU", ["a"], ["a"])],
                  inputs={"a": (1, 4)})
    assert headnet.tail_start(g2, Model(layers=[])) is None  # no product


def test_prefix_prototxt_keeps_the_inputs_and_the_layers_before():
    text = ('input: "data" input_shape { dim: 1 dim: 1 dim: 4 dim: 4 }\n'
            'layer { name: "c" type: "Convolution" bottom: "data" top: "c"\n'
            '  convolution_param { num_output: 1 kernel_size: 1 } }\n'
            'layer { name: "r" type: "ReLU" bottom: "c" top: "c" relu_param { negative_slope: 0.5 } }\n'
            'layer { name: "f" type: "InnerProduct" bottom: "c" top: "f" inner_product_param { num_output: 2 } }\n')
    # the input declaration is the V2 net's first layer, as net_graph numbers them
    g = net_graph(prefix_prototxt(text, 3))
    assert [lay.type for lay in g.layers] == ["Input", "Convolution", "ReLU"]
    assert g.inputs == {"data": (1, 1, 4, 4)} and g.layers[2].slope == 0.5


def test_nets_with_large_3x3_convolutions_load_without_winograd(zoo, monkeypatch):
    pytest.importorskip("cv2")
    m = _model(zoo, "mtcnn/det4", "mtcnn/det4")
    g = net_graph(m.prototxt)
    assert runtime._winograd_ok(g, m, len(g.layers))  # the zoo's are far below the limit
    monkeypatch.setattr(runtime, "WINOGRAD_MAX_BYTES", 0)
    assert not runtime._winograd_ok(g, m, len(g.layers))
    seen = []
    load = runtime.load_net
    monkeypatch.setattr(runtime, "load_net", lambda *a, **k: seen.append(k.get("winograd")) or load(*a, **k))
    slow = runtime.model_net(m)
    monkeypatch.setattr(runtime, "WINOGRAD_MAX_BYTES", 1 << 60)
    fast = runtime.model_net(m)
    assert seen == [False, True]
    feeds = {k: np.random.default_rng(4).standard_normal((2,) + tuple(v[1:])).astype(np.float32)
             for k, v in g.inputs.items()}
    outs = [t.layer for t in runtime.compared_outputs(g.layers, g.inputs, fast)]
    for x, y in zip(runtime.run_net(slow, feeds, outs), runtime.run_net(fast, feeds, outs)):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-5 * float(np.abs(y).max()))


def _big_fc_blob(shape=(600, 4000)):
    w = (np.random.default_rng(0).standard_normal(shape) * 0.02).astype(np.float32)
    node = LayerNode("fc", "InnerProduct", ["x"], ["fc"], bias_term=True)
    return A._Blob(0, "fc", w.shape, w, node, None, False, None, None, 0.004, 0.005)


@pytest.mark.parametrize("dq", [False, True])
def test_a_big_blobs_levels_are_its_quantised_values(dq):
    # 2.4M weights: over _KEEP_LABELS, so measured in the compact form
    b = _big_fc_blob()
    if dq:
        c = A._Cand(4, "dq", 0, 0, None, None, None, 0, step=0.005, dq=True)
    else:
        c = A._Cand(4, "uniform", 0, 0, None, None, None, 0, grid=(np.arange(-20, 21) * 0.004).astype(np.float32),
                    step=0.004)
    assert A._compactable(b, c)
    lv = A._quantised(b, c, ("x", 1), compact=True)
    assert isinstance(lv, headnet.Levels) and lv.idx.dtype == np.uint8 and lv.shape == b.shape
    dense = A._quantised(b, c)  # not the memo's key: made again, dense
    assert dense.dtype == np.float32 and np.array_equal(np.asarray(lv), dense)
    assert np.array_equal(A._quantised(b, c, ("x", 1)), dense)  # the memo, made dense for a caller that asks so
    assert np.array_equal(lv.rows(5, 9, 4000), dense[5:9])


def test_a_tail_gives_the_same_outputs_from_levels_and_from_their_floats(monkeypatch):
    g = NetGraph(layers=[LayerNode("input", "Input", [], ["data"]),
                         LayerNode("fc", "InnerProduct", ["data"], ["fc"], bias_term=True),
                         LayerNode("prob", "Softmax", ["fc"], ["prob"])], inputs={"data": (1, 4000)})
    b = _big_fc_blob()
    c = A._Cand(4, "dq", 0, 0, None, None, None, 0, step=0.005, dq=True)
    lv = A._levels_of(b, c)
    bias = np.linspace(-1, 1, 600).astype(np.float32)
    monkeypatch.setattr(headnet, "MIN_WEIGHTS", 0)
    x = np.random.default_rng(5).standard_normal((3, 4000)).astype(np.float32)
    outs = [headnet.Tail(g, 1, Model(layers=[Layer("fc", "InnerProduct", [w, bias])])).run(x, ["fc", "prob"])
            for w in (lv, np.asarray(lv))]
    for name in ("fc", "prob"):
        assert np.array_equal(outs[0][name], outs[1][name]), name


def test_a_product_takes_its_weights_in_any_shape_of_num_output_x_inputs(monkeypatch):
    # as OpenCV does: (N, K), (1, 1, N, K) and (N, C, H, W) hold the same matrix
    g, m, w, b, _ = _fc_net()
    x = np.random.default_rng(6).standard_normal((2, 2, 3, 2)).astype(np.float32)
    want = x.reshape(2, 12) @ w.T + b
    for shape in ((1, 1, 5, 12), (5, 2, 3, 2)):
        layers = [Layer("fc", "InnerProduct", [w.reshape(shape), m.layers[0].blobs[1]]), m.layers[1]]
        got = headnet.Tail(g, 1, Model(layers=layers)).run(x, ["fc"])["fc"]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=str(shape))
