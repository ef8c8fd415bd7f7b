"""One regression test per class the first outside fuzz campaign found (issue 9, part 4).

Each builds the hostile file the way the campaign did and expects a
CaffeCompressError naming the file (and the layer where there is one), with
nothing large allocated.
"""

from __future__ import annotations

import json
import tracemalloc
import zlib

import h5py
import numpy as np
import pytest

import caffecompress as cc
from caffecompress import errors
from caffecompress.caffe import read_caffemodel, read_prototxt, write_caffemodel_h5
from caffecompress.cli import main
from caffecompress.model import Layer, Model

import mutfuzz


def _model() -> Model:
    return mutfuzz._synthetic_model()


def _named(exc, path, layer=None):
    assert isinstance(exc, errors.CaffeCompressError)
    assert str(path) in str(exc)
    if layer is not None:
        assert exc.layer == layer


@pytest.fixture
def h5file(tmp_path):
    p = tmp_path / "m.caffemodel.h5"
    write_caffemodel_h5(_model(), p)
    return p


@pytest.fixture(params=[2, 1], ids=["v2", "v1"])
def cczfile(tmp_path, request):
    """A saved file in the 2.x layout, and in the 1.x one (which readers keep reading)."""
    p = tmp_path / "m.ccz.h5"
    cc.save(cc.compress(_model(), preset="lossless"), p, format_major=request.param)
    return p


# ------------------------------------------------------------------ caffe/hdf5.py


def _insert_byte(path, at, byte=0x5A):
    b = bytearray(path.read_bytes())
    b[at:at] = bytes([byte])
    path.write_bytes(bytes(b))


def test_h5py_errors_never_escape_untyped(h5file, tmp_path):
    # one inserted byte anywhere: libhdf5 says "bad symbol table node signature",
    # "wrong B-tree signature", ... and each is a FormatError naming the file
    good = h5file.read_bytes()
    seen = set()
    for at in range(0, len(good), max(1, len(good) // 300)):
        p = tmp_path / "bad.caffemodel.h5"
        p.write_bytes(good)
        _insert_byte(p, at)
        try:
            read_caffemodel(p)
        except errors.CaffeCompressError as e:
            _named(e, p)
            seen.add(type(e).__name__)
    assert seen == {"FormatError"}


def test_dataset_renamed_00(h5file):
    with h5py.File(h5file, "r+") as f:
        f["data/conv1"].move("0", "00")
    with pytest.raises(errors.FormatError, match="not a blob index") as ei:
        read_caffemodel(h5file)
    _named(ei.value, h5file, "conv1")


def test_blob_index_as_a_huge_dataset_name(h5file):
    with h5py.File(h5file, "r+") as f:
        f["data/conv1"].move("1", "4294967296")
    tracemalloc.start()
    try:
        with pytest.raises(errors.FormatError, match="not a blob index") as ei:
            read_caffemodel(h5file)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    _named(ei.value, h5file, "conv1")
    assert peak < 10 << 20


@pytest.mark.parametrize("target", ["/data", "/data/conv1", "/"])
def test_soft_link_cycle_under_data(h5file, target):
    with h5py.File(h5file, "r+") as f:
        f["data/loop"] = h5py.SoftLink(target)
    with pytest.raises(errors.FormatError, match="soft link") as ei:
        read_caffemodel(h5file)
    _named(ei.value, h5file, "loop")


def test_hard_link_cycle_under_data(h5file):
    with h5py.File(h5file, "r+") as f:
        g = f["data"].create_group("a")
        g["b"] = f["data"]  # a hard link back up: an endless walk without the check
    with pytest.raises(errors.FormatError, match="links back") as ei:
        read_caffemodel(h5file)
    _named(ei.value, h5file)


def test_deep_nesting(h5file):
    with h5py.File(h5file, "r+") as f:
        f["data"].create_dataset("/".join(["n"] * 300) + "/0", data=np.ones(2, np.float32))
    with pytest.raises(errors.FormatError, match="nested deeper") as ei:
        read_caffemodel(h5file)
    _named(ei.value, h5file)


def test_gzip_bomb_is_refused_with_its_reason(tmp_path):
    p = tmp_path / "bomb.caffemodel.h5"
    n = 64 << 20  # 256 MiB of zeros in ~260 KB (the campaign's: 768 MiB in 845 KB)
    with h5py.File(p, "w") as f:
        ds = f.create_dataset("data/fc/0", shape=(n,), dtype="f4", chunks=(1 << 20,), compression="gzip",
                              compression_opts=9)
        ds[: 1 << 20] = 0.0
        chunk = ds.id.read_direct_chunk((0,))[1]
        for s in range(1 << 20, n, 1 << 20):
            ds.id.write_direct_chunk((s,), chunk)
    assert p.stat().st_size < 2 << 20
    tracemalloc.start()
    try:
        with pytest.raises(errors.FormatError, match="compression bomb") as ei:
            read_caffemodel(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    _named(ei.value, p, "fc")
    assert "Caffe stores blobs raw" in str(ei.value)
    assert peak < 10 << 20


def test_compressed_dataset_within_bounds_reads(tmp_path):
    """A gzip-compressed blob of real-looking weights (another tool's file) still reads."""
    p = tmp_path / "gz.caffemodel.h5"
    w = (np.random.default_rng(0).standard_t(4, (64, 256)) * 0.05).astype(np.float32)
    with h5py.File(p, "w") as f:
        f.create_dataset("data/fc/0", data=w, compression="gzip", shuffle=True)
        f.create_dataset("data/fc/1", data=np.zeros(64, "f8"), compression="gzip")
    m = read_caffemodel(p)
    assert np.array_equal(m.layer("fc").blobs[0], w) and m.layer("fc").storage == ["float32", "float64"]


@pytest.mark.parametrize("source", ["/dev/urandom", "/dev/zero", "file"])
def test_external_storage_refused(h5file, tmp_path, source):
    if source == "file":
        source = str(tmp_path / "outside.bin")
        np.ones(216, np.float32).tofile(source)
    with h5py.File(h5file, "r+") as f:
        del f["data/conv1/0"]
        f["data/conv1"].create_dataset("0", shape=(8, 3, 3, 3), dtype="f4", external=[(source, 0, 864)])
    with pytest.raises(errors.FormatError, match="external file") as ei:
        read_caffemodel(h5file)
    _named(ei.value, h5file, "conv1")


def test_external_link_and_virtual_dataset_refused(h5file, tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["w"] = np.ones((8, 3, 3, 3), np.float32)
    with h5py.File(h5file, "r+") as f:
        del f["data/conv1/0"]
        f["data/conv1/0"] = h5py.ExternalLink(str(other), "/w")
    with pytest.raises(errors.FormatError, match="external link") as ei:
        read_caffemodel(h5file)
    _named(ei.value, h5file)
    with h5py.File(h5file, "r+") as f:
        del f["data/conv1/0"]
        layout = h5py.VirtualLayout(shape=(8, 3, 3, 3), dtype="f4")
        layout[...] = h5py.VirtualSource(str(other), "/w", shape=(8, 3, 3, 3))
        f["data/conv1"].create_virtual_dataset("0", layout)
    with pytest.raises(errors.FormatError, match="virtual") as ei:
        read_caffemodel(h5file)
    _named(ei.value, h5file, "conv1")


# ------------------------------------------------------------------ prototxt scanner


@pytest.mark.parametrize("second, why", [("foo", "value was expected"), ("foo {", "never closed"),
                                         ("foo { bar: [1, 2", "never closed"), ("foo: 1 }", "closes no block")])
def test_prototxt_scanner_structure(tmp_path, second, why):
    p = tmp_path / "n.prototxt"
    p.write_text('layer { name: "a" type: "ReLU" }\n' + second)
    with pytest.raises(errors.FormatError, match=why) as ei:
        read_prototxt(p)
    _named(ei.value, p)
    assert "line 2" in str(ei.value)


def test_prototxt_unknown_block_still_skipped(tmp_path):
    p = tmp_path / "n.prototxt"
    p.write_text('layer { name: "a" type: "ReLU" }\nfoo { x: [1, 2] }\n')
    assert read_prototxt(p).skipped == ["foo"]


# ------------------------------------------------------------------ forged .ccz.h5 index


def _forge(path, edit=None, text=None):
    attrs, payload, ix = mutfuzz.read_ccz(path)
    payload = payload[: int(attrs["index"][0])]
    if edit is not None:
        edit(ix)
    mutfuzz.write_ccz(path, attrs, payload, text if text is not None else json.dumps(ix))


def _lossy_file(tmp_path):
    p = tmp_path / "d.ccz.h5"
    cc.save(cc.compress(_model(), preset="default", bits=4), p)
    return p


def _first(ix, method=None):
    return next(b for b in ix["blobs"] if method is None or b["method"] == method)


@pytest.mark.parametrize("case", ["parts-empty-string", "length-infinity", "storage-0", "deleted-record",
                                  "shape-dropped-1", "renamed-layer", "ref-to-later", "version-space"])
def test_forged_index(cczfile, case):
    def edit(ix):
        b = _first(ix)
        if case == "parts-empty-string":
            b["parts"] = ""
        elif case == "length-infinity":
            next(iter(b["parts"].values()))[1] = float("inf")
        elif case == "storage-0":
            ix["layers"][1][2]["storage"] = 0
        elif case == "deleted-record":
            del ix["blobs"][len(ix["blobs"]) // 2]
        elif case == "shape-dropped-1":
            b["shape"] = b["shape"] + [1]  # same bytes, same CRC, another shape
        elif case == "renamed-layer":
            ix["layers"][1][0] = "renamed"
        elif case == "ref-to-later":
            b["method"], b["shared"], b["parts"] = "ref", len(ix["blobs"]) - 1, {}

    _forge(cczfile, edit)
    if case == "version-space":
        with h5py.File(cczfile, "r+") as f:
            f.attrs["format_version"] = np.bytes_(" 1.0")
    with pytest.raises(errors.CorruptDataError) as ei:
        cc.decompress(cczfile)
    _named(ei.value, cczfile)


@pytest.mark.parametrize("ver", [" 1.0", "1.-1", "1", "+1.0", "1_0.0", "\u0661.\u0660", "1.0 "])
def test_format_version_strict(cczfile, ver):
    with h5py.File(cczfile, "r+") as f:
        f.attrs["format_version"] = np.bytes_(ver.encode())
    with pytest.raises(errors.CorruptDataError, match="format_version") as ei:
        cc.open_compressed(cczfile)
    _named(ei.value, cczfile)


def test_index_nested_100000_deep(cczfile):
    _, _, ix = mutfuzz.read_ccz(cczfile)
    text = json.dumps(ix).replace('"unmatched": []', '"unmatched": ' + "[" * 100000 + "]" * 100000, 1)
    _forge(cczfile, text=text)
    with pytest.raises(errors.CorruptDataError, match="nested too deeply") as ei:
        cc.decompress(cczfile)
    _named(ei.value, cczfile)


def test_meta_shape_claims_1e15_values(tmp_path):
    p = _lossy_file(tmp_path)

    def edit(ix):
        _first(ix, "shared")["meta"]["shape"] = "100000,100000,100000"

    _forge(p, edit)
    tracemalloc.start()
    try:
        with pytest.raises(errors.CorruptDataError, match="meta shape") as ei:
            cc.decompress(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    _named(ei.value, p)
    assert peak < 20 << 20


def test_label_count_beyond_its_stream_is_refused_before_allocation(tmp_path):
    """Record and meta agree on a huge shape (both forged): the label stream's bytes still cannot hold it."""
    from caffecompress.engine import blob as B

    enc = B.encode_blob((np.random.default_rng(0).standard_t(4, 4096) * 0.1).astype(np.float32), bits=4)
    meta = dict(enc.meta, shape="2000000000", nlab=2_000_000_000, l_n=2_000_000_000)
    tracemalloc.start()
    try:
        with pytest.raises(errors.CorruptDataError):
            B.decode_blob(enc.method, meta, enc.parts)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20


def test_payload_soft_link_to_itself(cczfile):
    with h5py.File(cczfile, "r+") as f:
        del f["payload"]
        f["payload"] = h5py.SoftLink("/payload")
    with pytest.raises(errors.CaffeCompressError) as ei:
        cc.decompress(cczfile)
    _named(ei.value, cczfile)


def test_skeleton_stream_bomb(cczfile):
    """A skeleton (valid CRC) inflating far beyond any real net's structure: 1.x's
    deflated stream, 2.x's index block."""
    attrs, payload, ix = mutfuzz.read_ccz(cczfile)
    payload = payload[: int(attrs["index"][0])]
    if "_texts" in attrs:
        attrs["_texts"] = (bytes(256 << 20), attrs["_texts"][1])
        mutfuzz.write_ccz(cczfile, attrs, payload, json.dumps(ix))
    else:
        c = zlib.compressobj(9)
        bomb = b"".join([c.compress(bytes(1 << 20)) for _ in range(256)] + [c.flush()])
        ix["streams"]["skeleton"] = [len(payload), len(bomb), "|u1", len(bomb), zlib.crc32(bomb)]
        mutfuzz.write_ccz(cczfile, attrs, payload, json.dumps(ix), extra=bomb)
    tracemalloc.start()
    try:
        with pytest.raises(errors.CorruptDataError, match="skeleton|inflates past") as ei:
            cc.decompress(cczfile)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    _named(ei.value, cczfile)
    assert peak < 80 << 20


# ------------------------------------------------------------------ small ones


def test_decompress_missing_file_is_format_error(tmp_path):
    p = tmp_path / "absent.ccz.h5"
    with pytest.raises(errors.FormatError) as ei:
        cc.decompress(p)
    _named(ei.value, p)
    with pytest.raises(errors.FormatError) as ei:
        read_caffemodel(p)
    _named(ei.value, p)


def test_cli_names_the_file_for_a_damaged_hdf5(h5file, capsys):
    _insert_byte(h5file, 700)
    assert main([str(h5file), "-o", str(h5file.with_name("o.ccz.h5")), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(h5file) in err[0], err


def test_layers_in_order_without_blobs_still_read(tmp_path):
    """The schema is not stricter than the format: an index written today passes it unchanged."""
    m = Model(layers=[Layer("in", "Input", [], []), Layer("a", "ReLU", [], [])], name="x")
    p = tmp_path / "e.ccz.h5"
    cc.save(cc.compress(m), p)
    assert [lay.name for lay in cc.decompress(p).layers] == ["in", "a"]


def test_v2_file_with_a_varint_field_2_reads_and_writes_back(tmp_path):
    """Field 2 (V1 ``layers``) with another wire type is an unknown field, as protobuf
    and Caffe take it: the read goes on and the writer keeps it (the 120,000-case
    campaign's one finding: the writer refused it without naming the file)."""
    from caffecompress.caffe.writer import caffemodel_bytes

    good = caffemodel_bytes(_model())
    p = tmp_path / "v.caffemodel"
    p.write_bytes(good + b"\x10\x05")  # key (2, VARINT), value 5
    m = read_caffemodel(p)
    assert m.format == "V2"
    assert caffemodel_bytes(m) == good + b"\x10\x05"
