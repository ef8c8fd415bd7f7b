"""Cost of the fidelity-targeted default against ``--data-free``, same model, same run.

For each model, in fresh processes (interleaved, ``--repeat`` times):
``caffecompress.compress(model)`` (default: fidelity-targeted, 0.02) and
``caffecompress.compress(model, data_free=True)``, after reading the model
(not timed; its memory counts in the peak). Prints the median wall time,
the time ratio (target <= 10x), the peak RSS (target on the VGG-16-sized
model: <= 3x the file) and the forwards the allocation ran.

Models: the zoo's largest trained ones, a BatchNorm ResNet-50 and the
VGG-16-sized model, both with trained-like synthetic weights built by
``tools/synthetic.py`` from the zoo's real prototxts (timing and memory
only: synthetic weights say nothing about fidelity).

    .venv/bin/python benchmarks/bench_fidelity_cost.py [--repeat 3] [--only NAME] [--no-big]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ZOO, fmt_mb, median, run_child  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TMP = Path(tempfile.gettempdir())


def _models(big: bool) -> list[tuple[str, Path, Path]]:
    out = [
        ("mtcnn/det4", ZOO / "mtcnn/det4.caffemodel", ZOO / "mtcnn/det4.prototxt"),
        ("yufacedetectnet", ZOO / "yufacedetectnet/yufacedetectnet-open-v1.caffemodel",
         ZOO / "yufacedetectnet/yufacedetectnet-open-v1.prototxt"),
        ("ultraface/RFB-320", ZOO / "ultraface/RFB-320.caffemodel", ZOO / "ultraface/RFB-320.prototxt"),
    ]
    if big:
        sys.path.insert(0, str(ROOT / "tools"))
        import synthetic  # noqa: PLC0415

        from caffecompress.caffe import write_caffemodel  # noqa: PLC0415

        r50p = ZOO / "prototxt/resnet50_deploy.prototxt"
        r50 = TMP / "resnet50-synthetic.caffemodel"
        if not r50.exists():
            write_caffemodel(synthetic.model_from_prototxt(r50p, 0), r50)
        out.append(("resnet50-bn (synthetic)", r50, r50p))
        vgg = TMP / "vgg16-synthetic.caffemodel"
        if not vgg.exists():
            synthetic.make_vgg16(vgg)
        out.append(("vgg16 (synthetic)", vgg, ZOO / synthetic.VGG16_PROTOTXT))
    return out


def _run(w: Path, p: Path, data_free: bool) -> dict:
    return run_child(
        f"cm = cc.compress(m, data_free={data_free!r}, release=True)\n"
        "RESULT = {'forwards': (cm.settings.get('fidelity') or {}).get('forwards'),"
        " 'calib_error': (cm.settings.get('fidelity') or {}).get('calib_error'),"
        " 'payload': cm.payload_nbytes}",
        setup=f"import caffecompress as cc\nm = cc.read_caffemodel({str(w)!r}, prototxt={str(p)!r})",
        timeout=3000)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only")
    ap.add_argument("--no-big", action="store_true", help="skip the synthetic ResNet-50 and VGG-16")
    ap.add_argument("--json", help="also write every run's figures (times, peaks, payload bytes, calibration error) here")
    a = ap.parse_args(argv)
    rows = []
    print(f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, repeat {a.repeat}")
    print(f"{'model':<26} {'file':>9} {'data-free':>10} {'default':>9} {'ratio':>6} "
          f"{'peak df':>9} {'peak def':>9} {'peak/file':>9} {'fwd':>4} {'payload df/def':>15}")
    for name, w, p in _models(not a.no_big):
        if a.only and a.only not in name:
            continue
        df, fd = [], []
        for _ in range(a.repeat):
            df.append(_run(w, p, True))
            fd.append(_run(w, p, False))
        size = w.stat().st_size
        t_df, t_fd = median(r["wall_s"] for r in df), median(r["wall_s"] for r in fd)
        pk_df, pk_fd = median(r["peak_rss_bytes"] for r in df), median(r["peak_rss_bytes"] for r in fd)
        res = fd[-1]["result"]
        print(f"{name:<26} {fmt_mb(size):>9} {t_df:>9.2f}s {t_fd:>8.2f}s {t_fd / t_df:>5.1f}x "
              f"{fmt_mb(pk_df):>9} {fmt_mb(pk_fd):>9} {pk_fd / size:>8.2f}x {res['forwards'] or 0:>4} "
              f"{df[-1]['result']['payload'] / res['payload']:>14.2f}x", flush=True)
        rows.append({"model": name, "file_bytes": size, "data_free": df, "default": fd,
                     "median_s": {"data_free": t_df, "default": t_fd}})
    if a.json:
        Path(a.json).write_text(json.dumps({"load_average": os.getloadavg()[0], "models": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
