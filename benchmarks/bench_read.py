"""Issue 2 benchmark: read a >= 500 MB caffemodel three ways, side by side.

The model is VGG-16 (the zoo's real deploy prototxt, 138,357,544 parameters,
553 MB) with trained-like weights built by ``tools/synthetic.py`` under
/tmp (never committed). Each reader runs in a fresh subprocess per repeat,
so peak memory (``ru_maxrss`` of that process) is the reader's own plus the
interpreter and imports, measured the same way for all three:

- ``caffecompress``: ``caffecompress.read_caffemodel(path)`` (arrays ready);
- ``protobuf``: ``NetParameter.ParseFromString(file bytes)`` with our schema,
  then ``np.array(blob.data, dtype=float32)`` per blob (what a pycaffe-free
  script does);
- ``opencv``: ``cv2.dnn.readNetFromCaffe(prototxt, caffemodel)``.

Targets: caffecompress throughput >= protobuf's; peak <= 1.5x the file size.

Usage::

    .venv/bin/python benchmarks/bench_read.py [--model /tmp/vgg16.caffemodel] [--repeat 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PYTHON, ROOT, ZOO, median, run_child  # noqa: E402

VGG_PROTO = ZOO / "prototxt" / "vgg16_deploy.prototxt"

JOBS = {
    "caffecompress": (
        "import numpy as np, caffecompress, caffecompress.caffe, caffecompress.caffe.reader",
        "m = caffecompress.read_caffemodel(PATH)",
        "arrs = [b for _, _, b in m.blobs()]",
    ),
    "protobuf": (
        "import numpy as np\nfrom caffecompress.caffe.proto import pb",
        "net = pb.NetParameter()\n"
        "with open(PATH, 'rb') as f:\n    net.ParseFromString(f.read())\n"
        "arrs = [np.array(b.data, dtype=np.float32).reshape(tuple(b.shape.dim)) for l in net.layer for b in l.blobs]",
        "",
    ),
    "opencv": (
        "import numpy as np, cv2",
        "net = cv2.dnn.readNetFromCaffe(PROTO, PATH)",
        "arrs = [np.asarray(b) for n in net.getLayerNames() for b in net.getLayer(n).blobs]",
    ),
}


def ensure_model(path: Path) -> Path:
    """Build the VGG-16-sized model if it is not there yet."""
    if not path.exists():
        subprocess.run([PYTHON, str(ROOT / "tools" / "synthetic.py"), "vgg16", str(path)], check=True)
    return path


def bench(path: Path, repeat: int = 3, which=None) -> dict:
    """Run every reader ``repeat`` times in fresh processes; return medians."""
    size = path.stat().st_size
    out = {"file": str(path), "file_bytes": size, "repeat": repeat, "readers": {}}
    # after the clock: touch every value (a float64 sum), so lazily mapped data
    # would count toward the peak, and the three readers can be cross-checked
    check = ("RESULT = {'params': int(sum(a.size for a in arrs)), "
             "'sum': float(sum(float(a.ravel().sum(dtype=np.float64)) for a in arrs))}")
    names = [n for n in JOBS if not which or n in which]
    runs: dict[str, list] = {n: [] for n in names}
    for _ in range(repeat):  # round-robin, so machine noise hits every reader alike
        for name in names:
            setup, code, post = JOBS[name]
            setup = f"PATH = {str(path)!r}; PROTO = {str(VGG_PROTO)!r}\n" + setup
            runs[name].append(run_child(code, setup=setup, post=post + "\n" + check))
    for name in names:
        rs = runs[name]
        t = median(r["wall_s"] for r in rs)
        peak = median(r["peak_rss_bytes"] for r in rs)
        out["readers"][name] = {
            "wall_s": t,
            "all_wall_s": [r["wall_s"] for r in rs],
            "cpu_s": median(r["cpu_s"] for r in rs),
            "MB_per_s": size / t / 1e6,
            "peak_rss_bytes": peak,
            "rss_after_imports_bytes": median(r["setup_rss_bytes"] for r in rs),
            "peak_over_file": peak / size,
            "result": rs[-1]["result"],
        }
    return out


def report(res: dict) -> str:
    size = res["file_bytes"]
    lines = [
        f"file: {res['file']} ({size / 1e6:.1f} MB, warm page cache), median of {res['repeat']} fresh processes per reader, round-robin",
        "",
        "| reader | time (s) | throughput (MB/s) | peak RSS (MB) | peak / file | RSS after imports (MB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in res["readers"].items():
        lines.append(
            f"| {name} | {r['wall_s']:.2f} | {r['MB_per_s']:.0f} | {r['peak_rss_bytes'] / 1e6:.0f} | "
            f"{r['peak_over_file']:.2f}x | {r['rss_after_imports_bytes'] / 1e6:.0f} |"
        )
    rd = res["readers"]
    if "caffecompress" in rd and "protobuf" in rd:
        lines.append("")
        lines.append(
            f"caffecompress vs protobuf: {rd['protobuf']['wall_s'] / rd['caffecompress']['wall_s']:.2f}x throughput; "
            f"peak {rd['caffecompress']['peak_over_file']:.2f}x file (target <= 1.5x)"
        )
    if len({json.dumps(r["result"]) for r in rd.values()}) > 1:
        lines.append("WARNING: readers disagree (params, float64 sum of all values): "
                     + ", ".join(f"{k}={v['result']}" for k, v in rd.items()))
    else:
        r0 = next(iter(rd.values()))["result"]
        lines.append(f"all readers agree: {r0['params']} values, float64 sum {r0['sum']!r}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="read benchmark (issue 2)")
    ap.add_argument("--model", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "vgg16.caffemodel")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", nargs="*", choices=list(JOBS))
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    res = bench(ensure_model(a.model), a.repeat, a.only)
    print(report(res))
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
