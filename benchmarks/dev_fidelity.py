"""Design experiments of the fidelity-targeted default on the development images.

Three image sets are never mixed (benchmarks/README.md, "Fidelity-targeted
compression"): calibration (the bundled set), development (this script:
scikit-image's grass, gravel, cell, page, text, logo, horse,
microaneurysms) and held-out (the README table). Design choices are made
here, so the held-out figures stay a result.

For each zoo model of at least ``--min-kb`` KB: ``compress`` at
``--max-error``, save, restore, and the largest relative L2 error against
the original on the development images (``verify.compare``). Prints ratio,
calibration error, development error / target, and the geometric mean and
worst over the models. ``--set MODULE.NAME=VALUE`` changes a module
constant first (a variant, e.g. ``--set allocate.DQ_CAND_MAX=0``).

    .venv/bin/python benchmarks/dev_fidelity.py [--max-error 0.02] [--only NAME]
        [--set allocate.AIM=0.7 ...] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import zoo_pairs  # noqa: E402

import caffecompress as cc  # noqa: E402
from caffecompress import verify  # noqa: E402
from caffecompress.caffe import caffemodel_bytes  # noqa: E402

#: scikit-image images outside both the calibration and the held-out sets.
DEV_IMAGES = ("grass", "gravel", "cell", "page", "text", "logo", "horse", "microaneurysms")


def _apply_sets(sets) -> None:
    for item in sets:
        name, _, value = item.partition("=")
        mod, _, attr = name.rpartition(".")
        m = importlib.import_module(f"caffecompress.{mod}")
        if not hasattr(m, attr):
            raise SystemExit(f"--set: caffecompress.{mod} has no {attr}")
        setattr(m, attr, ast.literal_eval(value))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-error", type=float, default=0.02)
    ap.add_argument("--min-kb", type=float, default=100.0)
    ap.add_argument("--only")
    ap.add_argument("--set", action="append", default=[], metavar="MODULE.NAME=VALUE")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    _apply_sets(args.set)
    images = verify.sample_images(DEV_IMAGES)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, src, proto in zoo_pairs():
            if (args.only and args.only not in name) or src.stat().st_size < args.min_kb * 1024:
                continue
            m = cc.read_caffemodel(src, prototxt=proto)
            t0 = time.perf_counter()
            cm = cc.compress(m, preset="default", max_error=args.max_error)
            secs = time.perf_counter() - t0
            out = Path(tmp) / "m.ccz.h5"
            cc.save(cm, out, force=True)
            restored = caffemodel_bytes(cc.decompress(out))
            err = verify.max_rel_error(verify.compare((proto.read_text(), src), (proto.read_text(), restored),
                                                      images))
            fid = cm.settings.get("fidelity") or {}
            row = {"model": name, "ratio": src.stat().st_size / out.stat().st_size,
                   "calib": fid.get("calib_error"), "dev": err, "worst": err / args.max_error, "seconds": secs}
            rows.append(row)
            print(f"{name:45s} {row['ratio']:6.2f}x  calib {row['calib'] or float('nan'):.4f}  "
                  f"dev {err:.4f} ({row['worst']:.2f}x target)  {secs:5.1f} s", flush=True)
    if rows:
        g = math.exp(sum(math.log(r["ratio"]) for r in rows) / len(rows))
        w = max(rows, key=lambda r: r["worst"])
        print(f"{len(rows)} models: geometric mean {g:.3f}x, worst {w['worst']:.2f}x the target ({w['model']}); "
              f"settings {args.set or 'as shipped'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"sets": args.set, "max_error": args.max_error, "rows": rows},
                                              indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
