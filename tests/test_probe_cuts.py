"""Sensitivity probes on the net from the changed layer on (``allocate._Meter.cut_at``).

A probe changes one layer's weights; the suffix net, fed the float net's
blobs where it starts, must measure what the whole net measures.
"""

from __future__ import annotations


import numpy as np
import pytest

import caffecompress as cc
from caffecompress import allocate as A
from caffecompress import calibrate
from caffecompress.caffe.graph import LayerNode, NetGraph, crossing, net_graph, suffix_prototxts
from zoofiles import with_noisy_weights

_BRANCHY = NetGraph(layers=[
    LayerNode("input", "Input", [], ["data"]),
    LayerNode("a", "Convolution", ["data"], ["a"]),
    LayerNode("relu_a", "ReLU", ["a"], ["a"]),
    LayerNode("b1", "Convolution", ["a"], ["b1"]),
    LayerNode("b2", "Convolution", ["a"], ["b2"]),
    LayerNode("relu_b2", "ReLU", ["b2"], ["b2"]),
    LayerNode("cat", "Concat", ["b1", "b2"], ["cat"]),
    LayerNode("prior", "PriorBox", ["cat", "data"], ["prior"]),
], inputs={"data": (1, 3, 8, 8)})


@pytest.mark.parametrize(("start", "want"), [
    (1, ["data"]),
    (2, ["a", "data"]),  # the in-place ReLU reads its own top: fed as conv a left it
    (4, ["a", "b1", "data"]),  # b1 was made before the cut; PriorBox reads the image
    (5, ["b2", "b1", "data"]),
    (7, ["cat", "data"]),
])
def test_crossing_blobs_are_read_before_written(start, want):
    assert crossing(_BRANCHY, start) == want


def test_writer_is_the_last_first_top_before_the_cut():
    feeds = {"data": np.zeros((2, 3, 8, 8), np.float32)}
    assert A._writer(_BRANCHY, "a", 3, feeds) == ("layer", "relu_a")
    assert A._writer(_BRANCHY, "a", 2, feeds) == ("layer", "a")
    assert A._writer(_BRANCHY, "data", 5, feeds) == ("input", "data")
    g = NetGraph(layers=[LayerNode("s", "Slice", ["data"], ["x", "y"])], inputs={"data": (1, 2)})
    assert A._writer(g, "y", 1, feeds) is None  # a second top cannot be fetched by layer name


def test_a_leniently_parsed_net_has_no_suffixes():
    text = ('input: "data" input_shape { dim: 1 dim: 1 dim: 4 dim: 4 }\n'
            'layer { name: "c" type: "Convolution" bottom: "data" top: "c"\n'
            '  convolution_param { num_output: 1 kernel_size: 1 } made_up_param { x: 1 } }\n')
    assert suffix_prototxts(text, {1: {"data": (1, 1, 4, 4)}}) == {}
    ok = text.replace(" made_up_param { x: 1 }", "")
    out = suffix_prototxts(ok, {1: {"data": (1, 1, 4, 4)}})
    assert list(out) == [1] and 'type: "Input"' in out[1] and 'name: "c"' in out[1]


def _suffix_as_one_message(text, start, feeds):
    """The suffix built as one NetParameter and printed whole (the reference)."""
    from google.protobuf import text_format

    from caffecompress.caffe.proto import pb
    from caffecompress.caffe.prototxt import parse_prototxt

    nd = parse_prototxt(text)
    net = pb.NetParameter()
    if nd.net.name:
        net.name = nd.net.name
    if feeds:
        inp = net.layer.add(name="caffecompress_suffix_input", type="Input")
        for blob, shape in feeds.items():
            inp.top.append(blob)
            inp.input_param.shape.add().dim.extend(shape)
    for lp in nd.net.layer[start:]:
        net.layer.add().CopyFrom(lp)
    return text_format.MessageToString(net)


@pytest.mark.parametrize("rel", ["ultraface/RFB-320", "mtcnn/det4", "lenet-mnist-v1/lenet"])
def test_suffix_texts_are_the_whole_messages_printed(zoo, rel):
    # the suffixes are joined from each layer's text printed once
    text = (zoo / (rel + ".prototxt")).read_text()
    g = net_graph(text)
    cuts = {i: {b: (2, 3, 4, 5) for b in crossing(g, i)} for i in range(0, len(g.layers), 3)}
    out = suffix_prototxts(text, cuts)
    assert sorted(out) == sorted(cuts)
    for start, feeds in cuts.items():
        assert out[start] == _suffix_as_one_message(text, start, feeds), start


@pytest.mark.parametrize(("rel", "min_cuts"), [
    ("mtcnn/det4", 13),  # Slice's second tops: those branches keep the whole net
    ("ultraface/RFB-320", 52),  # Concat, depthwise, priors fed from the image
])
def test_suffix_probes_measure_what_the_whole_net_measures(zoo, rel, min_cuts):
    pytest.importorskip("cv2")
    m = cc.read_caffemodel(zoo / (rel + ".caffemodel"), prototxt=zoo / (rel + ".prototxt"))
    g = net_graph(m.prototxt)
    cal = calibrate.calibration_inputs(g.inputs, rows=6)
    probe = A._Meter(m, g, cal.feeds).rows(np.array([0, 3]))
    names = [lay.name for lay in m.layers if lay.type in ("Convolution", "InnerProduct")]
    probe.cut_at(m, g, names)
    assert len(probe.cuts) >= min_cuts
    rng = np.random.default_rng(0)
    for name in list(probe.cuts)[::3]:
        qm = with_noisy_weights(m, name, rng)
        whole, cut = probe.sq_errors(qm), probe.sq_errors(qm, at=name)
        assert whole.max() > 0, name
        np.testing.assert_allclose(cut, whole, rtol=1e-3, atol=1e-9 * whole.max(), err_msg=name)
        assert probe.sq_errors(m, at=name).max() <= 1e-9  # float weights: the reference
