"""Shared helpers for the benchmark scripts: the zoo's model pairs, timing,
medians and peak memory measured in a fresh subprocess.

Peak memory is the child's ``ru_maxrss`` (``resource.getrusage``) taken in a
process that does only the measured job, so each figure starts from the same
interpreter baseline, which is reported beside it.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ZOO = Path(os.environ.get("CAFFE_ZOO", ROOT.parent / "shared" / "caffe-zoo"))
PYTHON = sys.executable

# The retrained MTCNN det2/det3 prototxts are swapped upstream (MANIFEST notes).
_PROTO_OVERRIDE = {
    "mtcnn-retrained/det2.caffemodel": "mtcnn-retrained/det3.prototxt",
    "mtcnn-retrained/det3.caffemodel": "mtcnn-retrained/det2.prototxt",
}


def zoo_pairs(zoo: Path = ZOO) -> list[tuple[str, Path, Path]]:
    """``(name, caffemodel, deploy prototxt)`` for every trained zoo model.

    Pairs come from MANIFEST.tsv: each weights file with the one prototxt in
    its folder (or the one named like it), the swapped retrained-MTCNN pair
    corrected.
    """
    rows = list(csv.DictReader(open(zoo / "MANIFEST.tsv"), delimiter="\t"))
    out = []
    for r in rows:
        p = r["path"]
        if r["format"].startswith(("V1", "V2", "V0")) and not p.endswith(".prototxt") and not p.startswith("prototxt/"):
            folder, base = p.rsplit("/", 1)
            stem = base.split(".")[0]
            if p in _PROTO_OVERRIDE:
                proto = _PROTO_OVERRIDE[p]
            else:
                cands = [q["path"] for q in rows if q["path"].startswith(folder + "/") and q["path"].endswith(".prototxt")]
                named = [c for c in cands if c.rsplit("/", 1)[1].split(".")[0] == stem]
                proto = named[0] if named else cands[0]
            out.append((p.rsplit(".", 1)[0] if p.endswith(".caffemodel") else p, zoo / p, zoo / proto))
    return out


def median(xs):
    """Median of a non-empty sequence."""
    return statistics.median(list(xs))


def timed(fn, *args, repeat: int = 3, **kw):
    """Run ``fn`` ``repeat`` times; return (median seconds, last result)."""
    ts, res = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = fn(*args, **kw)
        ts.append(time.perf_counter() - t0)
    return median(ts), res


def run_child(code: str, *, setup: str = "", post: str = "", timeout: float = 900) -> dict:
    """Run ``setup`` then time ``code`` in a fresh Python process.

    Returns a dict with ``wall_s``, ``cpu_s`` (of ``code`` only), and the
    process's ``peak_rss_bytes`` (whole life, setup included) and the RSS
    right after interpreter start-up (``base_rss_bytes``). ``code`` may set a
    JSON-able ``RESULT``. Imports made in ``setup`` count toward the peak but
    not toward the time; ``post`` runs after the clock stops (e.g. a checksum
    that touches every value) and before the peak is read.
    """
    script = (
        "import json, resource, sys, time\n"
        + setup
        + "\nbase = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        + "t0 = time.perf_counter(); c0 = time.process_time()\n"
        + "RESULT = None\n"
        + code
        + "\nwall = time.perf_counter() - t0; cpu = time.process_time() - c0\n"
        + post
        + "\n"
        + "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        + "print('@@' + json.dumps({'wall_s': wall, 'cpu_s': cpu, 'peak_rss_bytes': peak * 1024,"
        + " 'setup_rss_bytes': base * 1024, 'result': RESULT}))\n"
    )
    proc = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@")][-1]
    return json.loads(line[2:])


def fmt_mb(n: float) -> str:
    """Bytes as MB with one decimal."""
    return f"{n / 1e6:.1f} MB"
