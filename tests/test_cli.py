"""CLI: the fixed contract, exit codes, and hostile inputs (one line, no traceback, no output)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from caffecompress.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "caffecompress" / "data" / "example.caffemodel"
EXAMPLE_PROTO = ROOT / "caffecompress" / "data" / "example.prototxt"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_clean_line(err: str):
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("usage:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("caffecompress: error: ")


@pytest.fixture
def model(tmp_path):
    """The example model and its prototxt, copied into a scratch folder."""
    m = tmp_path / "example.caffemodel"
    shutil.copy(EXAMPLE, m)
    shutil.copy(EXAMPLE_PROTO, tmp_path / "example.prototxt")
    return m


# ---------------------------------------------------------------- happy paths


def test_compress_default_output_and_table(capsys, model):
    code, out, err = run(capsys, model, "--prototxt", model.with_suffix(".prototxt"))
    assert code == 0, err
    dest = model.with_name("example.ccz.h5")
    assert dest.exists()
    for col in ("layer", "shape", "params", "sparsity", "bits", "bytes", "ratio", "SQNR"):
        assert col in out
    assert "total:" in out and str(dest) in out
    # a second run refuses to overwrite, --force allows it
    code, _, err = run(capsys, model)
    assert code == 1 and "exists" in err
    assert_one_clean_line(err)
    code, _, _ = run(capsys, model, "--force", "--quiet")
    assert code == 0


def test_compress_json_report(capsys, model, tmp_path):
    out_path = tmp_path / "x.h5"
    code, out, _ = run(capsys, model, "-o", out_path, "--json", "--bits", "5")
    assert code == 0
    rep = json.loads(out)
    assert rep["output"] == str(out_path)
    assert rep["totals"]["file_bytes"] == out_path.stat().st_size
    assert {r["bits"] for r in rep["layers"] if r["bits"] is not None} == {5}


def test_lossless_roundtrip_through_cli_is_bit_exact(capsys, model, tmp_path):
    h5 = tmp_path / "m.h5"
    assert run(capsys, model, "-o", h5, "--preset", "lossless", "-q")[0] == 0
    back = tmp_path / "back.caffemodel"
    code, out, err = run(capsys, "decompress", h5, "-o", back)
    assert code == 0, err
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(model.read_bytes()).digest()


def test_deep_compression_warns(capsys, model, tmp_path):
    code, out, err = run(capsys, model, "-o", tmp_path / "dc.h5", "--preset", "deep-compression")
    assert code == 0
    assert "warning" in err and "verify" in err
    assert run(capsys, model, "-o", tmp_path / "dc2.h5", "--preset", "deep-compression", "-q")[2] == ""


def test_verify_with_mean_file(capsys, zoo, tmp_path):
    pytest.importorskip("cv2")
    d = zoo / "cifar10-quick"
    h5 = tmp_path / "c.h5"
    # the net's own preprocessing, for calibration; verify defaults to the stored one
    assert run(capsys, d / "cifar10_quick_iter_5000.caffemodel", "--prototxt", d / "cifar10_quick.prototxt",
               "-o", h5, "-q", "--mean", d / "mean.binaryproto", "--scale", "1")[0] == 0
    code, out, err = run(capsys, "verify", d / "cifar10_quick_iter_5000.caffemodel", h5,
                         "--mean", d / "mean.binaryproto", "--scale", "1", "--size", "32x32", "--json")
    assert code == 0, err
    assert json.loads(out)["max_rel_l2"] <= 0.05
    code, _, err = run(capsys, "verify", d / "cifar10_quick_iter_5000.caffemodel", h5, "--size", "big")
    assert code == 2


def test_decompress_formats(capsys, model, tmp_path):
    h5 = tmp_path / "m.h5"
    assert run(capsys, model, "-o", h5, "-q")[0] == 0
    code, _, err = run(capsys, "decompress", h5, "-o", tmp_path / "m.npz")
    assert code == 0, err
    npz = np.load(tmp_path / "m.npz")
    assert len(npz.files) > 0
    code, _, err = run(capsys, "decompress", h5, "-o", tmp_path / "m.caffemodel.h5")
    assert code == 0, err
    with h5py.File(tmp_path / "m.caffemodel.h5") as f:
        assert "data" in f
    code, _, err = run(capsys, "decompress", h5, "-o", tmp_path / "m.bin")
    assert code == 2 and "extension" in err


def test_info_on_both_kinds(capsys, model, tmp_path):
    code, out, err = run(capsys, "info", model)
    assert code == 0, err
    assert "params" in out and "file" in out
    h5 = tmp_path / "m.h5"
    run(capsys, model, "-o", h5, "-q")
    code, out, err = run(capsys, "info", h5, "--json")
    assert code == 0, err
    rep = json.loads(out)
    t = rep["totals"]
    assert t["file_bytes"] == h5.stat().st_size
    assert t["overhead_bytes"] == t["file_bytes"] - t["dataset_bytes"]
    # the default (data-free here: no prototxt) stores grid blobs and its
    # biases rounded and packed, in the 2.x layout
    assert rep["format_version"] == "2.0"
    assert "grid" in {lay["method"] for lay in rep["layers"]}


def test_usage_errors_exit_2(capsys, model):
    assert run(capsys, model, "--bits", "40")[0] == 2
    assert run(capsys, model, "--prune", "1.5")[0] == 2
    assert run(capsys, model, "--preset", "best")[0] == 2
    assert run(capsys)[0] == 2
    assert run(capsys, "batch")[0] == 2
    assert run(capsys, "--help")[0] == 0


def test_gpu_backend_without_gpu_is_one_line(capsys, model, tmp_path):
    from caffecompress.backend import gpu_available

    if gpu_available():
        pytest.skip("a GPU is present")
    code, _, err = run(capsys, model, "-o", tmp_path / "g.h5", "--backend", "gpu")
    assert code == 1
    assert_one_clean_line(err)
    assert not (tmp_path / "g.h5").exists()


def test_config_file_and_layer_override(capsys, model, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('bits = 6\n[layers."conv*"]\nbits = 3\n')
    code, out, err = run(capsys, model, "-o", tmp_path / "c.h5", "--config", cfg, "--json",
                         "--layer", "ip*=lossless")
    assert code == 0, err
    rows = {r["layer"]: r for r in json.loads(out)["layers"]}
    assert all(r["bits"] == 3 for n, r in rows.items() if n.startswith("conv") and r["bits"])
    assert all(r["bits"] is None for n, r in rows.items() if n.startswith("ip"))
    bad = tmp_path / "bad.toml"
    bad.write_text("bits = [\n")
    code, _, err = run(capsys, model, "-o", tmp_path / "d.h5", "--config", bad)
    assert code == 1
    assert_one_clean_line(err)


# ---------------------------------------------------------------- hostile inputs


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def huge_blob_model() -> bytes:
    """A V2 NetParameter whose one blob claims 10**15 elements and holds 4 floats."""
    shape = _field(1, _varint(10**15))  # BlobShape.dim (packed int64)
    blob = _field(7, shape) + _field(5, struct.pack("<4f", 1, 2, 3, 4))  # shape, data
    layer = _field(1, b"ip") + _field(2, b"InnerProduct") + _field(7, blob)
    return _field(1, b"net") + _field(100, layer)


HOSTILE = {
    "empty": lambda src: b"",
    "truncated": lambda src: src[: len(src) // 2],
    "random": lambda src: np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    "text": lambda src: EXAMPLE_PROTO.read_bytes(),
    "huge_blob": lambda src: huge_blob_model(),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_model_inputs(capsys, tmp_path, kind):
    bad = tmp_path / f"{kind}.caffemodel"
    bad.write_bytes(HOSTILE[kind](EXAMPLE.read_bytes()))
    before = bad.read_bytes()
    code, out, err = run(capsys, bad)
    assert code == 1, (out, err)
    assert_one_clean_line(err)
    assert bad.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [bad.name]  # no output, no temp file
    code, _, err = run(capsys, "info", bad)
    assert code == 1
    assert_one_clean_line(err)


def test_missing_input(capsys, tmp_path):
    code, _, err = run(capsys, tmp_path / "nope.caffemodel")
    assert code == 1 and "nope.caffemodel" in err
    assert_one_clean_line(err)


def test_mismatched_prototxt(capsys, tmp_path, zoo):
    # LeNet weights with the CIFAR-10 prototxt: layer names/shapes disagree
    out = tmp_path / "x.h5"
    code, _, err = run(capsys, zoo / "lenet-mnist" / "lenet_iter_10000.caffemodel",
                       "--prototxt", zoo / "cifar10-quick" / "cifar10_quick.prototxt", "-o", out)
    assert code == 1
    assert_one_clean_line(err)
    assert not out.exists()


def test_output_equals_input(capsys, model):
    before = model.read_bytes()
    for extra in ([], ["--force"]):
        code, _, err = run(capsys, model, "-o", model, *extra)
        assert code == 1 and "input" in err
        assert_one_clean_line(err)
        assert model.read_bytes() == before
    h5 = model.with_name("m.caffemodel.h5")  # an odd but valid name for a compressed file
    run(capsys, model, "-o", h5, "-q")
    before = h5.read_bytes()
    code, _, err = run(capsys, "decompress", h5, "-o", h5, "--force")
    assert code == 1 and "input" in err
    assert h5.read_bytes() == before


def test_corrupted_and_truncated_h5(capsys, model, tmp_path):
    h5 = tmp_path / "m.h5"
    run(capsys, model, "-o", h5, "-q")
    good = h5.read_bytes()
    with h5py.File(h5) as f:
        start = f["payload"].id.get_offset()
    flipped = bytearray(good)
    flipped[start + 100] ^= 0xFF
    cases = {"flipped": bytes(flipped), "truncated": good[: len(good) // 2], "empty": b""}
    for name, data in cases.items():
        bad = tmp_path / f"{name}.h5"
        bad.write_bytes(data)
        out = tmp_path / f"{name}.caffemodel"
        code, _, err = run(capsys, "decompress", bad, "-o", out)
        assert code == 1, name
        assert_one_clean_line(err)
        assert not out.exists()
    code, _, err = run(capsys, "decompress", tmp_path / "flipped.h5", "-o", tmp_path / "f.npz")
    assert "CRC32" in err


def test_batch_with_one_bad_file(capsys, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(EXAMPLE, src / "good.caffemodel")
    shutil.copy(EXAMPLE_PROTO, src / "good.prototxt")
    (src / "bad.caffemodel").write_bytes(b"\x00garbage" * 10)
    outdir = tmp_path / "out"
    code, out, err = run(capsys, "batch", src, "-o", outdir)
    assert code == 1
    assert (outdir / "good.ccz.h5").exists()
    assert not (outdir / "bad.ccz.h5").exists()
    assert sorted(p.name for p in outdir.iterdir()) == ["good.ccz.h5"]
    assert "FAILED" in out and "bad.caffemodel" in out and "1 failed" in out
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    # the stored prototxt was found beside the model
    code, info, _ = run(capsys, "info", outdir / "good.ccz.h5")
    assert "prototxt stored" in info
    # a second run skips the up-to-date output
    code, out, _ = run(capsys, "batch", src / "good.caffemodel", "-o", outdir)
    assert code == 0 and "up to date" in out


def test_verify_within_and_beyond_tolerance(capsys, model, tmp_path):
    pytest.importorskip("cv2")
    h5 = tmp_path / "m.h5"
    run(capsys, model, "-o", h5, "-q", "--prototxt", model.with_suffix(".prototxt"))
    code, out, err = run(capsys, "verify", model, h5, "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["ok"] and rep["max_rel_l2"] <= 0.05 and rep["outputs"]
    h5b = tmp_path / "b.h5"
    run(capsys, model, "-o", h5b, "-q", "--bits", "1", "--prune", "0.9",
        "--prototxt", model.with_suffix(".prototxt"))
    code, out, err = run(capsys, "verify", model, h5b, "--tolerance", "0.01")
    assert code == 3
    assert "BEYOND TOLERANCE" in out


def test_subprocess_smoke(tmp_path):
    m = tmp_path / "example.caffemodel"
    shutil.copy(EXAMPLE, m)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    r = subprocess.run([sys.executable, "-m", "caffecompress", str(m), "-q"], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "example.ccz.h5").exists()
    r = subprocess.run([sys.executable, "-m", "caffecompress", str(tmp_path / "missing.caffemodel")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_compressing_a_compressed_file(capsys, model, tmp_path):
    h5 = tmp_path / "m.h5"
    run(capsys, model, "-o", h5, "-q")
    code, _, err = run(capsys, h5, "-o", tmp_path / "again.h5")
    assert code == 1 and "decompress" in err
    assert_one_clean_line(err)
    assert not (tmp_path / "again.h5").exists()


def test_batch_parallel_jobs_and_globs(capsys, tmp_path):
    src = tmp_path / "in"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    shutil.copy(EXAMPLE, src / "a" / "net.caffemodel")
    shutil.copy(EXAMPLE, src / "b" / "net.caffemodel")  # same name in another folder
    (src / "b" / "broken.caffemodel").write_bytes(EXAMPLE.read_bytes()[:1000])
    outdir = tmp_path / "out"
    code, out, err = run(capsys, "batch", str(src / "*" / "*.caffemodel"), "-o", outdir, "--jobs", "2",
                         "--json")
    assert code == 1
    rep = json.loads(out)
    assert rep["summary"]["ok"] == 2 and rep["summary"]["failed"] == 1
    assert sorted(p.name for p in outdir.iterdir()) == ["b-net.ccz.h5", "net.ccz.h5"]
    assert "broken.caffemodel" in err and "Traceback" not in err
