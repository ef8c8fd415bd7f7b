"""The compressed container: round trips, versioning, overhead, damage detection."""

from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

import caffecompress as cc
from caffecompress import container
from caffecompress.errors import (
    CaffeCompressError,
    CorruptDataError,
    FormatError,
    OutputExistsError,
    UnsupportedVersionError,
)
from caffecompress.model import Layer, Model


def tiny_model(seed=0) -> Model:
    """A hand-made net: conv + BN + two fc layers sharing a weight, odd values included."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_t(4, (16, 3, 3, 3)) * 0.1).astype(np.float32)
    w.flat[:3] = [-0.0, np.float32(1e-42), 0.0]  # signed zero and a subnormal survive lossless
    fc = (rng.standard_t(4, (10, 300)) * 0.05).astype(np.float32)
    return Model(
        layers=[
            Layer("data", "Input", [], []),
            Layer("conv1", "Convolution", [w, rng.standard_normal(16).astype(np.float32)], ["", ""]),
            Layer("bn1", "BatchNorm", [rng.random(16, dtype=np.float32), rng.random(16, dtype=np.float32),
                                       np.array([999.0], np.float32)], []),
            Layer("fc_a", "InnerProduct", [fc, np.zeros(10, np.float32)], ["shared_w", ""]),
            Layer("fc_b", "InnerProduct", [fc.copy(), np.ones(10, np.float32)], ["shared_w", ""]),
            Layer("prob", "Softmax", [], []),
        ],
        name="tiny-ünï",
        skeleton=b"\x0a\x04tiny\x12\x00",
        prototxt="name: \"tiny\"\n# verbatim, with odd spacing   \n",
        format="V2",
        unmatched=["ghost"],
    )


def assert_same_model(a: Model, b: Model, exact=True):
    assert [(l.name, l.type) for l in a.layers] == [(l.name, l.type) for l in b.layers]
    assert a.name == b.name and a.skeleton == b.skeleton and a.prototxt == b.prototxt
    assert a.format == b.format and a.unmatched == b.unmatched
    for la, lb in zip(a.layers, b.layers):
        assert la.param_names == lb.param_names
        assert len(la.blobs) == len(lb.blobs)
        for x, y in zip(la.blobs, lb.blobs):
            assert x.shape == y.shape and x.dtype == y.dtype
            if exact:
                assert x.tobytes() == y.tobytes(), la.name


@pytest.fixture
def lossless_file(tmp_path):
    m = tiny_model()
    p = tmp_path / "tiny.ccz.h5"
    cc.save(cc.compress(m, preset="lossless"), p)
    return m, p


@pytest.fixture
def lossless_file_v1(tmp_path):
    """The same in the 1.x layout (forged below as 1.x files are)."""
    m = tiny_model()
    p = tmp_path / "tiny.v1.ccz.h5"
    cc.save(cc.compress(m, preset="lossless"), p, format_major=1)
    return m, p


def test_lossless_roundtrip_bit_exact(lossless_file):
    m, p = lossless_file
    assert_same_model(m, cc.decompress(p))
    # the in-memory object restores identically too
    assert_same_model(m, cc.decompress(cc.open_compressed(p)))


def test_layout_is_few_objects_and_versioned(lossless_file):
    _, p = lossless_file
    with h5py.File(p, "r") as f:
        assert list(f.keys()) == ["payload"]
        assert sorted(f.attrs) == ["format", "format_version", "index"]
        assert f.attrs["format"] == b"caffecompress"
        assert f.attrs["format_version"] == b"2.0"
        assert f["payload"].dtype == np.uint8 and f["payload"].chunks is None
        # v110 superblock (version >= 2): HDF5 checksums every metadata object
        assert f.id.get_create_plist().get_version()[0] >= 2
        # fixed-length strings only (a variable-length one costs a heap block)
        for a in ("format", "format_version"):
            assert f.attrs.get_id(a).get_type().is_variable_str() is False


def test_shared_parameter_stored_once(lossless_file):
    m, p = lossless_file
    cm = cc.open_compressed(p)
    refs = [r for r in cm.records if r.method == "ref"]
    assert len(refs) == 1 and refs[0].nbytes == 0
    assert cm.layers[refs[0].layer][0] == "fc_b"
    restored = cc.decompress(p)
    assert np.array_equal(restored.layer("fc_b").blobs[0], m.layer("fc_a").blobs[0])


def test_shared_name_with_different_values_is_stored_twice(tmp_path):
    m = tiny_model()
    m.layer("fc_b").blobs[0][0, 0] += 1.0  # same ParamSpec name, different data
    cm = cc.compress(m, preset="lossless")
    assert not [r for r in cm.records if r.method == "ref"]
    cc.save(cm, tmp_path / "x.h5")
    assert_same_model(m, cc.decompress(tmp_path / "x.h5"))


def test_random_access_one_layer(lossless_file):
    m, p = lossless_file
    blobs = container.read_layer(p, "fc_b")
    assert [b.tobytes() for b in blobs] == [b.tobytes() for b in m.layer("fc_b").blobs]
    with pytest.raises(KeyError):
        container.read_layer(p, "nope")


def test_refuses_newer_major_version(lossless_file):
    _, p = lossless_file
    with h5py.File(p, "r+") as f:
        f.attrs["format_version"] = np.bytes_("3.0")
    with pytest.raises(UnsupportedVersionError, match="upgrade"):
        cc.open_compressed(p)


@pytest.mark.parametrize("fixture, ver", [("lossless_file", "2.9"), ("lossless_file_v1", "1.7")])
def test_accepts_newer_minor_version(request, fixture, ver):
    m, p = request.getfixturevalue(fixture)
    with h5py.File(p, "r+") as f:
        f.attrs["format_version"] = np.bytes_(ver)
    assert_same_model(m, cc.decompress(p))


def test_the_two_layouts_hold_the_same_model_and_2_is_smaller(lossless_file, lossless_file_v1):
    m, p2 = lossless_file
    _, p1 = lossless_file_v1
    assert container.file_info(p1)["format_version"] == "1.3"  # its small float blobs packed
    for p in (p1, p2):
        assert_same_model(m, cc.decompress(p))
    assert p2.stat().st_size < p1.stat().st_size
    with pytest.raises(ValueError, match="format_major"):
        cc.save(cc.compress(m, preset="lossless"), p1.with_name("x.h5"), format_major=3)


def test_a_1x_layout_index_in_a_2x_file_is_refused(lossless_file, lossless_file_v1, tmp_path):
    """The index block decides the layout: a 1.x index under a 2.0 version (and
    the reverse) is a damaged file, typed and named."""
    _, p2 = lossless_file
    _, p1 = lossless_file_v1
    for src, ver in ((p1, "2.0"), (p2, "1.3")):
        q = tmp_path / ("swapped-" + src.name)
        q.write_bytes(src.read_bytes())
        with h5py.File(q, "r+") as f:
            f.attrs["format_version"] = np.bytes_(ver)
        with pytest.raises(CorruptDataError, match="index damaged") as ei:
            cc.open_compressed(q)
        assert str(q) in str(ei.value)


def test_other_hdf5_is_format_error(tmp_path):
    p = tmp_path / "other.h5"
    with h5py.File(p, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(FormatError, match="not a caffecompress file"):
        cc.open_compressed(p)


def test_never_overwrites(tmp_path, lossless_file):
    m, p = lossless_file
    before = p.read_bytes()
    cm = cc.compress(m, preset="lossless")
    with pytest.raises(OutputExistsError):
        cc.save(cm, p)
    assert p.read_bytes() == before
    cc.save(cm, p, force=True)
    # the source of the model is an input: never written onto, even with force
    src = tmp_path / "src.caffemodel"
    src.write_bytes(b"weights")
    cm.source = str(src)
    with pytest.raises(OutputExistsError, match="input"):
        cc.save(cm, src, force=True)
    assert src.read_bytes() == b"weights"
    # no temporary files left behind
    assert sorted(x.name for x in tmp_path.iterdir()) == ["src.caffemodel", "tiny.ccz.h5"]


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    cm = cc.compress(tiny_model(), preset="lossless")
    real = h5py.File

    def file_then_boom(*a, **k):
        f = real(*a, **k)
        f.attrs["format"] = np.bytes_("half-written")
        raise KeyboardInterrupt

    monkeypatch.setattr(container.h5py, "File", file_then_boom)
    with pytest.raises(KeyboardInterrupt):
        cc.save(cm, tmp_path / "out.h5")
    assert list(tmp_path.iterdir()) == []


def _flip(path: Path, pos: int) -> None:
    b = bytearray(path.read_bytes())
    b[pos] ^= 0xFF
    path.write_bytes(bytes(b))


def _payload_range(p):
    with h5py.File(p, "r") as f:
        off = f["payload"].id.get_offset()
        n = f["payload"].shape[0]
    return off, n


def test_flipped_payload_byte_is_corrupt_data(lossless_file):
    _, p = lossless_file
    off, n = _payload_range(p)
    _flip(p, off + n // 2)
    with pytest.raises(CorruptDataError):
        cc.decompress(p)


@pytest.mark.parametrize("preset, kw", [("lossless", {}), ("default", {"bits": 4, "prune": 0.5})])
def test_any_flipped_byte_never_gives_other_weights(tmp_path, preset, kw):
    """Flip bytes all over a small file: either a typed error or the exact weights."""
    m = cc.decompress(cc.compress(tiny_model(), preset=preset, **kw))  # what a good file restores to
    src = tmp_path / "ok.h5"
    cc.save(cc.compress(tiny_model(), preset=preset, **kw), src)
    good = src.read_bytes()
    bad = tmp_path / "bad.h5"
    errors = 0
    for pos in range(0, len(good), max(1, len(good) // 700)):
        b = bytearray(good)
        b[pos] ^= 0x5A
        bad.write_bytes(bytes(b))
        try:
            r = cc.decompress(bad)
        except CaffeCompressError:
            errors += 1
            continue
        assert_same_model(m, r)  # an undamaged-in-effect byte (padding, unused space)
    assert errors > 0


def test_empty_model_roundtrip(tmp_path):
    m = Model(layers=[], name="", skeleton=b"", prototxt=None)
    cc.save(cc.compress(m), tmp_path / "e.h5")
    r = cc.decompress(tmp_path / "e.h5")
    assert r.layers == [] and r.skeleton == b"" and r.prototxt is None


def test_truncated_file(lossless_file):
    _, p = lossless_file
    data = p.read_bytes()
    for cut in (0, 8, 100, len(data) // 2, len(data) - 1):
        p.write_bytes(data[:cut])
        with pytest.raises(CaffeCompressError):
            cc.decompress(p)


def test_index_crc_catches_damage(lossless_file):
    _, p = lossless_file
    with h5py.File(p, "r") as f:
        off, ln, _ = (int(v) for v in f.attrs["index"])
        start = f["payload"].id.get_offset()
    _flip(p, start + off + ln // 2)
    with pytest.raises(CorruptDataError, match="index fails its CRC32"):
        cc.open_compressed(p)


def test_file_info_overhead(lossless_file):
    _, p = lossless_file
    fi = container.file_info(p)
    assert fi["file_bytes"] == p.stat().st_size
    assert fi["overhead_bytes"] == fi["file_bytes"] - fi["dataset_bytes"]
    assert 0 < fi["overhead_bytes"] < 1024
    assert 0 < fi["index_bytes"] < fi["payload_bytes"]
    assert fi["format_version"] == "2.0"


def test_caffemodel_bytes_in_memory(zoo):
    src = zoo / "mtcnn" / "det1.caffemodel"
    cm = cc.compress(cc.read_caffemodel(src), preset="lossless")
    assert container.caffemodel_bytes(cm) == src.read_bytes()


# ---------------------------------------------------------------- golden files

GOLDEN = Path(__file__).parent / "golden"


def _golden_cases():
    return sorted(GOLDEN.glob("*.ccz.h5"))


def _blob_hashes(m) -> dict:
    """``layer/index -> [shape, dtype, sha256]`` of a model's blobs, as the golden manifests hold them."""
    return {f"{lay.name}/{i}": [list(b.shape), b.dtype.str, hashlib.sha256(b.tobytes()).hexdigest()]
            for lay in m.layers for i, b in enumerate(lay.blobs)}


@pytest.mark.parametrize("path", _golden_cases(), ids=lambda p: p.name)
def test_golden_v1_files_read_forever(path):
    """Files written by format 1.0 and 1.1 restore to the recorded arrays, forever."""
    import json

    expected = json.loads(path.with_suffix("").with_suffix(".json").read_text())
    with h5py.File(path, "r") as f:
        assert f.attrs["format_version"].decode() == expected["format_version"]
    m = cc.decompress(path)
    assert _blob_hashes(m) == expected["blobs"]
    assert hashlib.sha256(m.skeleton).hexdigest() == expected["skeleton_sha256"]
    assert (m.prototxt is None) == (expected["prototxt_sha256"] is None)
    if m.prototxt is not None:
        assert hashlib.sha256(m.prototxt.encode()).hexdigest() == expected["prototxt_sha256"]


def test_golden_files_exist():
    assert len(_golden_cases()) >= 2


#: The 1.0 golden files, byte for byte: they are what 1.0 wrote, never regenerated.
GOLDEN_1_0_SHA256 = {
    "example.bits4-prune.ccz.h5": "1e8bd5d91d4c0106f4d4ab9be6e6e58615c59135e7249d423930049e73ac733f",
    "example.deep-compression.ccz.h5": "bf4b22a5234dc10be5dbf24b5391526338f5df4530da0f305482f5c170415393",
    "example.default.ccz.h5": "659277fcb760a0957d6babdf6c4f3b2930045e4690cb0edaf18099366802fb91",
    "example.lossless.ccz.h5": "d98d8d2ab25898a99e046f62b9820a22093cf94a9224f0de18407c61f0ab611d",
}


#: The 1.1, 1.2, 1.3, 2.0, 2.1, 2.2 and 2.3 golden files, byte for byte, likewise.
GOLDEN_LATER_SHA256 = {
    "example.grid.ccz.h5": ("1.1", "9ffaac42c160796698b11db03ff44d93e82555484cf262ff014fcadf74413253"),
    "example.grid-step.ccz.h5": ("1.1", "8936f22bee44bc11daa95dcfa7ce72d5be5694c347e5ead92db8d98686732de7"),
    "example.grid-fidelity.ccz.h5": ("1.1", "fa3f44f22878cb413be7554dcbd9f80f832cfd6a5a8684dc2d4c944e943744b7"),
    "example.dq-rans.ccz.h5": ("1.2", "7e8672aa8dc7a44e25b5028ba1225feebb8c1703027caf500184ae8fb4803fba"),
    "example.rans-step.ccz.h5": ("1.2", "4ccdfaba0e21e434a667063b35865b1c9d3dc9b9524dbfce9775fc2da463ec24"),
    "example.fpack.ccz.h5": ("1.3", "78738613983765842ed37a29387bfe0ca535fea600a1a4a0dbe395e8cf4252d8"),
    "example.fpack-lossless.ccz.h5": ("1.3", "0b6eaa6b38211438e62a573e67a2aa1497e209578213da49dbce9c2ad81e7b50"),
    "example.v2-data-free.ccz.h5": ("2.0", "97fb870f8527396f051ee791a19ee2b6ba0a12fdc0d639ad305474e14cc81404"),
    "example.v2-lossless.ccz.h5": ("2.0", "793412a775b24f04763f4eecf637b06396acff48fdcfe164781af8f3e163dd52"),
    "example.v2-bits4-prune.ccz.h5": ("2.0", "c64461b0b8a5e47b62c7b0725bd22c3f3e455846c62cf77929a6fe0452b0c049"),
    "example.v21-bits6.ccz.h5": ("2.1", "b6e072028277bc916cbe709a184f02eb5c444fdc87378e18db2a7f2acabc72ae"),
    "example.v21-fidelity.ccz.h5": ("2.1", "1f5c8c40fe41381c518079311cc9cf1296d5894de41011040c18e5e8a4956a1a"),
    "example.v22-fidelity.ccz.h5": ("2.2", "33c80719d4c60adeca4c63110bfdee18417374ec965aa98c12a04cd82c0d7891"),
    "example.v23-fidelity.ccz.h5": ("2.3", "8fa410761874d1ff22d555bb9b481b457ee9bd7d13150f1a923ee367fb2661ae"),
    "example.v23-bits6.ccz.h5": ("2.3", "b299c407c335fe0665c57c90518be2686cab9a18754f487e650b4949c74f5abb"),
}


@pytest.mark.parametrize("name", sorted(GOLDEN_LATER_SHA256))
def test_golden_later_files_untouched(name):
    version, sha = GOLDEN_LATER_SHA256[name]
    p = GOLDEN / name
    assert hashlib.sha256(p.read_bytes()).hexdigest() == sha, f"{name} was rewritten"
    assert container.file_info(p)["format_version"] == version


def test_golden_1_0_files_untouched():
    for name, sha in GOLDEN_1_0_SHA256.items():
        p = GOLDEN / name
        assert hashlib.sha256(p.read_bytes()).hexdigest() == sha, f"{name} was rewritten"
        with h5py.File(p, "r") as f:
            assert f.attrs["format_version"] == b"1.0"
        assert {r.method for r in cc.open_compressed(p).records} <= {"lossless", "ref", "raw", "exact", "shared",
                                                                    "shared+sparse"}


def test_golden_1_1_files_hold_grid_blobs():
    import json

    got = {}
    for p in _golden_cases():
        man = json.loads(p.with_suffix("").with_suffix(".json").read_text())
        if man["format_version"] == "1.1":
            got[p.name] = {r.method for r in cc.open_compressed(p).records}
            assert container.file_info(p)["format_version"] == "1.1"
    assert {"example.grid.ccz.h5", "example.grid-step.ccz.h5"} <= set(got)
    assert all("grid" in methods for methods in got.values()), got


def _grid_streams(path):
    """What the grid records of a golden file use: DQ, rANS, rANS token mode, Huffman."""
    seen = set()
    for r in cc.open_compressed(path).records:
        if r.method == "grid":
            seen.add("dq" if "dq_seg" in r.meta else "plain")
            if r.meta.get("coder") == "rans":
                seen.add("rans-tok" if r.meta.get("tok") else "rans")
            else:
                seen.add("huffman")
    return seen


def test_golden_1_2_files_hold_every_new_stream():
    # between them: DQ with both coders, plain grids with both coders, the
    # rANS coder over a small alphabet and in magnitude-token mode
    dq = _grid_streams(GOLDEN / "example.dq-rans.ccz.h5")
    step = _grid_streams(GOLDEN / "example.rans-step.ccz.h5")
    assert {"dq", "rans-tok", "huffman"} <= dq and "plain" not in dq
    assert {"plain", "rans", "rans-tok", "huffman"} <= step and "dq" not in step


def test_golden_2_2_files_hold_running_magnitude_contexts():
    """rANS labels with ``ctx = 1`` (the token mode's are covered by the coder's tests)."""
    recs = [r for r in cc.open_compressed(GOLDEN / "example.v22-fidelity.ccz.h5").records
            if r.meta.get("coder") == "rans"]
    assert recs and any(r.meta.get("ctx") == 1 and not r.meta.get("tok") for r in recs)
    # the 1.2 files keep the previous-index rule (no ctx), and still read
    assert not any("ctx" in r.meta for r in cc.open_compressed(GOLDEN / "example.dq-rans.ccz.h5").records)


def test_golden_2_3_files_hold_level_gap_codebooks():
    """Every k-means codebook of the 2.3 files is stored as key gaps, and
    the 2.1 files' float-field codebooks still read beside them."""
    for name in ("example.v23-fidelity.ccz.h5", "example.v23-bits6.ccz.h5"):
        books = [r for r in cc.open_compressed(GOLDEN / name).records if r.method in ("exact", "shared")]
        assert books and all("cb_lk" in r.meta and "cb_ebits" not in r.meta for r in books), name
    old = [r for r in cc.open_compressed(GOLDEN / "example.v21-fidelity.ccz.h5").records if "cb_n" in r.meta]
    assert old and not any("cb_lk" in r.meta for r in old)


def test_2_3_codebooks_go_to_1x_files_as_float_fields(tmp_path):
    cm = cc.open_compressed(GOLDEN / "example.v23-bits6.ccz.h5")
    p = cc.save(cm, tmp_path / "v1.ccz.h5", format_major=1)
    assert container.file_info(p)["format_version"] == "1.4"
    recs = [r for r in cc.open_compressed(p).records if r.method in ("exact", "shared")]
    assert recs and all("cb_ebits" in r.meta and "cb_lk" not in r.meta for r in recs)
    assert _blob_hashes(cc.decompress(p)) == _blob_hashes(cc.decompress(cm))


def test_golden_2_0_files_hold_the_block_layout():
    """The 2.0 goldens hold the block layout: the texts in the index block, no
    ``streams``, parts as [length, dtype] filling the payload up to the block."""
    import json

    for name in ("example.v2-data-free.ccz.h5", "example.v2-lossless.ccz.h5", "example.v2-bits4-prune.ccz.h5"):
        p = GOLDEN / name
        with h5py.File(p, "r") as f:
            off, ln, _ = (int(v) for v in f.attrs["index"])
            payload = f["payload"][()].tobytes()
        text, skel, proto = container.read_index_block(payload[off : off + ln])
        ix = json.loads(text)
        assert "streams" not in ix and skel and proto
        assert all(len(e) == 2 for b in ix["blobs"] for e in b["parts"].values())
        assert sum(e[0] for b in ix["blobs"] for e in b["parts"].values()) == off
    methods = {r.method for r in cc.open_compressed(GOLDEN / "example.v2-bits4-prune.ccz.h5").records}
    assert "shared+sparse" in methods
    recs = cc.open_compressed(GOLDEN / "example.v2-data-free.ccz.h5").records
    assert {"grid", "lossless"} <= {r.method for r in recs} and any(r.meta.get("codec") == "fpack" for r in recs)


def test_golden_2_1_files_hold_packed_codebooks_as_found_and_rounded():
    from caffecompress.config import CODEBOOK_MANTISSA_EXTRA

    found = [r for r in cc.open_compressed(GOLDEN / "example.v21-bits6.ccz.h5").records if "cb_n" in r.meta]
    rounded = [r for r in cc.open_compressed(GOLDEN / "example.v21-fidelity.ccz.h5").records if "cb_n" in r.meta]
    assert found and {r.method for r in found} == {"shared"} and max(r.meta["cb_mbits"] for r in found) > 16
    assert rounded and all(r.meta["cb_mbits"] <= r.bits + CODEBOOK_MANTISSA_EXTRA for r in rounded)


def test_golden_1_3_files_hold_packed_fields_rounded_and_exact():
    rounded = [r for r in cc.open_compressed(GOLDEN / "example.fpack.ccz.h5").records
               if r.method == "lossless" and r.meta.get("codec") == "fpack"]
    exact = [r for r in cc.open_compressed(GOLDEN / "example.fpack-lossless.ccz.h5").records
             if r.method == "lossless" and r.meta.get("codec") == "fpack"]
    assert rounded and max(r.meta["mbits"] for r in rounded) <= 12
    assert exact and max(r.meta["mbits"] for r in exact) > 12


@pytest.mark.parametrize("name", ["example.dq-rans.ccz.h5", "example.rans-step.ccz.h5",
                                  "example.v22-fidelity.ccz.h5"])
def test_golden_1_2_files_read_without_numba(name, monkeypatch):
    """The NumPy twins of the trellis and rANS decoders restore what the numba ones did."""
    import json

    from caffecompress.engine import rans, trellis

    for mod in (rans, trellis):  # a fresh cache: the compiled twins stay cached for the other tests
        monkeypatch.setattr(mod._twins, "numba", lambda: None)
        monkeypatch.setattr(mod._twins, "cache", {})
    assert rans._twins.get("decode_group") is None and trellis._twins.get("scan") is None
    calls = []
    np_decode = rans._np_decode_groups
    monkeypatch.setattr(rans, "_np_decode_groups", lambda *a: calls.append(1) or np_decode(*a))
    path = GOLDEN / name
    expected = json.loads(path.with_suffix("").with_suffix(".json").read_text())["blobs"]
    assert _blob_hashes(cc.decompress(path)) == expected and calls  # the NumPy rANS decoder ran


def test_opencv_net_straight_from_compressed_file(tmp_path):
    cv2 = pytest.importorskip("cv2")
    data = Path(cc.__file__).parent / "data"
    m = cc.read_caffemodel(data / "example.caffemodel", prototxt=data / "example.prototxt")
    p = tmp_path / "ex.h5"
    cc.save(cc.compress(m, preset="lossless"), p)
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    net = cc.opencv_net(p)
    net.setInput(x)
    ref = cv2.dnn.readNetFromCaffe(str(data / "example.prototxt"), str(data / "example.caffemodel"))
    ref.setInput(x)
    assert np.array_equal(net.forward(), ref.forward())
    assert cc.caffemodel_bytes(p) == (data / "example.caffemodel").read_bytes()
    # a plain Model is serialized as it is, not treated as a compressed file
    assert cc.caffemodel_bytes(m) == (data / "example.caffemodel").read_bytes()


def _forge_v2(src, dst, edit_ix=None, edit_raw=None):
    """Rewrite a 2.x file's index block (CRC recomputed, as a crafted file would)."""
    import json as _json
    import lzma
    import struct

    with h5py.File(src, "r") as f:
        attrs = {k: f.attrs[k] for k in f.attrs}
        payload = f["payload"][()].tobytes()
    off, ln, _ = (int(v) for v in attrs["index"])
    text, skel, proto = container.read_index_block(payload[off : off + ln])
    ix = _json.loads(text)
    if edit_ix is not None:
        edit_ix(ix)
    j = _json.dumps(ix).encode()
    raw = struct.pack("<III", len(proto), len(skel), len(j)) + proto + skel + j
    if edit_raw is not None:
        raw = edit_raw(raw)
    z = lzma.compress(raw, format=lzma.FORMAT_RAW, filters=container._BLOCK_FILTERS)
    with h5py.File(dst, "w", libver=("v110", "v110")) as f:
        f.attrs["format"], f.attrs["format_version"] = attrs["format"], attrs["format_version"]
        f.attrs["index"] = np.array([off, len(z), zlib.crc32(z)], np.uint64)
        f["payload"] = np.frombuffer(payload[:off] + z, np.uint8)
    return dst


def _grow_first_part(ix):
    e = next(e for b in ix["blobs"] for e in b["parts"].values())
    e[0] += 4


@pytest.mark.parametrize("case, edit_ix, edit_raw, match", [
    ("parts-overrun", _grow_first_part, None, "parts hold"),
    ("streams-key", lambda ix: ix.update(streams={}), None, "not in 'streams'"),
    ("1x-part-entry", lambda ix: next(b for b in ix["blobs"] if b["parts"])["parts"].update(
        data=[0, 4, "|u1", 4, 0]), None, "not a list of 2"),
    ("odd-length", lambda ix: next(e for b in ix["blobs"] for e in b["parts"].values()).__setitem__(
        slice(None), [3, "<u2"]), None, "whole number"),
    ("header-lengths", None, lambda raw: raw[:8] + (len(raw)).to_bytes(4, "little") + raw[12:], "do not fill"),
    ("short-block", None, lambda raw: raw[:7], "shorter than its header"),
    ("no-header", None, lambda raw: b"", "shorter than its header"),
])
def test_forged_2x_index_blocks_are_refused(lossless_file, tmp_path, case, edit_ix, edit_raw, match):
    _, p = lossless_file
    q = _forge_v2(p, tmp_path / f"{case}.ccz.h5", edit_ix, edit_raw)
    with pytest.raises(CorruptDataError, match=match) as ei:
        cc.decompress(q)
    assert str(q) in str(ei.value)


def test_a_2x_block_with_bytes_after_its_stream_is_refused(lossless_file, tmp_path):
    _, p = lossless_file
    with h5py.File(p, "r") as f:
        attrs = {k: f.attrs[k] for k in f.attrs}
        payload = f["payload"][()].tobytes()
    off, ln, _ = (int(v) for v in attrs["index"])
    z = payload[off : off + ln] + b"\0\0\0\0"
    q = tmp_path / "tail.ccz.h5"
    with h5py.File(q, "w", libver=("v110", "v110")) as f:
        f.attrs["format"], f.attrs["format_version"] = attrs["format"], attrs["format_version"]
        f.attrs["index"] = np.array([off, len(z), zlib.crc32(z)], np.uint64)
        f["payload"] = np.frombuffer(payload[:off] + z, np.uint8)
    with pytest.raises(CorruptDataError, match="after the block") as ei:
        cc.open_compressed(q)
    assert str(q) in str(ei.value)


def test_crafted_index_claiming_a_huge_blob_is_refused(lossless_file_v1, tmp_path):
    """A well-formed file (valid CRCs) whose index claims 10**15 elements: refused, nothing allocated."""
    import json as _json

    _, p = lossless_file_v1
    with h5py.File(p, "r") as f:
        off, ln, _ = (int(v) for v in f.attrs["index"])
        payload = f["payload"][()]
    ix = _json.loads(zlib.decompress(payload[off:off + ln].tobytes()))
    ix["blobs"][0]["shape"] = [10**15]
    z = np.frombuffer(zlib.compress(_json.dumps(ix).encode()), np.uint8)
    crafted = tmp_path / "crafted.h5"
    with h5py.File(crafted, "w", libver=("v110", "v110")) as f:
        f.attrs["format"] = np.bytes_("caffecompress")
        f.attrs["format_version"] = np.bytes_("1.0")
        f.attrs["index"] = np.array([off, z.size, zlib.crc32(z)], np.uint64)
        f["payload"] = np.concatenate([payload[:off], z])
    with pytest.raises(CorruptDataError, match="larger than a Caffe blob can be"):
        cc.decompress(crafted)


def test_output_is_reproducible(tmp_path):
    """Same model, same settings -> byte-identical files (no timestamps, stable order)."""
    for preset in ("lossless", "default"):
        a, b = tmp_path / f"a-{preset}.h5", tmp_path / f"b-{preset}.h5"
        cc.save(cc.compress(tiny_model(), preset=preset), a)
        cc.save(cc.compress(tiny_model(), preset=preset, jobs=1), b)
        assert a.read_bytes() == b.read_bytes()


def test_saved_file_has_normal_permissions(lossless_file):
    """The temp-then-rename write must not leave mkstemp's 0600 on the result."""
    import os

    _, path = lossless_file
    mode = os.stat(path).st_mode & 0o777
    old = os.umask(0)
    os.umask(old)
    assert mode == 0o666 & ~old
