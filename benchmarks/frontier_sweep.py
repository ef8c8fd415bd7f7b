"""Our data-free family swept like NNCodec's QPs, both frontiers compared on the held-out images.

The issue-14 pairing takes NNCodec's best ratio over a whole QP sweep at an
error no larger than ours, on the very images it reports: NNCodec gets ~50
chances at each model's held-out images, our preset one. This script gives
our data-free rule the same treatment, so the two *coding cores* are
compared on equal terms: the rule's step (``config.DEFAULT_STEP``, the
small-blob divisors and dependent quantisation as shipped) is scaled by
``2**(j/4)`` (NNCodec's QP spacing) for each ``j`` of ``--js``, and its SQNR
floor (``config.DEFAULT_GRID_MIN_SQNR_DB``) lowered by as many dB; each point is
compressed ``--data-free``, saved, restored and measured through OpenCV on
``verify.HELDOUT_IMAGES``, exactly as ``results_table.py`` measures the
presets. Nothing here chooses a setting: the shipped rule stays ``j = 0``.
``--family default`` sweeps the fidelity-targeted default instead, its
target ``max_error = 0.02 * 2**(j/4)`` (on the calibration rows, as shipped).

Prints, per model and error level E, our best ratio at error <= E over
NNCodec's best at error <= E (both with hindsight; and both "robust", only
points whose finer neighbours all hold E), their geometric means, and the
issue's pairing of each of our sweep points against NNCodec's sweep (the
shipped point's, and the median over points with error <= 0.03).

    .venv/bin/python benchmarks/frontier_sweep.py [--js=-4:17] [--family data-free|default] [--only NAME] [--json OUT]
    .venv/bin/python benchmarks/frontier_sweep.py --from-json OUT     # the comparison again
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import zoo_pairs  # noqa: E402
from peer_nncodec import best, gmean  # noqa: E402

LEVELS = (0.005, 0.01, 0.02, 0.03)


def sweep(js, only=None, min_bytes=100_000, family="data-free"):
    import caffecompress as cc  # noqa: PLC0415
    from caffecompress import config, verify  # noqa: PLC0415
    from caffecompress.caffe import caffemodel_bytes  # noqa: PLC0415

    held = verify.sample_images(verify.HELDOUT_IMAGES)
    base, floor = config.DEFAULT_STEP, config.DEFAULT_GRID_MIN_SQNR_DB
    points = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, path, proto in zoo_pairs():
                src = path.read_bytes()
                if len(src) < min_bytes or (only and only not in name):
                    continue
                text = proto.read_text()
                model = cc.read_caffemodel(path, prototxt=proto)  # one read a model, as results_table's presets
                for j in js:
                    t0 = time.perf_counter()
                    if family == "default":
                        cm = cc.compress(model, preset="default", max_error=config.DEFAULT_MAX_ERROR * 2.0 ** (j / 4))
                    else:
                        # the whole rule scaled: its step, and its SQNR floor by the same factor
                        config.DEFAULT_STEP = base * 2.0 ** (j / 4)
                        config.DEFAULT_GRID_MIN_SQNR_DB = floor - 20 * math.log10(2.0 ** (j / 4))
                        cm = cc.compress(model, preset="default", data_free=True)
                    out = Path(tmp) / "m.ccz.h5"
                    cc.save(cm, out, force=True)
                    secs = time.perf_counter() - t0
                    data = caffemodel_bytes(cc.decompress(out))
                    err = verify.max_rel_error(verify.compare((text, src), (text, data), held))
                    pt = {"model": name, "j": j, "ratio": len(src) / out.stat().st_size, "max_rel_l2": err,
                          "compress_s": secs}
                    points.append(pt)
                    print(f"{name:<42} j {j:3d}  {pt['ratio']:6.2f}x  err {err:.4f}", flush=True)
    finally:
        config.DEFAULT_STEP, config.DEFAULT_GRID_MIN_SQNR_DB = base, floor
    return points


def ours_best(ps, err, robust=False):
    """Our best sweep point at an error <= err (``best``'s rule, finer = smaller j)."""
    return best([{**p, "qp": p["j"]} for p in ps], err, robust)


def report(ours, peer):
    by_o, by_p = {}, {}
    for p in ours:
        by_o.setdefault(p["model"], []).append(p)
    for p in peer:
        by_p.setdefault(p["model"], []).append(p)
    models = [m for m in by_o if m in by_p]
    print("\nfrontier ratio, ours / NNCodec, best at error <= E (robust in brackets):")
    print(f"{'model':<42} " + " ".join(f"{'E=' + format(e, 'g'):>15}" for e in LEVELS))
    cols = {e: ([], []) for e in LEVELS}
    for m in models:
        cells = []
        for e in LEVELS:
            vals = []
            for robust in (False, True):
                a, b = ours_best(by_o[m], e, robust), best(by_p[m], e, robust)
                if a and b:
                    vals.append(a["ratio"] / b["ratio"])
                    cols[e][robust].append(vals[-1])
                else:
                    vals.append(float("nan"))
            cells.append(f"{vals[0]:6.3f} ({vals[1]:5.3f})")
        print(f"{m:<42} " + " ".join(f"{c:>15}" for c in cells))
    print(f"{'geometric mean':<42} " + " ".join(
        f"{gmean(cols[e][0]):6.3f} ({gmean(cols[e][1]):5.3f})" for e in LEVELS))
    print("\nthe issue's pairing (ours / NNCodec's best at error <= ours) of each sweep point:")
    shipped, medians = [], []
    for m in models:
        pr = []
        for p in sorted(by_o[m], key=lambda p: p["j"]):
            b = best(by_p[m], p["max_rel_l2"])
            if b and p["max_rel_l2"] <= 0.03:
                pr.append((p["j"], p["ratio"] / b["ratio"]))
        at0 = dict(pr).get(0)
        med = statistics.median(v for _, v in pr) if pr else float("nan")
        if at0:
            shipped.append(at0)
        medians.append(med)
        print(f"{m:<42} j=0 {at0 or float('nan'):.3f}  median {med:.3f}  range "
              f"{min((v for _, v in pr), default=float('nan')):.3f}-{max((v for _, v in pr), default=float('nan')):.3f}"
              f"  ({len(pr)} points)")
    print(f"{'geometric mean':<42} j=0 {gmean(shipped):.3f}  median {gmean(medians):.3f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--js", default="-4:17", help="START:STOP of j (x 2**(j/4)), STOP excluded")
    ap.add_argument("--family", choices=("data-free", "default"), default="data-free",
                    help="data-free: the rule's step x 2**(j/4); default: the fidelity-targeted default at "
                         "max_error 0.02 x 2**(j/4) (its target on the calibration rows)")
    ap.add_argument("--only")
    ap.add_argument("--json")
    ap.add_argument("--from-json")
    ap.add_argument("--peer", default=str(HERE / "results" / "nncodec_peer.json"))
    a = ap.parse_args(argv)
    if a.from_json:
        ours = json.loads(Path(a.from_json).read_text())["points"]
    else:
        lo, hi = (int(v) for v in a.js.split(":"))
        ours = sweep(list(range(lo, hi)), a.only, family=a.family)
        if a.json:
            Path(a.json).write_text(json.dumps({"js": a.js, "family": a.family, "points": ours}, indent=1) + "\n")
    report(ours, json.loads(Path(a.peer).read_text())["points"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
