"""Issue 9, parts 1-2: fork fields never break a file.

Every fork of the inventory (proto/FORKS.md) and every clash becomes a
fixture (tests/caffe/forkfixtures.py: a real zoo model whose layers carry
the fork's fields): it reads, compresses under every preset, restores
byte-identically under ``lossless``, and the restored file loads in OpenCV
from memory with the source's outputs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import caffecompress as cc
from caffecompress.caffe import caffemodel_bytes, forks, read_caffemodel, wire
from caffecompress.caffe.tolerant import opaque_fields, opaque_report, parse_tolerant
from caffecompress.config import PRESETS
from fixtures import bits, fixed_input, opencv_forward, zoo_input_shape, zoo_pair
from forkfixtures import BASE, OPENCV_REFUSES, SKIP, fixtures, inject

FIXTURES = fixtures()


@pytest.fixture(scope="module")
def base(zoo):
    return (zoo / BASE).read_bytes()


def _fixture(base, fid, tmp_path):
    data = inject(base, FIXTURES[fid])
    assert data != base or not FIXTURES[fid]
    p = tmp_path / f"{fid}.caffemodel"
    p.write_bytes(data)
    return p, data


def _stored_shapes(data: bytes) -> list:
    """Every blob's stored shape fields, as written: ('legacy', dims) or ('shape', dims)."""
    from caffecompress.caffe.proto import pb_bvlc

    net = parse_tolerant(data)[0]
    out = []
    for lp in list(net.layer) + list(net.layers):
        for b in lp.blobs:
            if any(b.HasField(f) for f in ("num", "channels", "height", "width")):
                out.append(("legacy", (b.num, b.channels, b.height, b.width)))
            else:
                out.append(("shape", tuple(b.shape.dim)))
    assert pb_bvlc  # the BVLC view is what parse_tolerant uses by default
    return out


def _cv2_net(proto_bytes: bytes, model_bytes: bytes):
    cv2 = pytest.importorskip("cv2")
    return cv2.dnn.readNetFromCaffe(np.frombuffer(proto_bytes, np.uint8), np.frombuffer(model_bytes, np.uint8))


def test_every_fork_has_a_fixture_and_every_clash_is_carried():
    covered = {(f.message, f.number) for fs in FIXTURES.values() for f in fs}
    for key in forks.FORKS:
        if key in ("mobilenet", "openpose"):
            continue  # no proto changes (test_depthwise_type_string below; OpenPose is BVLC's schema)
        assert any(fid == key or fid.startswith(key + "-") for fid in FIXTURES), key
    for cid, (message, number, _) in forks.CLASHES.items():
        assert (message, number) in covered, cid
        # a clash is two meanings: two forks, or a fork and BVLC (our BVLC view declares it)
        users = {f.fork for f in forks.candidates(message, number)}
        assert len(users) >= 2 or number in _bvlc_numbers(message), cid


def _bvlc_numbers(message):
    from caffecompress.caffe.proto import pb_bvlc

    return set(getattr(pb_bvlc, message).DESCRIPTOR.fields_by_number)


@pytest.mark.parametrize("fid", sorted(FIXTURES))
def test_fork_fixture_reads_and_restores_under_every_preset(zoo, base, fid, tmp_path):
    p, data = _fixture(base, fid, tmp_path)
    model = read_caffemodel(p)
    ref = read_caffemodel(zoo / BASE)
    assert [(x.name, [b.shape for b in x.blobs]) for x in model.layers] == \
        [(x.name, [b.shape for b in x.blobs]) for x in ref.layers]
    for x, y in zip(model.layers, ref.layers):
        for u, v in zip(x.blobs, y.blobs):
            assert np.array_equal(bits(u), bits(v))
    assert caffemodel_bytes(model) == data  # written back byte for byte

    # info names every injected field BVLC does not declare as kept opaque (one
    # that BVLC declares and whose bytes parse, e.g. Intel's SmoothL1 at 148 read
    # as clip_param, is interpreted, and still written back byte for byte)
    seen = {(o["message"], o["number"]) for o in opaque_report(model.skeleton)}
    for f in FIXTURES[fid]:
        if f.number not in _bvlc_numbers(f.message):
            assert (f.message, f.number) in seen, f

    proto = zoo_pair(BASE).read_bytes()
    refuses = any((f.fork, f.message, f.number) in OPENCV_REFUSES for f in FIXTURES[fid])
    x = fixed_input(zoo_input_shape(BASE))
    if refuses:
        with pytest.raises(Exception):
            _cv2_net(proto, data)
    else:
        want = opencv_forward(_cv2_net(proto, data), x)
    src_shapes = _stored_shapes(data)
    for preset in PRESETS:
        out = tmp_path / f"{preset}.ccz.h5"
        cc.save(cc.compress(read_caffemodel(p), preset=preset), out, force=True)
        restored = caffemodel_bytes(cc.decompress(out))
        assert _stored_shapes(restored) == src_shapes, preset
        if preset == "lossless":
            assert restored == data
        elif preset == "deep-compression":
            assert restored != data  # the lossy path ran: values moved, structure kept
        if refuses:
            with pytest.raises(Exception):
                _cv2_net(proto, restored)
            continue
        got = opencv_forward(_cv2_net(proto, restored), x)
        assert [g.shape for g in got] == [w.shape for w in want]
        if preset == "lossless":
            for g, w in zip(got, want):
                assert np.array_equal(bits(g), bits(w))
        else:
            assert all(np.isfinite(g).all() for g in got)


def test_opencv_refuses_exactly_the_listed_fields(base):
    """The refusal list is a fact about OpenCV 4.x, checked field by field."""
    proto = zoo_pair(BASE).read_bytes()
    refused = set()
    for f in forks.FORK_FIELDS:
        if (f.message, f.number) in SKIP or f.fork in ("mobilenet", "openpose"):
            continue
        try:
            _cv2_net(proto, inject(base, [f]))
        except Exception:  # cv2.error
            refused.add((f.fork, f.message, f.number))
    assert refused == OPENCV_REFUSES


def test_the_issue_file_caffeonspark_memory_data(base, tmp_path):
    """Issue 9's report: a blob-less MemoryData layer with LayerParameter 10001
    (a class-name string) and memory_data_param 10000 (varint) + 10001 (string).
    Our full schema declares LayerParameter 10001 as R-FCN's message: protobuf
    refuses the net; the tolerant parse sets that one field aside."""
    from caffecompress.caffe.proto import pb

    fs = [f for f in forks.fields_of("caffeonspark") if f.name in ("source_class", "share_in_parallel", "source")]
    data = inject(base, fs)
    with pytest.raises(Exception):
        pb.NetParameter.FromString(data)  # the failure the issue quotes
    net, demoted = parse_tolerant(data, bvlc=False)
    assert demoted == {("LayerParameter", 10001)}
    assert [lp.name for lp in net.layer][:2] == ["data12", "slicer_label"]
    net, demoted = parse_tolerant(data)  # the reader's BVLC view: nothing to set aside
    assert demoted == frozenset()
    p = tmp_path / "cos.caffemodel"
    p.write_bytes(data)
    assert caffemodel_bytes(read_caffemodel(p)) == data
    ops = opaque_fields(read_caffemodel(p).skeleton)
    assert {(o.layer, o.path, o.number) for o in ops} >= {
        ("data12", "", 10001), ("data12", "memory_data_param", 10000), ("data12", "memory_data_param", 10001)}


def test_full_schema_keeps_a_parsing_fork_message(base):
    """R-FCN's psroi_pooling_param does parse as our full schema declares it: kept interpreted."""
    data = inject(base, [f for f in forks.fields_of("rfcn") if f.number == 10001])
    net, demoted = parse_tolerant(data, bvlc=False)
    assert demoted == frozenset()
    conv1 = next(lp for lp in net.layer if lp.name == "conv1")
    assert (conv1.psroi_pooling_param.output_dim, conv1.psroi_pooling_param.group_size) == (21, 7)


def test_nested_declared_field_that_does_not_parse_is_set_aside(base, tmp_path):
    """At depth: convolution_param > weight_filler (a BVLC FillerParameter) holding
    bytes that are not a message. Only that field becomes unknown bytes; the rest
    of convolution_param is still parsed."""
    def rec(n, payload):
        return wire.encode_len_field(n, len(payload)) + payload

    out = []
    for f in wire.iter_fields(base, 0, len(base)):
        body = bytes(base[f.tag:f.b])
        if f.number == 100 and b"conv1" in body[:16]:
            inner = []
            for g in wire.iter_fields(base, f.a, f.b):
                r = bytes(base[g.tag:g.b])
                if g.number == 106:
                    r = rec(106, bytes(base[g.a:g.b]) + rec(7, b"\x0f\x0f\x0f"))
                inner.append(r)
            body = rec(100, b"".join(inner))
        out.append(body)
    data = b"".join(out)
    net, demoted = parse_tolerant(data)
    assert demoted == {("ConvolutionParameter", 7)}
    conv1 = next(lp for lp in net.layer if lp.name == "conv1")
    assert conv1.convolution_param.num_output == 10
    p = tmp_path / "nested.caffemodel"
    p.write_bytes(data)
    model = read_caffemodel(p)
    assert caffemodel_bytes(model) == data
    # a number means one thing in a file: the other conv layers' weight_filler is set aside too
    ops = [o for o in opaque_fields(model.skeleton) if o.number == 7 and o.message == "ConvolutionParameter"]
    assert {o.layer for o in ops} == {"conv1", "conv2", "conv3", "conv4-1", "conv4-2"}
    assert all(o.path == "convolution_param" and "does not parse" in o.reason for o in ops)


def test_depthwise_type_string(zoo, base, tmp_path):
    """MobileNet depthwise forks add no field: a new type string reusing convolution_param."""
    out = []
    for f in wire.iter_fields(base, 0, len(base)):
        body = bytes(base[f.a:f.b])
        if f.number == 100 and body.startswith(b"\x0a\x05conv1\x12\x0bConvolution"):
            body = body.replace(b"\x12\x0bConvolution", b"\x12\x14DepthwiseConvolution", 1)
            out.append(wire.encode_len_field(100, len(body)) + body)
            continue
        out.append(bytes(base[f.tag:f.b]))
    data = b"".join(out)
    p = tmp_path / "dw.caffemodel"
    p.write_bytes(data)
    model = read_caffemodel(p)
    assert model.layers[[x.name for x in model.layers].index("conv1")].type == "DepthwiseConvolution"
    cm = cc.compress(model, preset="lossless")
    cc.save(cm, tmp_path / "dw.ccz.h5")
    restored = caffemodel_bytes(cc.decompress(tmp_path / "dw.ccz.h5"))
    assert restored == data
    proto = zoo_pair(BASE).read_bytes()
    x = fixed_input(zoo_input_shape(BASE))
    for g, w in zip(opencv_forward(_cv2_net(proto, restored), x), opencv_forward(_cv2_net(proto, base), x)):
        assert np.array_equal(bits(g), bits(w))


def test_info_lists_what_was_kept_opaque(base, tmp_path, capsys):
    from caffecompress.cli import main

    p, _ = _fixture(base, "caffeonspark", tmp_path)
    assert main(["info", str(p), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    hits = [o for o in rep["opaque"] if o["number"] == 10001 and o["layer"] == "data12" and not o["path"]]
    assert hits and "CaffeOnSpark source_class" in hits[0]["maybe"] and "R-FCN" in hits[0]["maybe"]
    cc.save(cc.compress(read_caffemodel(p), preset="lossless"), tmp_path / "c.ccz.h5")
    assert main(["info", str(tmp_path / "c.ccz.h5")]) == 0
    text = capsys.readouterr().out
    assert "kept opaque" in text and "field 10001" in text
