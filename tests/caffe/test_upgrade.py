"""V0/V1 -> V2 upgrade, checked against real legacy files and Caffe's rules."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caffecompress.caffe.proto import pb
from caffecompress.caffe.upgrade import (
    V1_TYPE_NAMES,
    blob_shape,
    detect_format,
    needs_upgrade,
    upgrade_net,
    v0_type_to_v1,
    v1_type_name,
)
from caffecompress.errors import FormatError


def _parse(path) -> "pb.NetParameter":
    return text_format.Parse(path.read_text(encoding="utf-8"), pb.NetParameter())


def _text(s: str):
    return text_format.Parse(s, pb.NetParameter())


# ---------------------------------------------------------------- detection


def test_detect_format_on_zoo(zoo):
    from conftest import zoo_manifest

    want = {"V0": "V0", "V1 'layers'": "V1", "V2 'layer'": "V2"}
    seen = set()
    for row in zoo_manifest():
        if row["path"].endswith(".prototxt"):
            got = detect_format(_parse(zoo / row["path"]))
            assert got == want[row["format"]], row["path"]
            seen.add(got)
        elif row["path"].endswith(".caffemodel") and int(row["bytes"]) < 1_200_000:
            # (the big ones parse slowly on pure-Python protobuf 3.20; test_schema reads them all)
            net = pb.NetParameter.FromString((zoo / row["path"]).read_bytes())
            assert detect_format(net) == want[row["format"]], row["path"]
    assert seen == {"V0", "V1", "V2"}


def test_mixed_layer_and_layers_is_refused():
    net = _text('layer { name: "a" type: "ReLU" } layers { name: "b" type: RELU }')
    with pytest.raises(FormatError, match="mixes"):
        detect_format(net)
    with pytest.raises(ValueError):  # FormatError is a ValueError for legacy callers
        upgrade_net(net)


# ---------------------------------------------------------------- V0 -> V1 -> V2


def test_v0_upgrade_equals_caffes_own_v1_output(zoo):
    """The zoo's 2014 V1 CaffeNet deploy is Caffe's upgrade of its V0 twin:
    upgrading either to V2 must give the very same net."""
    v0 = _parse(zoo / "prototxt" / "caffenet_v0_imagenet_deploy_2014.prototxt")
    v1 = _parse(zoo / "prototxt" / "caffenet_v1_imagenet_deploy_2014.prototxt")
    assert (detect_format(v0), detect_format(v1)) == ("V0", "V1")
    a, src_a = upgrade_net(v0)
    b, src_b = upgrade_net(v1)
    assert a == b
    assert src_a == src_b == [None] + list(range(len(v0.layers)))
    conv1 = a.layer[1]
    assert (conv1.name, conv1.type) == ("conv1", "Convolution")
    assert list(conv1.convolution_param.kernel_size) == [11]
    assert [(p.lr_mult, p.decay_mult) for p in conv1.param] == [(1, 1), (2, 0)]
    assert a.layer[0].type == "Input" and list(a.layer[0].input_param.shape[0].dim) == [10, 3, 227, 227]
    assert not a.input and not a.input_dim and not a.layers


def test_v0_data_layer_fields(zoo):
    net = _parse(zoo / "prototxt" / "cifar10_quick_v0_train_2014.prototxt")
    v2, src = upgrade_net(net)
    data = v2.layer[0]
    assert (data.name, data.type) == ("cifar", "Data")
    assert data.data_param.source == "cifar10-leveldb/cifar-train-leveldb"
    assert data.data_param.batch_size == 100
    assert data.transform_param.mean_file == "mean.binaryproto"
    assert not data.data_param.HasField("mean_file")
    conv1 = v2.layer[1]
    assert list(conv1.convolution_param.pad) == [2]
    assert conv1.convolution_param.weight_filler.type == "gaussian"
    assert [p.lr_mult for p in conv1.param] == [1, 2]
    pool1 = v2.layer[2]
    assert pool1.pooling_param.kernel_size == 3 and pool1.pooling_param.stride == 2
    assert src == list(range(len(net.layers)))
    # every V0 type in the file has a V2 string
    assert all(lp.type for lp in v2.layer)


V0_PADDING_NET = """
name: "padded"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
layers { layer { name: "conv1" type: "conv" num_output: 4 kernelsize: 3
                 blobs { num: 4 channels: 3 height: 3 width: 3 }
                 blobs { num: 1 channels: 1 height: 1 width: 4 } }
         bottom: "pad1" top: "conv1" }
layers { layer { name: "pad2" type: "padding" pad: 1 } bottom: "conv1" top: "pad2" }
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 2 stride: 2 } bottom: "pad2" top: "pool1" }
layers { layer { name: "fc" type: "innerproduct" num_output: 2 biasterm: false kernelsize: 5 }
         bottom: "pool1" top: "fc" }
"""


def test_v0_padding_layers_fold_into_consumers():
    notes: list = []
    v2, src = upgrade_net(_text(V0_PADDING_NET), notes=notes)
    assert [(lp.name, lp.type) for lp in v2.layer] == [
        ("input", "Input"), ("conv1", "Convolution"), ("pool1", "Pooling"), ("fc", "InnerProduct"),
    ]
    assert src == [None, 1, 3, 4]  # padding records 0 and 2 produce no layer
    conv1, pool1, fc = v2.layer[1:]
    assert list(conv1.bottom) == ["data"] and list(conv1.convolution_param.pad) == [2]
    assert list(pool1.bottom) == ["conv1"] and pool1.pooling_param.pad == 1
    assert pool1.pooling_param.pool == pb.PoolingParameter.AVE
    assert fc.inner_product_param.bias_term is False
    # the blobs moved along, legacy dims became shapes
    assert [tuple(b.shape.dim) for b in conv1.blobs] == [(4, 3, 3, 3), (1, 1, 1, 4)]
    assert not any(b.HasField("num") for b in conv1.blobs)
    # kernelsize on an innerproduct layer: Caffe logs it and carries on
    assert notes == ["layer 'fc': V0 field 'kernelsize' has no meaning for type 'innerproduct'; dropped"]


def test_v0_padding_into_relu_is_fatal():
    bad = V0_PADDING_NET.replace('type: "pool" pool: AVE kernelsize: 2 stride: 2', 'type: "relu"')
    with pytest.raises(FormatError) as e:
        upgrade_net(_text(bad))
    assert e.value.layer == "pool1"


def test_v0_unknown_type_and_unknown_bottom():
    with pytest.raises(FormatError, match="unknown V0 layer type 'warp'"):
        upgrade_net(_text('layers { layer { name: "x" type: "warp" } }'))
    with pytest.raises(FormatError, match="unknown input blob"):
        upgrade_net(_text('layers { layer { name: "x" type: "relu" } bottom: "nowhere" top: "y" }'))


def test_v1_param_specs_and_share_modes():
    net = _text(
        'layers { name: "ip" type: INNER_PRODUCT bottom: "x" top: "y"'
        ' param: "w" param: "b" blob_share_mode: PERMISSIVE blobs_lr: 1 blobs_lr: 2 weight_decay: 0.5'
        ' loss_weight: 3 include { phase: TEST } inner_product_param { num_output: 7 } }'
    )
    v2, src = upgrade_net(net)
    lp = v2.layer[0]
    assert (lp.name, lp.type, src) == ("ip", "InnerProduct", [0])
    assert [p.name for p in lp.param] == ["w", "b"]
    assert lp.param[0].share_mode == pb.ParamSpec.PERMISSIVE
    assert not lp.param[1].HasField("share_mode")
    assert [(p.lr_mult, p.decay_mult) for p in lp.param] == [(1, 0.5), (2, 1)]
    assert not lp.param[1].HasField("decay_mult")  # unset: Caffe's default 1 applies
    assert list(lp.loss_weight) == [3] and lp.include[0].phase == pb.TEST
    assert lp.inner_product_param.num_output == 7


def test_v1_data_transformation_moves_to_transform_param():
    net = _text(
        'layers { name: "d" type: DATA top: "data" data_param { source: "db" scale: 0.5 mirror: true crop_size: 9 } }'
        'layers { name: "i" type: IMAGE_DATA top: "im" image_data_param { mean_file: "m.bp" } }'
    )
    v2, _ = upgrade_net(net)
    d, i = v2.layer
    assert d.transform_param.scale == 0.5 and d.transform_param.mirror and d.transform_param.crop_size == 9
    assert d.data_param.source == "db"
    assert not any(d.data_param.HasField(f) for f in ("scale", "mirror", "crop_size"))
    assert i.transform_param.mean_file == "m.bp" and not i.image_data_param.HasField("mean_file")


def test_v1_type_names_cover_the_enum():
    enum = pb.V1LayerParameter.LayerType
    assert set(V1_TYPE_NAMES) == set(enum.values())
    assert v1_type_name(pb.V1LayerParameter.SOFTMAX_LOSS) == "SoftmaxWithLoss"
    assert v1_type_name(pb.V1LayerParameter.NONE) == ""
    assert v0_type_to_v1("images") == pb.V1LayerParameter.IMAGE_DATA
    with pytest.raises(FormatError):
        v1_type_name(99)


def test_v1_caffemodels_upgrade_with_blobs(zoo):
    for rel in ("lenet-mnist-v1/lenet_iter_10000.caffemodel", "cifar10-quick-v1/cifar10_quick_iter_5000.caffemodel"):
        net = pb.NetParameter.FromString((zoo / rel).read_bytes())
        v2, src = upgrade_net(net)
        assert len(v2.layer) == len(net.layers) and src == list(range(len(net.layers)))
        for lp, i in zip(v2.layer, src):
            rec = net.layers[i]
            assert lp.name == rec.name and lp.type == v1_type_name(rec.type)
            assert len(lp.blobs) == len(rec.blobs)
            for b2, b1 in zip(lp.blobs, rec.blobs):
                assert tuple(b2.shape.dim) == blob_shape(b1)
                assert b2.data == b1.data  # values moved along untouched
        assert not needs_upgrade(v2)
    # the V1 LeNet snapshot and its V2 twin (another repo) agree on weight layers
    import numpy as np

    def weights(n):
        return [(lp.name, lp.type, [int(np.prod(b.shape.dim)) for b in lp.blobs]) for lp in n.layer if lp.blobs]

    v1 = pb.NetParameter.FromString((zoo / "lenet-mnist-v1/lenet_iter_10000.caffemodel").read_bytes())
    v2_twin = pb.NetParameter.FromString((zoo / "lenet-mnist/lenet_iter_10000.caffemodel").read_bytes())
    assert weights(upgrade_net(v1)[0]) == weights(v2_twin)


def test_skeleton_without_data_upgrades():
    """A stripped caffemodel (shapes only) upgrades like the full one."""
    net = _text(
        'layers { name: "c" type: CONVOLUTION blobs { num: 2 channels: 1 height: 3 width: 3 }'
        ' blobs { shape { dim: 2 } } }'
    )
    v2, src = upgrade_net(net)
    assert [tuple(b.shape.dim) for b in v2.layer[0].blobs] == [(2, 1, 3, 3), (2,)]
    assert not v2.layer[0].blobs[0].data


# ---------------------------------------------------------------- inputs, BatchNorm, V2


def test_input_dim_and_input_shape_become_input_layer(zoo):
    for rel, dims in (("prototxt/resnet50_deploy.prototxt", [1, 3, 224, 224]),
                      ("prototxt/squeezenet_v1.0_deploy.prototxt", [10, 3, 227, 227])):
        net = _parse(zoo / rel)
        v2, src = upgrade_net(net)
        first = v2.layer[0]
        assert (first.name, first.type, list(first.top)) == ("input", "Input", list(net.input))
        assert list(first.input_param.shape[0].dim) == dims
        assert src == [None] + list(range(len(net.layer)))
        assert [lp.name for lp in v2.layer[1:]] == [lp.name for lp in net.layer]


def test_inputs_without_shapes_are_dropped():
    v2, src = upgrade_net(_text('input: "data" layer { name: "r" type: "ReLU" bottom: "data" top: "r" }'))
    assert [lp.name for lp in v2.layer] == ["r"] and src == [0] and not v2.input


def test_too_few_input_dims():
    with pytest.raises(FormatError, match="input_dim"):
        upgrade_net(_text('input: "a" input: "b" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8'))


def test_batchnorm_three_params_frozen():
    net = _text(
        'layer { name: "bn" type: "BatchNorm" param { lr_mult: 1 } param { lr_mult: 1 } param { lr_mult: 1 } }'
        'layer { name: "bn2" type: "BatchNorm" param { lr_mult: 1 } }'
    )
    v2, _ = upgrade_net(net)
    assert [(p.lr_mult, p.decay_mult) for p in v2.layer[0].param] == [(0, 0)] * 3
    assert v2.layer[1].param[0].lr_mult == 1


def test_v2_nets_pass_through_unchanged(zoo):
    for rel in ("lenet-mnist/lenet_iter_10000.caffemodel", "ultraface/RFB-320.caffemodel"):
        net = pb.NetParameter.FromString((zoo / rel).read_bytes())
        assert not needs_upgrade(net)
        v2, src = upgrade_net(net)
        assert v2 == net and src == list(range(len(net.layer)))
        assert v2 is not net


def test_input_is_not_modified(zoo):
    net = _parse(zoo / "prototxt" / "caffenet_v0_imagenet_deploy_2014.prototxt")
    before = net.SerializeToString()
    upgrade_net(net)
    assert net.SerializeToString() == before


# ---------------------------------------------------------------- generated nets vs OpenCV



@st.composite
def legacy_net_cases(draw):
    """A random chain net: (V0 text, V1 text, weight shapes by layer, input shape).

    V0 convs/pools sometimes take their padding from a "padding" layer.
    """
    hw = draw(st.integers(6, 14))
    c = draw(st.integers(1, 3))
    v0, v1, weights = [], [], {}
    bottom, ch, size = "data", c, hw
    for i in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["conv", "relu", "pool", "lrn", "conv"]))
        name, top = f"{kind}{i}", f"b{i}"
        if kind in ("conv", "pool") and size < 2:
            kind = "relu"
            name = f"relu{i}"
        if kind in ("conv", "pool"):
            k = draw(st.integers(1, min(3, size)))
            pad = draw(st.integers(0, k - 1))
            stride = draw(st.integers(1, 2))
            via_padding = pad > 0 and draw(st.booleans())
            src = bottom
            if via_padding:
                v0.append(f'layers {{ layer {{ name: "pad{i}" type: "padding" pad: {pad} }}'
                          f' bottom: "{bottom}" top: "p{i}" }}')
                src = f"p{i}"
            pad0 = "" if via_padding else f" pad: {pad}"
            if kind == "conv":
                n = draw(st.integers(1, 4))
                v0.append(f'layers {{ layer {{ name: "{name}" type: "conv" num_output: {n} kernelsize: {k}'
                          f' stride: {stride}{pad0} }} bottom: "{src}" top: "{top}" }}')
                v1.append(f'layers {{ name: "{name}" type: CONVOLUTION bottom: "{bottom}" top: "{top}"'
                          f' convolution_param {{ num_output: {n} kernel_size: {k} stride: {stride} pad: {pad} }} }}')
                weights[name] = [(n, ch, k, k), (n,)]
                ch = n
                size = (size + 2 * pad - k) // stride + 1
            else:
                method = draw(st.sampled_from(["MAX", "AVE"]))
                v0.append(f'layers {{ layer {{ name: "{name}" type: "pool" pool: {method} kernelsize: {k}'
                          f' stride: {stride}{pad0} }} bottom: "{src}" top: "{top}" }}')
                v1.append(f'layers {{ name: "{name}" type: POOLING bottom: "{bottom}" top: "{top}"'
                          f' pooling_param {{ pool: {method} kernel_size: {k} stride: {stride} pad: {pad} }} }}')
                out = -(-(size + 2 * pad - k) // stride) + 1
                if pad and (out - 1) * stride >= size + pad:
                    out -= 1
                size = out
        elif kind == "relu":
            v0.append(f'layers {{ layer {{ name: "{name}" type: "relu" }} bottom: "{bottom}" top: "{top}" }}')
            v1.append(f'layers {{ name: "{name}" type: RELU bottom: "{bottom}" top: "{top}" }}')
        else:
            ls = draw(st.sampled_from([1, 3, 5]))
            v0.append(f'layers {{ layer {{ name: "{name}" type: "lrn" local_size: {ls} alpha: 0.5 beta: 0.75 }}'
                      f' bottom: "{bottom}" top: "{top}" }}')
            v1.append(f'layers {{ name: "{name}" type: LRN bottom: "{bottom}" top: "{top}"'
                      f' lrn_param {{ local_size: {ls} alpha: 0.5 beta: 0.75 }} }}')
        bottom = top
    head = f'name: "gen"\ninput: "data"\ninput_dim: 1 input_dim: {c} input_dim: {hw} input_dim: {hw}\n'
    return head + "\n".join(v0) + "\n", head + "\n".join(v1) + "\n", weights, (1, c, hw, hw)


def _weights_file(path, weights, seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    net = pb.NetParameter()
    for name, shapes in weights.items():
        lp = net.layer.add(name=name, type="Convolution")
        for shape in shapes:
            blob = lp.blobs.add()
            blob.shape.dim.extend(shape)
            blob.data.extend(rng.standard_normal(int(np.prod(shape))).astype(np.float32).tolist())
    path.write_bytes(net.SerializeToString())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=legacy_net_cases(), seed=st.integers(0, 2**16))
def test_generated_legacy_nets_run_like_opencvs_own_upgrade(tmp_path, case, seed):
    """OpenCV 4.x upgrades V0/V1 text with its own port of Caffe's upgrader.
    Our V2 net, written back as text, must compute exactly what OpenCV's
    reading of the legacy text computes (padding folding, pad/stride/kernel,
    pooling method and LRN constants all show in the output)."""
    import numpy as np

    cv2 = pytest.importorskip("cv2")
    v0_text, v1_text, weights, in_shape = case
    model = tmp_path / "w.caffemodel"
    _weights_file(model, weights, seed)
    x = np.random.default_rng(seed + 1).standard_normal(in_shape).astype(np.float32)
    outs = []
    for legacy in (v0_text, v1_text):
        v2, _ = upgrade_net(_text(legacy))
        for text in (legacy, text_format.MessageToString(v2)):
            p = tmp_path / "net.prototxt"
            p.write_text(text)
            net = cv2.dnn.readNetFromCaffe(str(p), str(model))
            net.setInput(x)
            outs.append(net.forward())
    assert outs[0].shape == outs[2].shape
    for out in outs[1:]:
        # NaN where OpenCV averages an empty window (ceil-mode pooling): same in all
        assert np.array_equal(out, outs[0], equal_nan=True)
