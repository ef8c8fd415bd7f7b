"""Writer vs real zoo files: byte equality, round trips, OpenCV outputs, BVLC-only blobs."""

from __future__ import annotations

import numpy as np
import pytest

from caffecompress.caffe import caffemodel_bytes, read_caffemodel, write_caffemodel
from fixtures import bits, blob_fields, fixed_input, opencv_forward, zoo_input_shape, zoo_models, zoo_pair, zoo_v2_models

cv2 = pytest.importorskip("cv2")


@pytest.mark.parametrize("rel", zoo_v2_models())
def test_v2_zoo_rewritten_byte_for_byte(zoo, rel, tmp_path):
    out = tmp_path / "w.caffemodel"
    write_caffemodel(read_caffemodel(zoo / rel), out)
    assert out.read_bytes() == (zoo / rel).read_bytes()


@pytest.mark.parametrize("rel", zoo_models())
def test_read_write_read_identical(zoo, rel, tmp_path):
    a = read_caffemodel(zoo / rel)
    out = tmp_path / "w.caffemodel"
    write_caffemodel(a, out)
    b = read_caffemodel(out)
    assert b.format == "V2"
    assert [(x.name, x.type, x.param_names) for x in a.layers] == [(y.name, y.type, y.param_names) for y in b.layers]
    for x, y in zip(a.layers, b.layers):
        assert [u.shape for u in x.blobs] == [v.shape for v in y.blobs]
        for u, v in zip(x.blobs, y.blobs):
            assert np.array_equal(bits(u), bits(v))
    # a second generation is a fixed point
    assert caffemodel_bytes(b) == out.read_bytes()


@pytest.mark.parametrize("rel", zoo_models())
def test_written_file_gives_identical_opencv_outputs(zoo, rel, tmp_path):
    proto = zoo_pair(rel)
    x = fixed_input(zoo_input_shape(rel))
    ref = opencv_forward(cv2.dnn.readNetFromCaffe(str(proto), str(zoo / rel)), x)
    out = tmp_path / "w.caffemodel"
    write_caffemodel(read_caffemodel(zoo / rel), out)
    got = opencv_forward(cv2.dnn.readNetFromCaffe(str(proto), str(out)), x)
    assert len(ref) == len(got)
    for r, g in zip(ref, got):
        assert r.shape == g.shape and np.array_equal(bits(r), bits(g))
    # and from memory, as cv2.dnn.readNetFromCaffe(bufferProto, bufferModel)
    mem = cv2.dnn.readNetFromCaffe(np.frombuffer(proto.read_bytes(), np.uint8),
                                   np.frombuffer(caffemodel_bytes(read_caffemodel(zoo / rel)), np.uint8))
    for r, g in zip(ref, opencv_forward(mem, x)):
        assert np.array_equal(bits(r), bits(g))


@pytest.mark.parametrize("rel", zoo_models())
def test_written_blobs_use_only_bvlc_fields(zoo, rel):
    from caffecompress.caffe.wire import LEN

    used = blob_fields(caffemodel_bytes(read_caffemodel(zoo / rel)))
    blob = {(n, w) for kind, n, w in used if kind == "blob"}
    shape = {(n, w) for kind, n, w in used if kind == "shape"}
    net = {n for kind, n, w in used if kind == "net"}
    # packed float data, shape, or the legacy dims a V1 source stored (issue 9)
    assert blob <= {(5, LEN), (7, LEN), (1, 0), (2, 0), (3, 0), (4, 0)}
    assert shape <= {(1, LEN)}  # packed dims
    assert 2 not in net and 100 in net  # V2 'layer' only


@pytest.mark.slow  # parses whole files with protobuf
@pytest.mark.parametrize("rel", zoo_models())
def test_written_file_passes_caffes_blob_checks_under_the_bvlc_schema(zoo, rel):
    """Parsed with the BVLC-only schema (no fork fields), every blob has
    exactly as many float values as its shape counts (legacy dims first, as
    Blob::FromProto reads them: its CHECK in BVLC Caffe), and its shape fields
    are the ones the source stored."""
    from caffecompress.caffe.proto import pb_bvlc

    src = pb_bvlc.NetParameter()
    src.ParseFromString((zoo / rel).read_bytes())
    stored = []
    for lp in list(src.layer) + list(src.layers):
        for b in lp.blobs:
            if any(b.HasField(f) for f in ("num", "channels", "height", "width")):
                stored.append(("legacy", (b.num, b.channels, b.height, b.width)))
            else:
                stored.append(("shape", tuple(b.shape.dim)))
    net = pb_bvlc.NetParameter()
    net.ParseFromString(caffemodel_bytes(read_caffemodel(zoo / rel)))
    assert len(net.layers) == 0 and len(net.layer)
    n = 0
    for lp in net.layer:
        for b in lp.blobs:
            legacy = any(b.HasField(f) for f in ("num", "channels", "height", "width"))
            dims = (b.num, b.channels, b.height, b.width) if legacy else tuple(b.shape.dim)
            assert len(b.double_data) == 0 and len(b.diff) == 0
            assert len(b.data) == int(np.prod(dims, dtype=np.int64))
            assert stored[n] == ("legacy" if legacy else "shape", dims)
            n += 1
    assert n == len(stored) == sum(len(lay.blobs) for lay in read_caffemodel(zoo / rel).layers)


@pytest.mark.slow  # serializes whole files with protobuf
@pytest.mark.parametrize("rel", zoo_v2_models())
def test_replaced_arrays_are_spliced_like_protobuf_would(zoo, rel):
    """New values of the same shapes (what decompression produces): our output
    equals protobuf's own serialization of the source net with those values."""
    from caffecompress.caffe.proto import pb

    model = read_caffemodel(zoo / rel)
    rng = np.random.default_rng(11)
    net = pb.NetParameter()
    src = (zoo / rel).read_bytes()
    net.ParseFromString(src)
    # protobuf moves fields it cannot interpret (a fork's numbers with other wire
    # types) to the end of their message; our writer keeps them in place
    canonical = net.SerializeToString() == src
    for lay, lp in zip(model.layers, net.layer):
        for i, b in enumerate(lp.blobs):
            new = rng.standard_normal(lay.blobs[i].shape).astype(np.float32)
            lay.blobs[i] = new
            del b.data[:]
            b.data.extend(new.ravel().tolist())
    ours = caffemodel_bytes(model)
    if canonical:
        assert ours == net.SerializeToString()
    else:
        again = pb.NetParameter()
        again.ParseFromString(ours)
        assert again.SerializeToString() == net.SerializeToString()


def test_reading_v2_imports_neither_h5py_nor_cv2(zoo):
    import subprocess
    import sys

    code = (
        "import sys; from caffecompress.caffe import read_caffemodel, caffemodel_bytes; "
        f"m = read_caffemodel({str(zoo / 'mtcnn/det1.caffemodel')!r}); caffemodel_bytes(m); "
        "print(','.join(k for k in ('h5py', 'cv2', 'cupy') if k in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_written_files_get_normal_permissions(zoo, tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        m = read_caffemodel(zoo / "mtcnn/det1.caffemodel")
        write_caffemodel(m, tmp_path / "a.caffemodel")
        write_caffemodel(m, tmp_path / "a.caffemodel.h5")
    finally:
        os.umask(mask)
    for name in ("a.caffemodel", "a.caffemodel.h5"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644
