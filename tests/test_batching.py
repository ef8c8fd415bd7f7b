"""caffecompress.batch on this machine: results, order, resume, leftovers, bad specs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import caffecompress as cc
from caffecompress import batching

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "caffecompress" / "data" / "example.caffemodel"
EXAMPLE_PROTO = ROOT / "caffecompress" / "data" / "example.prototxt"


@pytest.fixture
def src(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for name in ("b", "a"):
        shutil.copy(EXAMPLE, d / f"{name}.caffemodel")
    shutil.copy(EXAMPLE_PROTO, d / "a.prototxt")
    (d / "c.caffemodel").write_bytes(b"\x00garbage" * 10)
    return d


def test_the_package_function_is_not_shadowed_by_its_module():
    import caffecompress.batching  # noqa: F401,PLC0415  (importing the module must not rebind the name)

    assert callable(cc.batch) and cc.batch is batching.batch


def test_results_in_order_with_failures_and_resume(src, tmp_path):
    out = tmp_path / "out"
    # a temporary a killed writer of a.ccz.h5 left behind (its pid is gone), and one
    # of a writer still running (this process): only the first is swept
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    from caffecompress.fileio import host_key

    host = host_key()  # temporaries are named .NAME.cc<host>-<pid>-<hex>.tmp
    (out / f".a.ccz.h5.cc{host}-{dead}-a1b2.tmp").write_bytes(b"partial")
    live = out / f".b.ccz.h5.cc{host}-{os.getpid()}-a1b2.tmp"
    live.write_bytes(b"being written")
    seen = []
    res = cc.batch([src], out, preset="lossless", on_result=seen.append)
    assert [Path(r["input"]).name for r in res] == ["a.caffemodel", "b.caffemodel", "c.caffemodel"]
    assert [r["status"] for r in res] == ["ok", "ok", "failed"]
    assert "c.caffemodel" in res[2]["error"] and len(seen) == 3
    assert res[0]["output"] == str(out / "a.ccz.h5") and res[0]["ratio"] > 1
    assert sorted(p.name for p in out.iterdir()) == [live.name, "a.ccz.h5", "b.ccz.h5"]
    live.unlink()
    assert cc.open_compressed(out / "a.ccz.h5").prototxt is not None  # found beside a.caffemodel
    assert cc.caffemodel_bytes(out / "b.ccz.h5") == EXAMPLE.read_bytes()  # lossless: exact
    again = cc.batch([src / "a.caffemodel", src / "b.caffemodel"], out, jobs=2)
    assert [r["status"] for r in again] == ["up-to-date", "up-to-date"]
    forced = cc.batch([src / "a.caffemodel", src / "b.caffemodel"], out, jobs=2, force=True,
                      preset="lossless")
    assert [r["status"] for r in forced] == ["ok", "ok"]
    s = batching.summarize(res)
    assert (s["models"], s["ok"], s["failed"], s["skipped"]) == (3, 2, 1, 0)


def test_bad_specs(tmp_path):
    with pytest.raises(batching.BatchInputError, match="no such file"):
        cc.batch([tmp_path / "missing"], tmp_path / "out")
    with pytest.raises(batching.BatchInputError, match="no .caffemodel"):
        cc.batch([tmp_path], tmp_path / "out")
    (tmp_path / "file").write_text("x")
    with pytest.raises(batching.BatchInputError, match="not a folder"):
        cc.batch([EXAMPLE], tmp_path / "file")
    with pytest.raises(batching.BatchInputError, match="jobs"):
        cc.batch([EXAMPLE], tmp_path / "out", jobs=0)
    assert isinstance(batching.BatchInputError("x"), cc.CaffeCompressError)


def test_missing_dask_names_the_extra(tmp_path, monkeypatch):
    import builtins  # noqa: PLC0415

    real = builtins.__import__

    def no_dask(name, *a, **kw):
        if name == "distributed" or name.startswith(("distributed.", "dask")):
            raise ImportError(name)
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_dask)
    with pytest.raises(cc.MissingDependencyError, match=r"caffecompress\[dask\]"):
        cc.batch([EXAMPLE], tmp_path / "out", scheduler="tcp://127.0.0.1:1")


def test_unreachable_scheduler_is_one_clear_error(tmp_path):
    pytest.importorskip("distributed")
    with pytest.raises(cc.CaffeCompressError, match="cannot reach the Dask scheduler tcp://127.0.0.1:9"):
        cc.batch([EXAMPLE], tmp_path / "out", scheduler="tcp://127.0.0.1:9", timeout=2)
    assert not (tmp_path / "out" / "example.ccz.h5").exists()
