"""The visual report: `caffecompress report`, `compress --report`, caffecompress.plots."""

from __future__ import annotations

import base64
import builtins
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import caffecompress as cc
from caffecompress import plots
from caffecompress.cli import main

pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "caffecompress" / "data" / "example.caffemodel"
EXAMPLE_PROTO = ROOT / "caffecompress" / "data" / "example.prototxt"
GOLDEN = ROOT / "tests" / "golden" / "example.deep-compression.ccz.h5"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def embedded_pngs(page: str) -> dict:
    """alt text -> (width, height) of every PNG data URI, each checked to be a PNG."""
    found = {}
    for alt, b64 in re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page):
        png = base64.b64decode(b64)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR", alt
        found[alt] = struct.unpack(">II", png[16:24])
    return found


def compressed_layers(path) -> list[str]:
    cm = cc.open_compressed(path)
    return sorted({cm.layers[r.layer][0] for r in cm.records if r.method not in ("lossless", "ref")})


def test_page_of_a_data_free_file(capsys, tmp_path):
    out = tmp_path / "r.html"
    code, text, err = run(capsys, "report", GOLDEN, "-o", out)
    assert code == 0, err
    page = out.read_text()
    imgs = embedded_pngs(page)
    assert len(imgs) >= 3 and all(w > 100 and h > 100 for w, h in imgs.values())
    assert {"bytes and bits per layer", "size breakdown"} <= set(imgs)
    assert any(a.startswith("histogram of ") for a in imgs)
    assert "allocation: size against error" not in imgs and plots.NO_ALLOCATION in page
    names = compressed_layers(GOLDEN)
    assert names and all(f"<td>{n}</td>" in page for n in names)
    assert "src=\"http" not in page and "<script" not in page  # self-contained, nothing fetched
    # an existing report is kept unless --force
    code, _, err = run(capsys, "report", GOLDEN, "-o", out)
    assert code == 1 and "exists" in err
    assert run(capsys, "report", GOLDEN, "-o", out, "--force")[0] == 0


def test_size_breakdown_adds_up_to_the_file(tmp_path):
    data = plots.report_data(GOLDEN)
    assert sum(data["sizes"].values()) == GOLDEN.stat().st_size
    assert data["sizes"]["labels"] > 0 and data["sizes"]["codebooks"] > 0
    assert data["sizes"]["sparse positions"] > 0  # the deep-compression preset prunes
    assert all(v >= 0 for v in data["container_detail"].values())


def test_allocation_points_are_plotted(tmp_path):
    cm = cc.compress(cc.read_caffemodel(str(EXAMPLE), prototxt=str(EXAMPLE_PROTO)),
                     preset="deep-compression")
    pts = [{"bytes": 9000.0 + 1000 * i, "predicted": 0.04 / (i + 1), "measured": 0.05 / (i + 1)}
           for i in range(4)]
    cm.settings["allocation"] = {"points": pts, "chosen": 2}
    f = cc.save(cm, tmp_path / "fid.ccz.h5")
    data = plots.report_data(f)
    assert data["allocation"]["chosen"] == pts[2] and len(data["allocation"]["points"]) == 4
    page = plots.report_html(data)
    assert "allocation: size against error" in embedded_pngs(page)
    assert plots.NO_ALLOCATION not in page
    # the chosen point may also be given as the point itself
    cm.settings["allocation"] = {"points": pts, "chosen": pts[0]}
    assert plots.report_data(cc.save(cm, tmp_path / "f2.ccz.h5"))["allocation"]["chosen"] == pts[0]


def test_summary_png_and_original_weights(capsys, tmp_path):
    out = tmp_path / "s.png"
    code, _, err = run(capsys, "report", GOLDEN, "-o", out, "--original", EXAMPLE, "--top", "1")
    assert code == 0, err
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24])[0] >= 1000
    data = plots.report_data(GOLDEN, original=EXAMPLE, top=2)
    assert [h["source"] for h in data["histograms"]] == ["original", "original"]
    assert plots.report_data(GOLDEN, top=2)["histograms"][0]["source"] == "restored"
    code, _, err = run(capsys, "report", GOLDEN, "-o", tmp_path / "r.pdf")
    assert code == 2 and ".html" in err and not (tmp_path / "r.pdf").exists()


def test_compress_writes_the_report_in_the_same_run(capsys, tmp_path):
    m = tmp_path / "example.caffemodel"
    shutil.copy(EXAMPLE, m)
    rep = tmp_path / "example.html"
    code, out, err = run(capsys, m, "--prototxt", EXAMPLE_PROTO, "--preset", "deep-compression",
                         "--report", rep)
    assert code == 0, err
    page = rep.read_text()
    assert len(embedded_pngs(page)) >= 3 and str(rep) in out
    assert all(f"<td>{n}</td>" in page for n in compressed_layers(tmp_path / "example.ccz.h5"))
    # a bad report name fails before anything is compressed
    code, _, err = run(capsys, m, "-o", tmp_path / "b.ccz.h5", "--report", tmp_path / "r.txt")
    assert code == 2 and not (tmp_path / "b.ccz.h5").exists()


def test_missing_matplotlib_is_one_line_naming_the_extra(capsys, tmp_path, monkeypatch):
    real = builtins.__import__

    def no_mpl(name, *a, **kw):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    code, _, err = run(capsys, "report", GOLDEN, "-o", tmp_path / "r.html")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 1 and len(lines) == 1 and "caffecompress[report]" in lines[0]
    assert not (tmp_path / "r.html").exists()
    m = tmp_path / "example.caffemodel"
    shutil.copy(EXAMPLE, m)
    code, _, err = run(capsys, m, "--report", tmp_path / "r.html")
    assert code == 1 and "caffecompress[report]" in err and not (tmp_path / "example.ccz.h5").exists()


def test_no_pyplot_and_lazy_imports(tmp_path):
    code = (
        "import sys, caffecompress; "
        "assert not [m for m in ('matplotlib', 'dask', 'distributed') if m in sys.modules]; "
        "from caffecompress import plots; "
        f"plots.write_report({str(GOLDEN)!r}, {str(tmp_path / 'r.html')!r}); "
        "print('pyplot' if 'matplotlib.pyplot' in sys.modules else 'ok')"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_ultraface_report_names_every_compressed_layer(zoo, tmp_path):
    src = zoo / "ultraface" / "RFB-320.caffemodel"
    if not src.exists():
        pytest.skip("ultraface/RFB-320 not in the zoo")
    # deep-compression: data-free, so this stays quick (the fidelity-targeted page is in the README)
    f = cc.save(cc.compress(cc.read_caffemodel(str(src), prototxt=str(src.with_suffix(".prototxt"))),
                            preset="deep-compression"), tmp_path / "rfb.ccz.h5")
    out = plots.write_report(f, tmp_path / "rfb.html", original=src)
    page = out.read_text()
    names = compressed_layers(f)
    assert len(names) > 40 and all(f"<td>{n}</td>" in page for n in names)
    assert len(embedded_pngs(page)) >= 3
