"""Formats the zoo lacks, made at test time by real tools (OpenCV) or by hand.

OpenCV 4.x is the oracle wherever it reads the file.
"""

from __future__ import annotations

import numpy as np
import pytest

from caffecompress.caffe import caffemodel_bytes, read_caffemodel, write_caffemodel, write_caffemodel_h5
from fixtures import bits, fixed_input, make_net, opencv_blobs, opencv_forward

cv2 = pytest.importorskip("cv2")

DET3 = "mtcnn/det3.caffemodel"
LENET = "lenet-mnist/lenet_iter_10000.caffemodel"


def _pb():
    from caffecompress.caffe.proto import pb

    return pb


# ---------------------------------------------------------------- fp16 raw_data


@pytest.fixture(scope="module")
def shrunk(tmp_path_factory, zoo):
    out = tmp_path_factory.mktemp("fp16") / "det3_fp16.caffemodel"
    cv2.dnn.shrinkCaffeModel(str(zoo / DET3), str(out))
    return out


def test_fp16_raw_data_matches_opencv(zoo, shrunk):
    model = read_caffemodel(shrunk)
    net = cv2.dnn.readNetFromCaffe(str(zoo / "mtcnn/det3.prototxt"), str(shrunk))
    held = opencv_blobs(net)
    orig = read_caffemodel(zoo / DET3)
    n16 = 0
    for name, cvb in held.items():
        lay = model.layer(name)
        for a, b, o, st in zip(lay.blobs, cvb, orig.layer(name).blobs, lay.storage):
            assert a.dtype == np.float32 and a.shape == o.shape
            assert np.array_equal(bits(a), bits(b))
            if lay.type in ("Convolution", "InnerProduct"):
                assert st == "float16"
                assert np.array_equal(a, o.astype(np.float16).astype(np.float32))
                n16 += 1
            else:
                assert st == "float32"
    assert n16 >= 10


def test_fp16_kept_on_request_is_shrinkcaffemodels_file(shrunk):
    model = read_caffemodel(shrunk)
    assert caffemodel_bytes(model, keep_fp16=True) == shrunk.read_bytes()


def test_fp16_written_dense_loads_everywhere(zoo, shrunk, tmp_path):
    model = read_caffemodel(shrunk)
    out = tmp_path / "dense.caffemodel"
    write_caffemodel(model, out)
    assert out.stat().st_size > shrunk.stat().st_size * 1.5  # float32 again
    again = read_caffemodel(out)
    assert all(s == "float32" for lay in again.layers for s in lay.storage)
    x = fixed_input((1, 3, 48, 48))
    proto = str(zoo / "mtcnn/det3.prototxt")
    ref = opencv_forward(cv2.dnn.readNetFromCaffe(proto, str(shrunk)), x)
    got = opencv_forward(cv2.dnn.readNetFromCaffe(proto, str(out)), x)
    for r, g in zip(ref, got):
        assert np.array_equal(bits(r), bits(g))


# ---------------------------------------------------------------- double_data


def _with_double_data(src: bytes, perturb: bool) -> bytes:
    pb = _pb()
    net = pb.NetParameter()
    net.ParseFromString(src)
    for lp in net.layer:
        for b in lp.blobs:
            v = np.array(b.data, dtype=np.float64)
            if perturb:
                v = v * (1 + 1e-9)  # not representable in float32
            del b.data[:]
            b.double_data.extend(v.tolist())
    return net.SerializeToString()


@pytest.mark.slow  # builds and parses whole files with protobuf
def test_double_data_reads_as_caffe_float_build(zoo, tmp_path):
    src = (zoo / LENET).read_bytes()
    ref = opencv_blobs(cv2.dnn.readNetFromCaffe(str(zoo / "lenet-mnist/mnist_deploy.prototxt"), str(zoo / LENET)))
    p = tmp_path / "double.caffemodel"
    p.write_bytes(_with_double_data(src, perturb=False))
    model = read_caffemodel(p)
    for name, cvb in ref.items():
        lay = model.layer(name)
        assert lay.storage == ["float64"] * len(cvb)
        for a, b in zip(lay.blobs, cvb):
            assert np.array_equal(bits(a), bits(b))
    # values float32 cannot hold are rounded to nearest, as static_cast<float> does
    p.write_bytes(_with_double_data(src, perturb=True))
    pb = _pb()
    net = pb.NetParameter()
    net.ParseFromString(p.read_bytes())
    model = read_caffemodel(p)
    for lp in net.layer:
        for a, b in zip(model.layer(lp.name).blobs, lp.blobs):
            assert np.array_equal(bits(a), bits(np.array(b.double_data, np.float64).astype(np.float32)))


def test_double_data_written_as_float_loads_in_opencv(zoo, tmp_path):
    p = tmp_path / "double.caffemodel"
    p.write_bytes(_with_double_data((zoo / LENET).read_bytes(), perturb=False))
    out = tmp_path / "float.caffemodel"
    write_caffemodel(read_caffemodel(p), out)
    proto = str(zoo / "lenet-mnist/mnist_deploy.prototxt")
    x = fixed_input((1, 1, 28, 28))
    ref = opencv_forward(cv2.dnn.readNetFromCaffe(proto, str(zoo / LENET)), x)
    got = opencv_forward(cv2.dnn.readNetFromCaffe(proto, str(out)), x)
    for r, g in zip(ref, got):
        assert np.array_equal(bits(r), bits(g))
    # the dense output equals the float original byte for byte
    assert out.read_bytes() == (zoo / LENET).read_bytes()


# ---------------------------------------------------------------- NaN / Inf / subnormal


SPECIAL = np.array(
    [0x7FC00001, 0xFFC12345, 0x7F800000, 0xFF800000, 0x00000001, 0x807FFFFF, 0x80000000, 0x00400000],
    dtype=np.uint32,
).view(np.float32)


def test_nonfinite_and_subnormal_weights_kept_bit_exact(zoo, tmp_path):
    model = read_caffemodel(zoo / LENET)
    w = model.layer("conv1").blobs[0]
    w.ravel()[: SPECIAL.size] = SPECIAL
    model.layer("ip2").blobs[1][:3] = SPECIAL[:3]
    out = tmp_path / "special.caffemodel"
    write_caffemodel(model, out)
    back = read_caffemodel(out)
    assert np.array_equal(bits(back.layer("conv1").blobs[0].ravel()[: SPECIAL.size]), bits(SPECIAL))
    for a, b in zip(model.layers, back.layers):
        for u, v in zip(a.blobs, b.blobs):
            assert np.array_equal(bits(u), bits(v))
    # OpenCV (an independent reader) sees the same bits
    held = opencv_blobs(cv2.dnn.readNetFromCaffe(str(zoo / "lenet-mnist/mnist_deploy.prototxt"), str(out)))
    for name, cvb in held.items():
        for a, b in zip(back.layer(name).blobs, cvb):
            assert np.array_equal(bits(a), bits(b))
    # and protobuf too
    pb = _pb()
    net = pb.NetParameter()
    net.ParseFromString(out.read_bytes())
    conv1 = next(lp for lp in net.layer if lp.name == "conv1")
    got = np.array(conv1.blobs[0].data, np.float32)[: SPECIAL.size]
    from google.protobuf.internal import api_implementation

    if api_implementation.Type() == "python":
        # pure-python protobuf decodes through Python floats, which drops NaN payloads
        nan = np.isnan(SPECIAL)
        assert np.array_equal(np.isnan(got), nan)
        assert np.array_equal(bits(got[~nan]), bits(SPECIAL[~nan]))
    else:
        assert np.array_equal(bits(got), bits(SPECIAL))


# ---------------------------------------------------------------- shared parameters


def _shared_net():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((8, 8)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    shared = {"inner_product_param": {"num_output": 8}}
    net = make_net(
        [
            ("ip1", "InnerProduct", [w, b], dict(shared, bottom=["data"], top=["ip1"])),
            ("relu1", "ReLU", [], dict(bottom=["ip1"], top=["ip1"])),
            ("ip2", "InnerProduct", [w, b], dict(shared, bottom=["ip1"], top=["ip2"])),
        ],
        name="shared",
    )
    for name in ("ip1", "ip2"):
        lp = next(lp for lp in net.layer if lp.name == name)
        lp.param.add(name="w_shared")
        lp.param.add(name="b_shared")
    net.input.append("data")
    net.input_dim.extend([1, 8, 1, 1])
    return net


def _prototxt_text(net) -> str:
    from google.protobuf import text_format

    pb = _pb()
    skel = pb.NetParameter()
    skel.CopyFrom(net)
    for lp in skel.layer:
        del lp.blobs[:]
    return text_format.MessageToString(skel)


def test_shared_parameters(tmp_path):
    net = _shared_net()
    p = tmp_path / "shared.caffemodel"
    p.write_bytes(net.SerializeToString())
    proto = tmp_path / "shared.prototxt"
    proto.write_text(_prototxt_text(net))
    model = read_caffemodel(p)
    assert model.layer("ip1").param_names == ["w_shared", "b_shared"]
    assert model.layer("ip2").param_names == ["w_shared", "b_shared"]
    assert model.layer("relu1").param_names == []
    held = opencv_blobs(cv2.dnn.readNetFromCaffe(str(proto), str(p)))
    for name in ("ip1", "ip2"):
        for a, b in zip(model.layer(name).blobs, held[name]):
            assert np.array_equal(bits(a), bits(b))
    # written back: Caffe's binary layout stores a shared blob once per sharing layer
    out = tmp_path / "w.caffemodel"
    write_caffemodel(model, out)
    assert out.read_bytes() == p.read_bytes()
    x = fixed_input((1, 8, 1, 1))
    ref = opencv_forward(cv2.dnn.readNetFromCaffe(str(proto), str(p)), x)
    got = opencv_forward(cv2.dnn.readNetFromCaffe(str(proto), str(out)), x)
    assert np.array_equal(bits(ref[0]), bits(got[0]))


# ---------------------------------------------------------------- .caffemodel.h5


def test_caffemodel_h5_layout_and_round_trip(zoo, tmp_path):
    h5py = pytest.importorskip("h5py")
    model = read_caffemodel(zoo / DET3)
    out = tmp_path / "det3.caffemodel.h5"
    write_caffemodel_h5(model, out)
    with h5py.File(out, "r") as f:
        assert set(f["data"].keys()) == {lay.name for lay in model.layers}  # every layer gets a group
        for lay in model.layers:
            g = f["data"][lay.name]
            assert sorted(g.keys(), key=int) == [str(i) for i in range(len(lay.blobs))]
            for i, arr in enumerate(lay.blobs):
                ds = g[str(i)]
                assert ds.dtype == np.float32 and ds.shape == arr.shape
                assert ds.chunks is None and ds.compression is None  # as H5LTmake_dataset_float
                assert np.array_equal(bits(ds[()]), bits(arr))
    back = read_caffemodel(out)
    assert back.format == "HDF5"
    assert all(lay.type is None for lay in back.layers)
    for lay in model.layers:
        b = back.layer(lay.name)
        assert [x.shape for x in b.blobs] == [x.shape for x in lay.blobs]
        for u, v in zip(lay.blobs, b.blobs):
            assert np.array_equal(bits(u), bits(v))
    # write_caffemodel picks HDF5 by suffix; HDF5 is recognised by content whatever the name
    out2 = tmp_path / "det3_h5_without_suffix.bin"
    out2.write_bytes(out.read_bytes())
    again = read_caffemodel(out2)
    assert [lay.name for lay in again.layers] == [lay.name for lay in back.layers]


def test_h5_with_user_block_is_recognised_by_content(tmp_path):
    h5py = pytest.importorskip("h5py")
    p = tmp_path / "weights.bin"
    with h5py.File(p, "w", userblock_size=1024) as f:
        f.create_dataset("data/fc/0", data=np.arange(3, dtype=np.float32))
    assert p.read_bytes()[:8] != b"\x89HDF\r\n\x1a\n"
    model = read_caffemodel(p)
    assert model.format == "HDF5" and model.layer("fc").blobs[0].tolist() == [0, 1, 2]


def test_hand_made_caffe_h5_with_float64_and_nested_names(tmp_path):
    h5py = pytest.importorskip("h5py")
    p = tmp_path / "hand.caffemodel.h5"
    w = np.arange(12, dtype=np.float64).reshape(3, 4) / 7
    with h5py.File(p, "w") as f:
        f.create_group("data/relu")
        f.create_dataset("data/block1/fc/0", data=w)  # layer name "block1/fc"
        f.create_dataset("data/block1/fc/1", data=np.ones(3, np.float32))
    model = read_caffemodel(p)
    names = {lay.name for lay in model.layers}
    assert names == {"relu", "block1/fc"}
    fc = model.layer("block1/fc")
    assert fc.storage == ["float64", "float32"]
    assert np.array_equal(fc.blobs[0], w.astype(np.float32))
    assert model.layer("relu").blobs == []


# ---------------------------------------------------------------- writer details


def test_write_refuses_the_input_and_leaves_no_temp(zoo, tmp_path):
    from caffecompress import errors

    p = tmp_path / "m.caffemodel"
    p.write_bytes((zoo / LENET).read_bytes())
    model = read_caffemodel(p)
    with pytest.raises(errors.OutputExistsError):
        write_caffemodel(model, p)
    assert p.read_bytes() == (zoo / LENET).read_bytes()
    out = tmp_path / "out.caffemodel"
    write_caffemodel(model, out)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.caffemodel", "out.caffemodel"]


def test_write_refuses_over_2gib(monkeypatch, zoo, tmp_path):
    from caffecompress import errors
    from caffecompress.caffe import writer

    monkeypatch.setattr(writer, "MAX_CAFFEMODEL_BYTES", 1000)
    with pytest.raises(errors.FormatError) as ei:
        write_caffemodel(read_caffemodel(zoo / LENET), tmp_path / "big.caffemodel")
    assert ".caffemodel.h5" in str(ei.value)
    assert not list(tmp_path.iterdir())


def test_mean_binaryproto(zoo):
    from caffecompress.caffe import read_binaryproto

    pb = _pb()
    raw = (zoo / "cifar10-quick/mean.binaryproto").read_bytes()
    b = pb.BlobProto()
    b.ParseFromString(raw)
    mean = read_binaryproto(zoo / "cifar10-quick/mean.binaryproto")
    assert mean.shape == (b.num, b.channels, b.height, b.width)
    assert np.array_equal(bits(mean), bits(np.array(b.data, np.float32)))


# ---------------------------------------------------------------- unknown fields


def test_unknown_fields_survive_outside_blobs(tmp_path):
    """Fork fields our schema lacks are kept in order, inside blobs too."""
    from caffecompress.caffe import wire

    def rec(n, payload):
        return wire.encode_len_field(n, len(payload)) + payload

    arr = np.arange(6, dtype=np.float32)
    blob = (rec(5, arr.tobytes()) + rec(7, rec(1, b"\x02\x03"))
            + wire.encode_key(15, 0) + b"\x07")  # unknown BlobProto field 15
    layer = (rec(1, b"fc") + rec(2, b"FancyLayer") + rec(7, blob)
             + rec(5000, b"fork param") + wire.encode_key(4999, 5) + b"\x01\x02\x03\x04")
    src = rec(1, b"net") + wire.encode_key(50, 0) + b"\x01" + rec(100, layer)
    p = tmp_path / "fork.caffemodel"
    p.write_bytes(src)
    model = read_caffemodel(p)
    assert model.layer("fc").type == "FancyLayer"
    out = caffemodel_bytes(model)
    # the blob's unknown field stays too, in place (issue 9: written back byte for byte)
    assert out == src
    # protobuf (our schema, which lacks these numbers) sees them as unknown fields and parses fine
    pb = _pb()
    net = pb.NetParameter()
    net.ParseFromString(out)
    assert list(net.layer[0].blobs[0].data) == arr.tolist()
