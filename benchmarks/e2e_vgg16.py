"""End-to-end compress / restore of the VGG-16-sized synthetic model (CLI path).

Builds the trained-like VGG-16 (138M parameters, tools/synthetic.py) once,
then in fresh processes times ``caffecompress MODEL -o OUT`` (default
preset) and ``caffecompress decompress OUT -o BACK.caffemodel``, reporting
the median wall time of N runs and the peak RSS of each run.

    .venv/bin/python benchmarks/e2e_vgg16.py [--model /tmp/vgg16.caffemodel] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fmt_mb, median, run_child  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path(tempfile.gettempdir()) / "vgg16-synthetic.caffemodel")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--preset", default="default")
    a = ap.parse_args(argv)
    if not a.model.exists():
        sys.path.insert(0, str(ROOT / "tools"))
        import synthetic  # noqa: PLC0415

        synthetic.make_vgg16(a.model)
    size = a.model.stat().st_size
    out = a.model.with_suffix(".ccz.h5")
    back = a.model.with_suffix(".restored.caffemodel")
    comp, rest = [], []
    for _ in range(a.repeat):
        comp.append(run_child(
            f"rc = main([{str(a.model)!r}, '-o', {str(out)!r}, '--force', '-q', '--preset', {a.preset!r}])\n"
            "assert rc == 0",
            setup="from caffecompress.cli import main"))
        rest.append(run_child(
            f"rc = main(['decompress', {str(out)!r}, '-o', {str(back)!r}, '--force', '-q'])\nassert rc == 0",
            setup="from caffecompress.cli import main"))
    out_size = out.stat().st_size
    print(f"model {a.model} ({fmt_mb(size)}), preset {a.preset}, {a.repeat} runs, cpus {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    cpk = [r["peak_rss_bytes"] for r in comp]
    rpk = [r["peak_rss_bytes"] for r in rest]
    print(f"compress: median {median(r['wall_s'] for r in comp):.1f} s, peak RSS median "
          f"{fmt_mb(median(cpk))} ({median(cpk) / size:.2f}x the file), max {fmt_mb(max(cpk))} "
          f"({max(cpk) / size:.2f}x), ratio {size / out_size:.2f}x, CPU {median(r['cpu_s'] for r in comp):.1f} s")
    print(f"restore:  median {median(r['wall_s'] for r in rest):.1f} s, peak RSS median "
          f"{fmt_mb(median(rpk))}, max {fmt_mb(max(rpk))}")
    for p in (out, back):
        p.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
