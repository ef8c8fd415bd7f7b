"""Property tests: the blob codec against protobuf, generated nets against OpenCV 4.x."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from caffecompress.caffe import caffemodel_bytes, wire
from caffecompress.caffe.reader import parse_caffemodel
from caffecompress.caffe.writer import encode_blob
from caffecompress.model import Layer, Model
from fixtures import bits, fixed_input, opencv_blobs, opencv_forward

shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)
# every float32 bit pattern: NaN payloads (signalling too), infinities, subnormals, -0
any_f32 = hnp.arrays(np.uint32, shapes, elements=st.integers(0, 2**32 - 1)).map(lambda a: a.view(np.float32))


def _net_with_blob(blob_body: bytes, name=b"L") -> bytes:
    layer = wire.encode_len_field(1, len(name)) + name + wire.encode_len_field(7, len(blob_body)) + blob_body
    return wire.encode_len_field(100, len(layer)) + layer


def _join(chunks) -> bytes:
    return b"".join(bytes(c) for c in chunks)


@settings(max_examples=200, deadline=None)
@given(any_f32)
def test_blob_codec_round_trip_bit_exact(arr):
    model = parse_caffemodel(_net_with_blob(_join(encode_blob(arr))))
    (out,) = model.layers[0].blobs
    assert out.shape == arr.shape and out.dtype == np.float32
    assert np.array_equal(bits(out), bits(arr))
    assert out.flags.writeable


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.float32, shapes, elements=st.floats(width=32, allow_nan=False)))
def test_blob_encoding_equals_protobufs(arr):
    from caffecompress.caffe.proto import pb

    b = pb.BlobProto()
    if arr.ndim:
        b.shape.dim.extend(arr.shape)
    b.data.extend(arr.ravel().tolist())
    assert _join(encode_blob(arr)) == b.SerializeToString()


@settings(max_examples=100, deadline=None)
@given(
    hnp.arrays(np.float32, st.integers(1, 40), elements=st.floats(width=32, allow_nan=False)),
    st.lists(st.sampled_from(["packed", "unpacked", "double"]), min_size=1, max_size=4),
    st.data(),
)
def test_decoder_accepts_any_valid_encoding(arr, kinds, data):
    """Packed, unpacked and split records decode like protobuf decodes them."""
    from caffecompress.caffe.proto import pb

    use_double = "double" in kinds
    n = arr.size
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=3)))
    parts = np.split(arr, cuts)
    body = b""
    for part, kind in zip(parts, kinds * 4):
        if use_double:
            field, dt, width = 8, "<f8", 8
        else:
            field, dt, width = 5, "<f4", 4
        payload = part.astype(dt).tobytes()
        if kind == "unpacked" and part.size:
            key = wire.encode_key(field, 5 if width == 4 else 1)
            body += b"".join(key + payload[i : i + width] for i in range(0, len(payload), width))
        else:
            body += wire.encode_len_field(field, len(payload)) + payload
    dims = wire.encode_varint(n)
    body += wire.encode_len_field(7, len(dims) + 2) + wire.encode_len_field(1, len(dims)) + dims
    raw = _net_with_blob(body)
    net = pb.NetParameter()
    net.ParseFromString(raw)
    ref = np.array(net.layer[0].blobs[0].double_data if use_double else net.layer[0].blobs[0].data)
    (out,) = parse_caffemodel(raw).layers[0].blobs
    assert np.array_equal(bits(out), bits(ref.astype(np.float32)))


# ---------------------------------------------------------------- generated nets in OpenCV


@st.composite
def nets(draw):
    """A small random CNN: (prototxt text, [Layer], input shape)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    c, h, w = draw(st.integers(1, 4)), draw(st.integers(4, 9)), draw(st.integers(4, 9))
    shape = (1, c, h, w)
    proto = [f'name: "gen"\ninput: "data"\ninput_shape {{ dim: 1 dim: {c} dim: {h} dim: {w} }}']
    layers, bottom = [], "data"
    for i in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["Convolution", "ReLU", "BatchNorm", "PReLU", "Scale"]))
        name = f"{kind.lower()}{i}"
        blobs, params = [], ""
        if kind == "Convolution":
            k = draw(st.integers(1, min(3, h, w)))
            n = draw(st.integers(1, 5))
            bias = draw(st.booleans())
            blobs = [rng.standard_t(3, (n, c, k, k)).astype(np.float32) * 0.3]
            if bias:
                blobs.append(rng.standard_normal(n).astype(np.float32))
            params = f"convolution_param {{ num_output: {n} kernel_size: {k} bias_term: {str(bias).lower()} }}"
            c, h, w = n, h - k + 1, w - k + 1
        elif kind == "BatchNorm":
            blobs = [rng.standard_normal(c).astype(np.float32), rng.uniform(0.5, 2, c).astype(np.float32),
                     np.array([draw(st.sampled_from([1.0, 999.9]))], np.float32)]
        elif kind == "PReLU":
            blobs = [rng.uniform(0, 0.5, c).astype(np.float32)]
        elif kind == "Scale":
            blobs = [rng.uniform(0.5, 2, c).astype(np.float32), rng.standard_normal(c).astype(np.float32)]
            params = "scale_param { bias_term: true }"
        proto.append(f'layer {{ name: "{name}" type: "{kind}" bottom: "{bottom}" top: "{name}" {params} }}')
        layers.append(Layer(name, kind, blobs, [""] * len(blobs)))
        bottom = name
    n_out = draw(st.integers(1, 6))
    blobs = [rng.standard_normal((n_out, c * h * w)).astype(np.float32), rng.standard_normal(n_out).astype(np.float32)]
    proto.append(f'layer {{ name: "fc" type: "InnerProduct" bottom: "{bottom}" top: "fc" '
                 f"inner_product_param {{ num_output: {n_out} }} }}")
    layers.append(Layer("fc", "InnerProduct", blobs, ["", ""]))
    return "\n".join(proto), layers, shape


def _pb_caffemodel(proto_text: str, layers) -> bytes:
    """The same weights serialized by protobuf itself (an independent writer)."""
    from google.protobuf import text_format

    from caffecompress.caffe.proto import pb

    net = text_format.Parse(proto_text, pb.NetParameter())
    for lp, lay in zip(net.layer, layers):
        for a in lay.blobs:
            b = lp.blobs.add()
            b.shape.dim.extend(a.shape)
            b.data.extend(a.ravel().tolist())
    return net.SerializeToString()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nets())
def test_generated_nets_load_in_opencv(spec):
    cv2 = pytest.importorskip("cv2")
    proto_text, layers, shape = spec
    ours = caffemodel_bytes(Model(layers=layers, name="gen"))  # synthesized: no skeleton
    theirs = _pb_caffemodel(proto_text, layers)
    pbuf = np.frombuffer(proto_text.encode(), np.uint8)
    net_ours = cv2.dnn.readNetFromCaffe(pbuf, np.frombuffer(ours, np.uint8))
    net_pb = cv2.dnn.readNetFromCaffe(pbuf, np.frombuffer(theirs, np.uint8))
    held = opencv_blobs(net_ours)
    ref = opencv_blobs(net_pb)
    assert held.keys() == ref.keys() == {lay.name for lay in layers if lay.blobs}
    for lay in layers:
        for a, b, c in zip(lay.blobs, held.get(lay.name, []), ref.get(lay.name, [])):
            assert np.array_equal(bits(a), bits(b)) and np.array_equal(bits(b), bits(c))
    x = fixed_input(shape)
    for u, v in zip(opencv_forward(net_ours, x), opencv_forward(net_pb, x)):
        assert np.array_equal(bits(u), bits(v))
    # and our reader reads our bytes back exactly
    back = parse_caffemodel(ours)
    for lay, b in zip(layers, back.layers):
        assert (lay.name, lay.type) == (b.name, b.type)
        for u, v in zip(lay.blobs, b.blobs):
            assert np.array_equal(bits(u), bits(v))
