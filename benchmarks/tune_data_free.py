"""Tune the grid method's data-free rule on the calibration images.

For every zoo model of 100 KB and more, compress ``--data-free`` with each
(absolute step, small-blob rule) pair, save, restore, and measure the largest
relative L2 output error through OpenCV on the *bundled calibration images*
(:data:`caffecompress.runtime.SAMPLE_IMAGES`), never the held-out ones the
results table reports. Prints, per pair, the geometric-mean ratio, the worst
error and the geometric-mean error, beside the old k-means SQNR rule.

Usage::

    .venv/bin/python benchmarks/tune_data_free.py [--json OUT] [--only NAME]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import zoo_pairs  # noqa: E402

import caffecompress as cc  # noqa: E402
from caffecompress import config, verify  # noqa: E402
from caffecompress.caffe import caffemodel_bytes  # noqa: E402
from caffecompress.runtime import SAMPLE_IMAGES, sample_images  # noqa: E402

STEPS = [2.0 ** -9.5, 2.0 ** -10, 2.0 ** -10.5, 2.0 ** -11]
# (size below, step divisor) for small blobs, or none (the floor of 24 dB
# SQNR stays: no zoo blob reaches it at these steps)
SIZE_RULES = {"plain": (), "size": ((4096, 4.0), (32768, 2.0))}


def gmean(xs):
    xs = [x for x in xs if x > 0]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else float("nan")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json")
    ap.add_argument("--only")
    ap.add_argument("--steps", type=float, nargs="+", metavar="LOG2",
                    help="log2 of the absolute steps to try (default: -9.5 -10 -10.5 -11)")
    ap.add_argument("--rules", nargs="+", choices=sorted(SIZE_RULES), default=sorted(SIZE_RULES))
    ap.add_argument("--dq", type=float, nargs="+", metavar="SCALE", default=[],
                    help="also try dependent quantisation at these multiples of each step")
    ap.add_argument("--no-kmeans", action="store_true", help="skip the k-means SQNR rule")
    a = ap.parse_args(argv)
    imgs = sample_images(SAMPLE_IMAGES)
    steps = [2.0 ** v for v in a.steps] if a.steps else STEPS
    configs = [] if a.no_kmeans else [("kmeans-sqnr36", None, None, None)]
    for st in steps:
        for r in a.rules:
            configs.append((f"step2^{math.log2(st):g}/{r}", st, r, None))
            configs += [(f"step2^{math.log2(st):g}/{r}/dq{d:g}", st, r, d) for d in a.dq]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, mp, pp in zoo_pairs():
            if mp.stat().st_size < 100_000 or (a.only and a.only not in name):
                continue
            model = cc.read_caffemodel(mp, prototxt=pp)
            src, ptxt = mp.read_bytes(), pp.read_text()
            for cname, step, rule, dq in configs:
                if step is None:
                    cm = cc.compress(model, data_free=True, sqnr_target=36.0)
                else:
                    config.DEFAULT_STEP, config.GRID_SIZE_FINER = step, SIZE_RULES[rule]
                    config.DEFAULT_DQ = dq is not None
                    config.DQ_STEP_SCALE = dq if dq is not None else config.DQ_STEP_SCALE
                    cm = cc.compress(model, data_free=True)
                out = Path(tmp) / "m.h5"
                cc.save(cm, out, force=True)
                data = caffemodel_bytes(cc.decompress(out))
                err = verify.max_rel_error(verify.compare((ptxt, src), (ptxt, data), imgs))
                rows.append({"model": name, "config": cname, "ratio": len(src) / out.stat().st_size, "err": err})
                print(f"{name:42s} {cname:22s} {rows[-1]['ratio']:6.2f}x  err {err:.4f}", flush=True)
    print()
    for cname, *_ in configs:
        rs = [r for r in rows if r["config"] == cname]
        print(f"{cname:22s} gmean {gmean([r['ratio'] for r in rs]):.3f}x  worst {max(r['err'] for r in rs):.4f}"
              f"  gmean err {gmean([r['err'] for r in rs]):.4f}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
