"""The hindsight pairing of ``benchmarks/frontier_sweep.py`` (pure functions, synthetic points)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fs(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import frontier_sweep

    return frontier_sweep


def _pts(model, rows, key):
    return [{"model": model, key: k, "ratio": r, "max_rel_l2": e} for k, r, e in rows]


def test_best_takes_the_largest_ratio_within_the_error_and_robust_stops_at_a_miss(fs):
    # finer (smaller j) first: j=1 misses 0.01, so robust keeps only j <= 0
    ours = _pts("m", [(-1, 4.0, 0.004), (0, 5.0, 0.008), (1, 6.0, 0.012), (2, 7.0, 0.009)], "j")
    assert fs.ours_best(ours, 0.01)["ratio"] == 7.0
    assert fs.ours_best(ours, 0.01, robust=True)["ratio"] == 5.0
    assert fs.ours_best(ours, 0.003) is None


def test_report_pairs_each_level_and_each_point(fs, capsys):
    ours = _pts("m", [(-1, 4.0, 0.004), (0, 5.0, 0.008), (1, 6.0, 0.015), (2, 7.0, 0.025)], "j")
    peer = _pts("m", [(-45, 4.0, 0.003), (-44, 4.4, 0.009), (-43, 5.0, 0.019), (-42, 6.0, 0.029)], "qp")
    fs.report(ours, peer)
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("m ") and "j=0" not in line)
    # E=0.005: 4.0/4.0; E=0.01: 5.0/4.4; E=0.02: 6.0/5.0; E=0.03: 7.0/6.0
    assert [float(v) for v in row.split()[1::2]] == pytest.approx([1.0, 5.0 / 4.4, 1.2, 7.0 / 6.0], abs=1e-3)
    # the shipped point j=0 (0.008) pairs with NNCodec's best at <= 0.008: QP -45, 4.0x
    shipped = next(line for line in out.splitlines() if line.startswith("m ") and "j=0" in line)
    assert "j=0 1.250" in shipped
    assert "(4 points)" in shipped


def test_the_sweep_scales_the_rule_and_restores_it(fs, zoo):
    """A coarser j makes a smaller file; the module constants are back afterwards."""
    pytest.importorskip("cv2")
    from caffecompress import config

    base, floor = config.DEFAULT_STEP, config.DEFAULT_GRID_MIN_SQNR_DB
    pts = fs.sweep([0, 4], only="hyperlpr/Segmentation")
    assert [p["j"] for p in pts] == [0, 4]
    assert pts[1]["ratio"] > 1.05 * pts[0]["ratio"]
    assert 0.0 < pts[0]["max_rel_l2"] < 0.05
    assert (config.DEFAULT_STEP, config.DEFAULT_GRID_MIN_SQNR_DB) == (base, floor)
