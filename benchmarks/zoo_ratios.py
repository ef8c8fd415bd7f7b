"""Ratio, container overhead and output error per zoo model and preset.

For every trained zoo model: compress with each preset, write the HDF5 file,
restore it to a .caffemodel in memory and run original and restored through
OpenCV 4.x on scikit-image's sample images (caffecompress.verify: every net
output and every Softmax input, relative L2 error). Prints a table and the
geometric-mean file ratios (all models; and models >= 100 KB).

    .venv/bin/python benchmarks/zoo_ratios.py [--presets lossless,default,bits4,deep-compression]
                                              [--json out.json] [--markdown table.md] [--only NAME]

Baselines per model: OpenCV's fp16 ``shrinkCaffeModel`` (ratio and error)
and zstd level 19 of the whole file.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import zoo_pairs  # noqa: E402

import caffecompress as cc  # noqa: E402
from caffecompress import container, verify  # noqa: E402
from caffecompress.caffe import caffemodel_bytes  # noqa: E402

PRESETS = {
    "lossless": {"preset": "lossless"},
    "default": {"preset": "default"},
    "maxerr01": {"preset": "default", "max_error": 0.01},
    "data-free": {"preset": "default", "data_free": True},
    "bits4": {"preset": "default", "bits": 4},
    "bits4-df": {"preset": "default", "bits": 4, "data_free": True},
    "bits8": {"preset": "default", "bits": 8},
    "deep-compression": {"preset": "deep-compression"},
}


HELD = verify.sample_images(verify.HELDOUT_IMAGES)


def gmean(xs):
    xs = list(xs)
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def run(presets, only=None, fidelity=True):
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, model_path, proto in zoo_pairs():
            if only and only not in name:
                continue
            try:
                model = cc.read_caffemodel(model_path, prototxt=proto)
            except ImportError:  # prototxt pairing not available: the weights alone
                model = cc.read_caffemodel(model_path)
            except Exception as exc:  # noqa: BLE001
                print(f"{name:<46} SKIPPED: {exc}", flush=True)
                continue
            src = model_path.read_bytes()
            base = baselines(model_path, src, proto, tmp, fidelity)
            rows.append({"model": name, "preset": "baselines", "input_bytes": len(src), **base})
            print(f"{name:<46} fp16 shrinkCaffeModel {base['fp16_ratio']:.2f}x err "
                  f"{base.get('fp16_err', float('nan')):.4f}; zstd-19 {base['zstd19_ratio']:.3f}x", flush=True)
            for pname in presets:
                kw = dict(PRESETS[pname])
                t0 = time.perf_counter()
                cm = cc.compress(model, **kw)
                t1 = time.perf_counter()
                out = Path(tmp) / f"{name.replace('/', '_')}.{pname}.h5"
                cc.save(cm, out, force=True)
                restored = cc.decompress(out)
                t2 = time.perf_counter()
                data = caffemodel_bytes(restored)
                fi = container.file_info(out)
                row = {
                    "model": name, "preset": pname, "input_bytes": len(src),
                    "file_bytes": fi["file_bytes"], "ratio": len(src) / fi["file_bytes"],
                    "overhead": fi["overhead"], "compress_s": t1 - t0, "restore_s": t2 - t1,
                    "bit_exact": data == src,
                    "bits": sorted({r.bits for r in cm.records if r.bits}),
                    "calib_error": (cm.settings.get("fidelity") or {}).get("calib_error"),
                }
                if fidelity:
                    # held-out images only: never the calibration set
                    reps = verify.compare((proto.read_text(), src), (proto.read_text(), data), HELD)
                    row["max_rel_l2"] = verify.max_rel_error(reps)
                    row["min_top1"] = min((r.top1 for r in reps if r.top1 is not None), default=None)
                rows.append(row)
                print(f"{name:<46} {pname:<17} {row['ratio']:7.2f}x  ovh {row['overhead']:5.1%}  "
                      f"err {row.get('max_rel_l2', float('nan')):.4f}  exact {row['bit_exact']!s:<5} "
                      f"bits {row['bits']}  {row['compress_s']:.2f}s", flush=True)
    return rows


def baselines(model_path, src, proto, tmp, fidelity):
    """OpenCV's fp16 ``shrinkCaffeModel`` and zstd level 19 of the file."""
    import cv2  # noqa: PLC0415
    import zstandard  # noqa: PLC0415

    out = {"zstd19_ratio": len(src) / len(zstandard.ZstdCompressor(level=19).compress(src))}
    fp16 = Path(tmp) / "fp16.caffemodel"
    cv2.dnn.shrinkCaffeModel(str(model_path), str(fp16))
    data = fp16.read_bytes()
    out["fp16_ratio"] = len(src) / len(data)
    if fidelity:
        pt = proto.read_text()
        out["fp16_err"] = verify.max_rel_error(verify.compare((pt, src), (pt, data), HELD))
    return out


def markdown(rows, presets):
    """One row per model: ratio (and max rel. L2 error) per preset, beside the baselines."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    head = "| model | KB | " + " | ".join(presets) + " | fp16 shrink | zstd-19 |"
    lines = [head, "|" + "---|" * (len(presets) + 4)]
    for m in models:
        rs = {r["preset"]: r for r in rows if r["model"] == m}
        b = rs.get("baselines", {})
        cells = []
        for p in presets:
            r = rs.get(p)
            cells.append("-" if r is None else f"{r['ratio']:.2f}x ({r.get('max_rel_l2', float('nan')):.3f})")
        lines.append(f"| {m} | {b.get('input_bytes', 0) / 1000:.0f} | " + " | ".join(cells)
                     + f" | {b.get('fp16_ratio', float('nan')):.2f}x ({b.get('fp16_err', float('nan')):.3f})"
                     + f" | {b.get('zstd19_ratio', float('nan')):.3f}x |")
    return "\n".join(lines)


def summary(rows, presets):
    print()
    print(f"{'preset':<17} {'gmean all':>10} {'gmean >=100KB':>14} {'max err >=100KB':>16} {'max overhead >=100KB':>21}")
    for p in presets:
        rs = [r for r in rows if r["preset"] == p]
        big = [r for r in rs if r["input_bytes"] >= 100_000]
        err = max((r.get("max_rel_l2", float("nan")) for r in big), default=float("nan"))
        print(f"{p:<17} {gmean(r['ratio'] for r in rs):>10.3f} {gmean(r['ratio'] for r in big):>14.3f} "
              f"{err:>16.4f} {max((r['overhead'] for r in big), default=0):>21.2%}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="lossless,default,bits4,deep-compression")
    ap.add_argument("--only")
    ap.add_argument("--no-fidelity", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--markdown", help="write a results table (markdown) here")
    a = ap.parse_args(argv)
    presets = a.presets.split(",")
    rows = run(presets, a.only, not a.no_fidelity)
    summary(rows, presets)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    if a.markdown:
        Path(a.markdown).write_text(markdown(rows, presets) + "\n")


if __name__ == "__main__":
    main()
