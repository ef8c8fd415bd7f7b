"""Issues 3 and 4 benchmark: the VGG-16-sized model through the engine and the pipeline.

Model: VGG-16 from the zoo's real deploy prototxt with trained-like weights
(``tools/synthetic.py``: 138,357,544 parameters, 553 MB), built under /tmp.
Every measurement runs in a fresh subprocess; peak memory is that process's
``ru_maxrss`` (interpreter + imports + the model it holds + the work).

1. ``engine``: every conv/fc weight blob through
   ``engine.blob.encode_blob(w, bits=5, prune=0.5)`` (prune 50 % + k = 32),
   then decoded back. CPU time, wall time, peak memory against 1.5x the
   weights' own bytes (the weights are already in memory: that is 1.0x).
2. ``scaling``: one trained-like fc blob of 1x, 4x and 16x 2^20 values
   through the same encode: time per value should stay flat.
3. ``fc6``: the largest blob alone (4096 x 25088), allocations traced with
   ``tracemalloc`` (NumPy reports its buffers to it): where the peak comes from.
4. ``pipeline``: ``caffecompress.compress(model, preset="default")`` + save
   to HDF5 (the model read before the clock starts, reported apart), then
   restore: ``caffecompress.decompress(file)`` + ``write_caffemodel``.
   Targets: compress <= 20 s, peak <= 2x the file, restore <= 10 s.

Usage::

    .venv/bin/python benchmarks/bench_pipeline.py [--model /tmp/vgg16.caffemodel]
        [--repeat 3] [--parts engine,scaling,fc6,pipeline] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_read import ensure_model  # noqa: E402
from common import median, run_child  # noqa: E402

_READ = (
    "import numpy as np, caffecompress\n"
    "from caffecompress.engine.blob import encode_blob, decode_blob\n"
    "model = caffecompress.read_caffemodel(PATH)\n"
    "W = [(l.name, l.blobs[0]) for l in model.layers if l.type in ('Convolution', 'InnerProduct') and l.blobs]\n"
)

ENGINE = (
    "import time, resource\n"
    "enc_s = dec_s = enc_cpu = 0.0; E = []; kept = 0\n"
    "for name, w in W:\n"
    "    t = time.perf_counter(); c = time.process_time()\n"
    "    E.append(encode_blob(w, bits=5, prune=0.5))\n"
    "    enc_s += time.perf_counter() - t; enc_cpu += time.process_time() - c\n"
    "enc_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # encode phase only (monotonic)\n"
    "for e in E:\n"
    "    t = time.perf_counter(); y = decode_blob(e.method, e.meta, e.parts); dec_s += time.perf_counter() - t\n"
    "    kept += int(np.count_nonzero(y)); del y\n"
    "RESULT = {'encode_s': enc_s, 'encode_cpu_s': enc_cpu, 'decode_s': dec_s, 'encode_peak_rss_bytes': enc_peak, 'kept': kept,\n"
    "          'coded_bytes': int(sum(e.nbytes for e in E)),\n"
    "          'weight_bytes': int(sum(w.nbytes for _, w in W)), 'model_bytes': model.nbytes}\n"
)

SCALING_SETUP = (
    "import sys, numpy as np\n"
    "sys.path.insert(0, 'tools')\n"
    "import synthetic\n"
    "from caffecompress.engine.blob import encode_blob\n"
    "w = synthetic.trained_like((N // 1024, 1024), 'fc', np.random.default_rng(0))\n"
    "encode_blob(w[:256], bits=5, prune=0.5)  # warm-up (imports, any JIT)\n"
)
SCALING = "e = encode_blob(w, bits=5, prune=0.5)\nRESULT = {'n': int(w.size), 'coded_bytes': e.nbytes}\n"

# The largest blob alone, allocations traced (NumPy reports its buffers to tracemalloc).
FC6_SETUP = SCALING_SETUP.replace("(N // 1024, 1024)", "(4096, 25088)") + "import tracemalloc\n"
FC6 = (
    "import resource, gc\n"
    "gc.collect()\n"
    "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
    "tracemalloc.start()\n"
    "e = encode_blob(w, bits=5, prune=0.5)\n"
    "RESULT = {'n': int(w.size), 'blob_bytes': int(w.nbytes), 'traced_peak_bytes': tracemalloc.get_traced_memory()[1],\n"
    "          'rss_before_bytes': before, 'coded_bytes': e.nbytes}\n"
    "tracemalloc.stop()\n"
)

PIPE_SETUP = (
    "import os, numpy as np, caffecompress\n"
    "import caffecompress.pipeline, caffecompress.container\n"
    "model = caffecompress.read_caffemodel(PATH)\n"
    "if os.path.exists(OUT): os.remove(OUT)\n"
)
PIPE = (
    "cm = caffecompress.compress(model, preset='default')\n"
    "caffecompress.save(cm, OUT)\n"
    "RESULT = {'file_bytes': os.path.getsize(OUT), 'bits': sorted({r.bits for r in cm.records if getattr(r, 'bits', None)})}\n"
)
RESTORE_SETUP = (
    "import os, numpy as np, caffecompress\n"
    "import caffecompress.pipeline, caffecompress.container, caffecompress.caffe\n"
    "if os.path.exists(DEST): os.remove(DEST)\n"
)
RESTORE = (
    "m = caffecompress.decompress(OUT)\n"
    "caffecompress.write_caffemodel(m, DEST)\n"
    "RESULT = {'restored_bytes': os.path.getsize(DEST)}\n"
)


def _summ(runs, key="wall_s"):
    return median(r[key] for r in runs)


def bench_engine(path: Path, repeat: int) -> dict:
    enc = [run_child(ENGINE, setup=f"PATH = {str(path)!r}\n" + _READ) for _ in range(repeat)]
    res = enc[-1]["result"]
    wb = res["weight_bytes"]
    peak = median(r["result"]["encode_peak_rss_bytes"] for r in enc)
    return {
        "encode_s": median(r["result"]["encode_s"] for r in enc),
        "encode_cpu_s": median(r["result"]["encode_cpu_s"] for r in enc),
        "process_cpu_s": _summ(enc, "cpu_s"),
        "decode_s": median(r["result"]["decode_s"] for r in enc),
        "peak_rss_bytes": peak,
        "rss_with_model_bytes": _summ(enc, "setup_rss_bytes"),
        "weight_bytes": wb,
        "peak_over_weights": peak / wb,
        "coded_bytes": res["coded_bytes"],
        "ratio": res["model_bytes"] / res["coded_bytes"],
        "kept_fraction": res["kept"] / (wb / 4),
        "all_encode_s": [r["result"]["encode_s"] for r in enc],
    }


def bench_scaling(repeat: int, base: int = 1 << 20) -> list:
    out = []
    for mult in (1, 4, 16):
        n = base * mult
        runs = [run_child(SCALING, setup=f"N = {n}\n" + SCALING_SETUP) for _ in range(repeat)]
        t = _summ(runs)
        out.append({"mult": mult, "n": n, "wall_s": t, "cpu_s": _summ(runs, "cpu_s"), "ns_per_value": t / n * 1e9,
                    "peak_rss_bytes": _summ(runs, "peak_rss_bytes")})
    return out


def bench_fc6(repeat: int) -> dict:
    runs = [run_child(FC6, setup="N = 0\n" + FC6_SETUP) for _ in range(repeat)]
    r = runs[-1]["result"]
    peak = median(x["result"]["traced_peak_bytes"] for x in runs)
    # RSS growth during the encode: also counts buffers tracemalloc does not see (e.g. numba's)
    grow = median(x["peak_rss_bytes"] - x["result"]["rss_before_bytes"] for x in runs)
    return {"n": r["n"], "blob_bytes": r["blob_bytes"], "wall_s": _summ(runs), "cpu_s": _summ(runs, "cpu_s"),
            "traced_peak_bytes": peak, "traced_peak_over_blob": peak / r["blob_bytes"],
            "rss_growth_bytes": grow, "rss_growth_over_blob": grow / r["blob_bytes"], "coded_bytes": r["coded_bytes"]}


def bench_pipeline(path: Path, repeat: int, tmp: Path) -> dict:
    out_h5 = tmp / "vgg16.bench.h5"
    dest = tmp / "vgg16.bench.restored.caffemodel"
    comp, rest = [], []
    for _ in range(repeat):
        comp.append(run_child(PIPE, setup=f"PATH = {str(path)!r}; OUT = {str(out_h5)!r}\n" + PIPE_SETUP))
        rest.append(run_child(RESTORE, setup=f"OUT = {str(out_h5)!r}; DEST = {str(dest)!r}\n" + RESTORE_SETUP))
    size = path.stat().st_size
    res = {
        "file_bytes": size,
        "compress_s": _summ(comp),
        "compress_cpu_s": _summ(comp, "cpu_s"),
        "compress_peak_rss_bytes": _summ(comp, "peak_rss_bytes"),
        "rss_with_model_bytes": _summ(comp, "setup_rss_bytes"),
        "compress_peak_over_file": _summ(comp, "peak_rss_bytes") / size,
        "compressed_bytes": comp[-1]["result"]["file_bytes"],
        "ratio": size / comp[-1]["result"]["file_bytes"],
        "bits": comp[-1]["result"]["bits"],
        "restore_s": _summ(rest),
        "restore_cpu_s": _summ(rest, "cpu_s"),
        "restore_peak_rss_bytes": _summ(rest, "peak_rss_bytes"),
        "restored_bytes": rest[-1]["result"]["restored_bytes"],
        "all_compress_s": [r["wall_s"] for r in comp],
        "all_restore_s": [r["wall_s"] for r in rest],
    }
    for p in (out_h5, dest):
        if p.exists():
            p.unlink()
    return res


def report(res: dict) -> str:
    L = [f"model: {res['model']} ({res['file_bytes'] / 1e6:.1f} MB), medians of {res['repeat']} fresh processes", ""]
    if "engine" in res:
        e = res["engine"]
        L += [
            "Engine, every conv/fc weight blob: prune 50 % + k = 32 (encode_blob(bits=5, prune=0.5)), then decode",
            "",
            "| weights | encode (s) | encode CPU (s) | decode (s) | encode peak RSS (MB) | RSS with model loaded (MB) | peak / weights | coded ratio |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {e['weight_bytes'] / 1e6:.0f} MB | {e['encode_s']:.2f} | {e['encode_cpu_s']:.2f} | {e['decode_s']:.2f} | "
            f"{e['peak_rss_bytes'] / 1e6:.0f} | {e['rss_with_model_bytes'] / 1e6:.0f} | {e['peak_over_weights']:.2f}x "
            f"(target <= 1.5x) | {e['ratio']:.1f}x |",
            "",
        ]
    if "scaling" in res:
        L += ["Scaling, one trained-like fc blob (encode, prune 50 % + k = 32):", "",
              "| size | values | time (s) | ns / value | peak RSS (MB) |", "|---:|---:|---:|---:|---:|"]
        for s in res["scaling"]:
            L.append(f"| {s['mult']}x | {s['n']:,} | {s['wall_s']:.3f} | {s['ns_per_value']:.1f} | {s['peak_rss_bytes'] / 1e6:.0f} |")
        L.append("")
    if "fc6" in res:
        f = res["fc6"]
        L += ["The largest blob alone (fc6-shaped 4096 x 25088 trained-like blob, encode, allocations traced):", "",
              "| values | blob (MB) | time (s) | CPU (s) | traced peak (MB) | traced / blob | RSS growth (MB) | growth / blob |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|",
              f"| {f['n']:,} | {f['blob_bytes'] / 1e6:.0f} | {f['wall_s']:.1f} | {f['cpu_s']:.1f} | "
              f"{f['traced_peak_bytes'] / 1e6:.0f} | {f['traced_peak_over_blob']:.2f}x | "
              f"{f['rss_growth_bytes'] / 1e6:.0f} | {f['rss_growth_over_blob']:.2f}x |", ""]
    if "pipeline" in res:
        p = res["pipeline"]
        L += [
            "Pipeline, default preset (compress + save HDF5; model read before the clock), then restore to .caffemodel",
            "",
            "| compress (s) | compress CPU (s) | peak RSS (MB) | peak / file | ratio | bits used | restore (s) | restore peak RSS (MB) |",
            "|---:|---:|---:|---:|---:|---|---:|---:|",
            f"| {p['compress_s']:.2f} (target <= 20) | {p['compress_cpu_s']:.2f} | {p['compress_peak_rss_bytes'] / 1e6:.0f} | "
            f"{p['compress_peak_over_file']:.2f}x (target <= 2x) | {p['ratio']:.2f}x | {p['bits']} | "
            f"{p['restore_s']:.2f} (target <= 10) | {p['restore_peak_rss_bytes'] / 1e6:.0f} |",
        ]
    return "\n".join(L)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="engine and pipeline benchmark on the VGG-16-sized model")
    ap.add_argument("--model", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "vgg16.caffemodel")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--parts", default="engine,scaling,fc6,pipeline")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    path = ensure_model(a.model)
    parts = a.parts.split(",")
    res = {"model": str(path), "file_bytes": path.stat().st_size, "repeat": a.repeat}
    if "engine" in parts:
        res["engine"] = bench_engine(path, a.repeat)
    if "scaling" in parts:
        res["scaling"] = bench_scaling(a.repeat)
    if "fc6" in parts:
        res["fc6"] = bench_fc6(a.repeat)
    if "pipeline" in parts:
        res["pipeline"] = bench_pipeline(path, a.repeat, path.parent)
    print(report(res))
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
