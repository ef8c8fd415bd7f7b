"""Format 1.1's ``grid`` blobs in the container: forged records are refused, typed, before allocation.

A CRC only proves the bytes are those written: these tests rewrite the index
of a real saved file (its CRC recomputed, as a crafted file would carry it)
with a hostile grid record and check the reader answers CorruptDataError
naming the file, without allocating on the forged record's word.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
import tracemalloc
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

import caffecompress as cc
from caffecompress import container
from caffecompress.errors import CorruptDataError

GOLDEN_GRID = Path(__file__).parent / "golden" / "example.grid.ccz.h5"


def read_ccz(path):
    with h5py.File(path, "r") as f:
        attrs = {k: f.attrs[k] for k in f.attrs}
        payload = f["payload"][()].tobytes()
    off, ln, _ = (int(v) for v in attrs["index"])
    return attrs, payload[:off], json.loads(zlib.decompress(payload[off : off + ln]))


def write_ccz(path, attrs, payload: bytes, ix: dict):
    z = zlib.compress(json.dumps(ix, sort_keys=True).encode(), 6)
    with h5py.File(path, "w", libver=("v110", "v110")) as f:
        for k, v in attrs.items():
            if k != "index":
                f.attrs[k] = v
        f.attrs["index"] = np.array([len(payload), len(z), zlib.crc32(z)], np.uint64)
        f.create_dataset("payload", data=np.frombuffer(payload + z, np.uint8))


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory):
    """A data-free (grid) file of the example model, and its decoded index."""
    p = tmp_path_factory.mktemp("grid") / "ex.grid.ccz.h5"
    shutil.copyfile(GOLDEN_GRID, p)
    attrs, payload, ix = read_ccz(p)
    assert attrs["format_version"] == b"1.1"
    grids = [i for i, b in enumerate(ix["blobs"]) if b["method"] == "grid"]
    assert len(grids) >= 2 and all(ix["blobs"][i]["meta"]["nsym"] > 1 for i in grids)
    return p, attrs, payload, ix, grids


def test_grid_file_reads_and_saves_at_the_version_it_needs(tmp_path):
    m = cc.read_caffemodel(Path(cc.__file__).parent / "data" / "example.caffemodel")
    # an explicit step: plain grid blobs (1.1), unless a blob's labels went to the rANS coder (1.2)
    cm = cc.compress(m, preset="default", step=2.0 ** -9)
    assert "grid" in {r.method for r in cm.records}
    assert not any("dq_seg" in r.meta for r in cm.records)
    rans = any(r.meta.get("coder") == "rans" for r in cm.records)
    packed = any(r.meta.get("codec") == "fpack" for r in cm.records)
    p = cc.save(cm, tmp_path / "g.ccz.h5", format_major=1)
    with h5py.File(p, "r") as f:
        assert f.attrs["format_version"] == (b"1.3" if packed else b"1.2" if rans else b"1.1")
    # and without the packed fields (the biases kept as LZMA streams): 1.2 or 1.1
    cm2 = dataclasses.replace(cm, records=[_as_lzma(r) for r in cm.records])
    p2 = cc.save(cm2, tmp_path / "g2.ccz.h5", format_major=1)
    with h5py.File(p2, "r") as f:
        assert f.attrs["format_version"] == (b"1.2" if rans else b"1.1")
    # the 2.x layout (the default) holds the same blobs
    p3 = cc.save(cm, tmp_path / "g3.ccz.h5")
    ema = any(r.meta.get("ctx") == 1 for r in cm.records)  # rANS labels with 2.2's contexts
    with h5py.File(p3, "r") as f:
        assert f.attrs["format_version"] == (b"2.2" if ema else b"2.0")
    # the 1.x files hold such labels recoded with the rule 1.x readers know
    assert not any("ctx" in r.meta for q in (p, p2) for r in cc.open_compressed(q).records)
    for q in (p, p3):
        r = cc.decompress(q)
        assert [b.tobytes() for lay in r.layers for b in lay.blobs] == \
            [b.tobytes() for lay in cc.decompress(cm).layers for b in lay.blobs]
    # the same model without a grid blob or packed fields is still written as 1.0
    cm0 = cc.compress(m, preset="lossless")
    p0 = cc.save(dataclasses.replace(cm0, records=[_as_lzma(r) for r in cm0.records]), tmp_path / "l.ccz.h5",
                 format_major=1)
    with h5py.File(p0, "r") as f:
        assert f.attrs["format_version"] == b"1.0"


def _as_lzma(r):
    """A lossless record's packed fields (1.3) as the 1.0 LZMA stream of the same values."""
    if r.method != "lossless" or r.meta.get("codec") != "fpack":
        return r
    from caffecompress.engine.floatpack import unpack

    meta, parts = _lzma_only(unpack(r.meta, r.parts["data"], r.size))
    return dataclasses.replace(r, meta=meta, parts=parts)


def _lzma_only(x):
    import lzma

    from caffecompress.pipeline import _lzma_filters, _shuffle

    raw = _shuffle(x).tobytes()
    data = lzma.compress(raw, format=lzma.FORMAT_RAW, filters=_lzma_filters(len(raw)))
    return {"codec": "lzma", "shuffle": 4}, {"data": np.frombuffer(data, np.uint8)}


def _meta(key, value, k=0):
    def edit(ix, g):
        ix["blobs"][g[k]]["meta"][key] = value
    return edit


def _meta_delta(key, d):
    def edit(ix, g):
        ix["blobs"][g[0]]["meta"][key] += d
    return edit


def _meta_del(key):
    def edit(ix, g):
        del ix["blobs"][g[0]]["meta"][key]
    return edit


def _part(key, src=None):
    def edit(ix, g):
        parts = ix["blobs"][g[0]]["parts"]
        if src is None:
            del parts[key]
        else:
            parts[key] = ix["blobs"][g[1]]["parts"][src]
    return edit


def _method(name):
    def edit(ix, g):
        ix["blobs"][g[0]]["method"] = name
    return edit


FORGERIES = {
    # the alphabet: nsym against the +-2047 index range, and against the label stream's
    "nsym_huge": (_meta("nsym", 10**12), r"grid indices .* exceed"),
    "nsym_2_31": (_meta("nsym", 2**31), r"grid indices .* exceed"),
    "nsym_4096": (_meta("nsym", 4096), r"grid indices .* exceed"),
    "nsym_zero": (_meta("nsym", 0), r"index damaged: .* nsym = 0 is out of range"),
    "nsym_negative": (_meta("nsym", -5), r"index damaged: .* nsym = -5 is out of range"),
    "nsym_plus_one": (_meta_delta("nsym", 1), r"label stream has .* symbols, expected"),
    "nsym_one": (_meta("nsym", 1), r"one-value codebook with a label stream"),
    "nsym_text": (_meta("nsym", "lots"), r"grid blob meta is incomplete"),
    "nsym_missing": (_meta_del("nsym"), r"grid blob meta is incomplete"),
    # the lowest index
    "qmin_below": (_meta("qmin", -2048), r"grid indices .* exceed"),
    "qmin_top": (_meta("qmin", 2047), r"grid indices .* exceed"),
    "qmin_huge": (_meta("qmin", -(10**30)), r"grid indices .* exceed"),
    "qmin_text": (_meta("qmin", "abc"), r"grid blob meta is incomplete"),
    "qmin_missing": (_meta_del("qmin"), r"grid blob meta is incomplete"),
    "qmin_shifted": (_meta_delta("qmin", 1), r"CRC32 of the restored blob"),
    # the step
    "step_not_hex": (_meta("step", "zz"), r"grid blob meta is incomplete"),
    "step_empty": (_meta("step", ""), r"grid blob meta is incomplete"),
    "step_bool": (_meta("step", True), r"grid blob meta is incomplete"),
    "step_negative": (_meta("step", (-0.01).hex()), r"not a positive finite number"),
    "step_zero": (_meta("step", "0x0p+0"), r"not a positive finite number"),
    "step_inf": (_meta("step", "inf"), r"not a positive finite number"),
    "step_nan": (_meta("step", "nan"), r"not a positive finite number"),
    "step_overflow": (_meta("step", "0x1.0p+1024"), r"grid blob meta is incomplete"),
    "step_doubled": (lambda ix, g: ix["blobs"][g[0]]["meta"].__setitem__(
        "step", (2 * float.fromhex(ix["blobs"][g[0]]["meta"]["step"])).hex()), r"CRC32 of the restored blob"),
    "step_missing": (_meta_del("step"), r"grid blob meta is incomplete"),
    # the label count against the shape (the schema bounds it by the shape first)
    "nlab_huge": (_meta("nlab", 10**12), r"label count = .* out of range"),
    "nlab_short": (_meta_delta("nlab", -1), r"labels for .* weights"),
    "nlab_zero": (_meta("nlab", 0), r"labels for .* weights"),
    "nlab_missing": (_meta_del("nlab"), r"index damaged: .*grid blob meta is incomplete: it lacks 'nlab'"),
    # the meta's types, refused by the index schema before any decoding (a JSON
    # number, bool or string where the decoder's int()/float.fromhex would take it)
    "step_number": (_meta("step", 0.01), r"index damaged: .*step 0\.01 is not a float\.hex string"),
    "step_int": (_meta("step", 1), r"index damaged: .*step 1 is not a float\.hex string"),
    "qmin_float": (_meta("qmin", 1.0), r"index damaged: .*qmin 1\.0 is not an integer"),
    "qmin_bool": (_meta("qmin", True), r"index damaged: .*qmin True is not an integer"),
    "qmin_numeric_text": (_meta("qmin", "3"), r"index damaged: .*qmin '3' is not an integer"),
    "nsym_float": (_meta("nsym", 2.0), r"index damaged: .*nsym 2\.0 is not an integer"),
    "nsym_bool": (_meta("nsym", True), r"index damaged: .*nsym True is not an integer"),
    "bits_text": (_meta("bits", "4"), r"index damaged: .*bits '4' is not an integer"),
    "bits_float": (_meta("bits", 4.0), r"index damaged: .*bits 4\.0 is not an integer"),
    "bits_huge": (_meta("bits", 10**6), r"index damaged: .*bits = 1000000 is out of range"),
    "bits_negative": (_meta("bits", -1), r"index damaged: .*bits = -1 is out of range"),
    "nlab_text": (_meta("nlab", "12"), r"index damaged: .*label count is '12', not an integer"),
    "nlab_float": (_meta("nlab", 12.0), r"index damaged: .*label count is 12\.0, not an integer"),
    "dq_seg_text": (_meta("dq_seg", "4096"), r"index damaged: .*dq_seg '4096' is not an integer"),
    "dq_seg_float": (_meta("dq_seg", 4096.0), r"index damaged: .*dq_seg 4096\.0 is not an integer"),
    "dq_seg_bool": (_meta("dq_seg", True), r"index damaged: .*dq_seg True is not an integer"),
    "dq_seg_zero": (_meta("dq_seg", 0), r"index damaged: .*dq_seg = 0 is out of range"),
    "dq_seg_huge": (_meta("dq_seg", 1 << 21), r"index damaged: .*dq_seg = 2097152 is out of range"),
    # the label stream: its header against the blob, its parts against each other
    "l_n_huge": (_meta("l_n", 10**12), r"label stream has .* labels"),
    "l_n_plus_one": (_meta_delta("l_n", 1), r"label stream has .* labels"),
    "l_n_negative": (_meta("l_n", -1), r"label stream has .* labels"),
    "l_nsym_huge": (_meta("l_nsym", 10**12), r"code lengths|label stream has"),
    "l_nsym_plus_one": (_meta_delta("l_nsym", 1), r"label stream has"),
    "l_chunk_negative": (_meta("l_chunk", -1), r"Huffman stream header"),
    "lengths_of_another_blob": (_part("l_lengths", "l_lengths"), r"code lengths|Huffman"),
    "payload_of_another_blob": (_part("l_payload", "l_payload"), r"Huffman payload"),
    "offsets_of_another_blob": (_part("l_offsets", "l_offsets"), r"offsets"),
    "lengths_dropped": (_part("l_lengths"), r"Huffman stream 'l_' is incomplete"),
    "payload_dropped": (_part("l_payload"), r"Huffman stream 'l_' is incomplete"),
    "offsets_dropped": (_part("l_offsets"), r"Huffman stream 'l_' is incomplete"),
    # no codebook in a grid blob; a grid record renamed to a codebook method lacks one
    "codebook_added": (_part("codebook", "l_lengths"), r"stores no codebook"),
    "renamed_exact": (_method("exact"), r"codebook must be"),
    "renamed_shared": (_method("shared"), r"codebook must be"),
    "renamed_sparse": (_method("shared+sparse"), r"CorruptDataError|codebook|mask|stream|position"),
    "renamed_unknown": (_method("grid2"), r"unknown method"),
}


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_forged_grid_record_is_refused_before_allocation(grid_file, tmp_path, name):
    src, attrs, payload, ix, grids = grid_file
    edit, match = FORGERIES[name]
    forged = json.loads(json.dumps(ix))
    edit(forged, grids)
    p = tmp_path / f"{name}.ccz.h5"
    write_ccz(p, attrs, payload, forged)
    tracemalloc.start()
    try:
        with pytest.raises(CorruptDataError, match=match) as ei:
            cc.decompress(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(p) in str(ei.value)
    # the whole example model restores to ~0.3 MB: nothing near a forged size is allocated
    assert peak < 16 << 20, f"{peak / 2**20:.1f} MiB allocated"
    # reading one layer goes through the same checks
    layer = ix["layers"][ix["blobs"][grids[0]]["layer"]][0]
    if name != "nlab_huge":  # (the schema refuses that one for the whole file)
        with pytest.raises(CorruptDataError):
            container.read_layer(p, layer)


def test_untouched_forgery_harness_reads(grid_file, tmp_path):
    """The rewrite itself (same index, CRC recomputed) restores: the refusals above are the edits'."""
    src, attrs, payload, ix, _ = grid_file
    p = tmp_path / "same.ccz.h5"
    write_ccz(p, attrs, payload, ix)
    a, b = cc.decompress(p), cc.decompress(src)
    assert [x.tobytes() for lay in a.layers for x in lay.blobs] == [x.tobytes() for lay in b.layers for x in lay.blobs]


# A one-level blob (grid nsym=1, a one-entry exact/shared codebook, shared+sparse
# with nothing pruned) stores no labels: its record is a few bytes whatever size
# it claims. Each probe saves a small genuine one, rewrites its index to claim
# ``n`` values (layout CRC recomputed, as a crafted file would carry it) and
# restores it under a 3 GiB address-space limit, tracing the peak allocation.
_CONST_PROBE = textwrap.dedent("""
    import json, resource, sys, tracemalloc, zlib
    import h5py, numpy as np
    import caffecompress as cc
    from caffecompress.indexschema import layout_crc
    from caffecompress.model import Layer, Model
    from caffecompress.pipeline import crc32_of
    mode, n, src, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    m = Model(layers=[Layer("fc", "InnerProduct", [np.full((64, 64), 0.5, np.float32)], [""])], name="c")
    grid = mode in ("grid", "grid_dq", "genuine")
    if grid:  # an explicit step: a plain grid blob, one level (0.5 = 256 steps)
        cm = cc.compress(m, preset="default", step=2.0 ** -9)
    else:  # a one-entry codebook, format 1.0
        cm = cc.compress(m, preset="default", bits=4)
    cc.save(cm, src, format_major=1)  # forged below in the 1.x layout (test_regressions: both)
    with h5py.File(src, "r") as f:
        attrs = {k: f.attrs[k] for k in f.attrs}
        payload = f["payload"][()].tobytes()
    off, ln, _ = (int(v) for v in attrs["index"])
    ix = json.loads(zlib.decompress(payload[off:off + ln]))
    b = ix["blobs"][0]
    assert b["method"] == ("grid" if grid else "exact") and not b["parts"].keys() - {"codebook"} and "coder" not in b["meta"], b
    assert b["meta"].get("nsym", 1) == 1, b
    b["shape"], b["meta"]["shape"], b["meta"]["nlab"] = [n], str(n), n
    if mode == "grid_dq":
        b["meta"]["dq_seg"] = 4096
    elif mode == "shared_all":
        b["method"], b["meta"]["p_method"], b["meta"]["p_count"] = "shared+sparse", "all", n
    elif mode == "genuine":  # the CRC32 the whole blob has: it must restore
        b["crc32"] = crc32_of(np.full(n, 0.5, np.float32))
    ix["layout"] = layout_crc(ix)
    z = zlib.compress(json.dumps(ix).encode())
    with h5py.File(out, "w", libver=("v110", "v110")) as f:
        f.attrs["format"], f.attrs["format_version"] = attrs["format"], attrs["format_version"]
        f.attrs["index"] = np.array([off, len(z), zlib.crc32(z)], np.uint64)
        f["payload"] = np.frombuffer(payload[:off] + z, np.uint8)
    from caffecompress.engine import trellis  # its compiled twin loaded first: not traced below
    trellis.values(np.zeros(8, np.uint8), 1, 0.5, seg=4)
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    res = {"version": attrs["format_version"].decode()}
    tracemalloc.start()
    try:
        r = cc.decompress(out)
    except cc.CaffeCompressError as exc:
        res.update(result="typed", type=type(exc).__name__, msg=str(exc), peak=tracemalloc.get_traced_memory()[1])
    except MemoryError:
        res.update(result="MemoryError")
    else:
        w = r.layers[0].blobs[0]
        res.update(result="restored", ok=bool(w.shape == (n,) and w.dtype == np.float32 and (w == 0.5).all()))
    print(json.dumps(res))
""")


def _probe(tmp_path, mode, n):
    r = subprocess.run([sys.executable, "-c", _CONST_PROBE, mode, str(n), str(tmp_path / "c.ccz.h5"),
                        str(tmp_path / "f.ccz.h5")],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS probe")
@pytest.mark.parametrize("mode, version", [("grid", "1.1"), ("grid_dq", "1.1"), ("exact", "1.4"),
                                           ("shared_all", "1.4")])  # 1.4: the one level packed
def test_one_level_blob_claiming_a_huge_size(tmp_path, mode, version):
    """2**31-1 values (8 GiB) claimed by a record of no bytes: refused on the CRC32
    of its one level, typed, naming the file and layer, with nothing large allocated."""
    res = _probe(tmp_path, mode, (1 << 31) - 1)
    assert res["version"] == version
    assert res["result"] == "typed" and res["type"] == "CorruptDataError", res
    assert "CRC32 of the restored blob does not match" in res["msg"], res
    assert str(tmp_path / "f.ccz.h5") in res["msg"] and "'fc'" in res["msg"], res
    assert res["peak"] < 16 << 20, f"{res['peak'] / 2**20:.1f} MiB allocated"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS probe")
def test_genuine_one_level_blob_of_vgg_fc6_size_restores(tmp_path):
    """The check costs no legitimate size: a one-level blob as large as VGG-16's
    fc6 (102,760,448 values) with its true CRC32 restores."""
    res = _probe(tmp_path, "genuine", 102_760_448)
    assert res == {"version": "1.1", "result": "restored", "ok": True}, res


@pytest.mark.parametrize("period", [1, 3, 4096, 5000])
@pytest.mark.parametrize("n", [0, 1, 4095, 4096, 262_145, 3 * 262_144 + 7])
def test_periodic_crc_is_the_crc_of_the_tiled_values(period, n):
    from caffecompress.pipeline import _periodic_crc, crc32_of

    pat = np.random.default_rng(period).standard_normal(period).astype(np.float32)
    full = np.tile(pat, -(-n // period) if n else 0)[:n]
    assert _periodic_crc(pat, n) == crc32_of(full)
    assert _periodic_crc(pat.astype(">f8"), n) == crc32_of(full.astype(">f8"))


def _one_level_record(tmp_path, edit):
    """The example's first grid blob turned into a one-level one, with the CRC32 its decode really has (a genuine record), then ``edit``."""
    from caffecompress.engine.blob import decode_blob
    from caffecompress.indexschema import layout_crc
    from caffecompress.pipeline import crc32_of

    attrs, payload, ix = read_ccz(GOLDEN_GRID)
    b = next(b for b in ix["blobs"] if b["method"] == "grid")
    b["parts"] = {}
    for k in [k for k in b["meta"] if k.startswith("l_")]:
        del b["meta"][k]
    b["meta"].update(nsym=1, qmin=-3)
    edit(b)
    b["crc32"] = crc32_of(decode_blob("grid", b["meta"], {}))
    ix["layout"] = layout_crc(ix)
    p = tmp_path / "one.ccz.h5"
    write_ccz(p, attrs, payload, ix)
    return p, ix["layers"][b["layer"]][0], b


@pytest.mark.parametrize("dq", [False, True])
def test_one_level_grid_blob_restores_and_a_wrong_crc_is_refused(tmp_path, dq):
    """The CRC32 checked before allocation is the decoder's: a genuine one-level
    blob restores (with dependent quantisation its values vary within a segment),
    the same record with another CRC32 is refused."""
    p, layer, b = _one_level_record(tmp_path, lambda b: b["meta"].update(dq_seg=64) if dq else None)
    w = container.read_layer(p, layer)[b["blob"]]
    n = b["meta"]["nlab"]
    assert w.size == n and n % 64 and (np.unique(w).size > 1) == dq
    if dq:  # every segment (restarted state machine) repeats the first
        flat = w.reshape(-1)
        assert all((flat[s : s + 64] == flat[: min(64, n - s)]).all() for s in range(0, n, 64))
    ix = read_ccz(p)[2]
    for r in ix["blobs"]:
        if r["layer"] == b["layer"]:
            r["crc32"] ^= 1
    from caffecompress.indexschema import layout_crc

    ix["layout"] = layout_crc(ix)
    write_ccz(p, *read_ccz(p)[:2], ix)
    with pytest.raises(CorruptDataError, match="CRC32 of the restored blob") as ei:
        container.read_layer(p, layer)
    assert str(p) in str(ei.value) and repr(layer) in str(ei.value)


def test_grid_codebook_refuses_levels_past_float32_cleanly():
    """A huge step (finite in float64) makes levels past float32's range: a typed
    error, no NumPy overflow warning."""
    import warnings

    from caffecompress.engine.blob import grid_codebook

    for step, qmin in ((float.fromhex("0x1.fffffffffffffp+1023"), 1), (2.0**127, 2), (2.0**127, -3)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(CorruptDataError, match="past float32's range"):
                grid_codebook({"step": step.hex(), "qmin": qmin, "nsym": 1})
    # the largest level that rounds to a finite float32 is kept
    assert grid_codebook({"step": (2.0**127).hex(), "qmin": 1, "nsym": 1})[0] == 2.0**127


def test_1x_files_recode_running_magnitude_contexts(tmp_path):
    """``save(..., format_major=1)`` of blobs whose labels use 2.2's rANS
    contexts writes them with the previous-index rule of 1.2 (what 1.x
    readers decode), and the file restores the same weights."""
    from caffecompress.engine import rans

    if not rans.have_compiled():
        pytest.skip("grid blobs keep Huffman without numba")
    rng = np.random.default_rng(23)
    w = (rng.laplace(0, 0.02, (300, 400)) * np.exp(rng.uniform(-2, 1.5, (300, 1)))).astype(np.float32)
    model = cc.Model(name="rows", layers=[cc.Layer("fc", "InnerProduct", [w, np.zeros(300, np.float32)])])
    cm = cc.compress(model, preset="default", data_free=True, step=2.0 ** -9)
    assert any(r.meta.get("ctx") == 1 for r in cm.records)
    p1 = cc.save(cm, tmp_path / "v1.ccz.h5", format_major=1)
    p2 = cc.save(cm, tmp_path / "v2.ccz.h5")
    with h5py.File(p1, "r") as f1, h5py.File(p2, "r") as f2:
        assert f1.attrs["format_version"] == b"1.2" and f2.attrs["format_version"] == b"2.2"
    recs = [r for r in cc.open_compressed(p1).records if r.meta.get("coder") == "rans"]
    assert recs and not any("ctx" in r.meta for r in recs)
    want = cc.decompress(cm).layers[0].blobs[0]
    for q in (p1, p2):
        assert cc.decompress(q).layers[0].blobs[0].tobytes() == want.tobytes()
