"""Peer benchmark (issue 14): NNCodec 2.1.3 (MPEG NNR, ISO/IEC 15938-17,
DeepCABAC) on the zoo models of >= 100 KB, at equal output error.

Sweep mode runs in its own environment (``.venv-nncodec``, see
benchmarks/README.md, "NNCodec peer (issue 14)"; never in CI or the tests)::

    .venv-nncodec/bin/python benchmarks/peer_nncodec.py --json benchmarks/results/nncodec_peer.json
        [--qps=-60:-20:1] [--only NAME] [--min-bytes 100000]

For each model and QP: every blob as a float32 array (``"layer/i"`` keys)
goes through ``nncodec.nn.encode`` / ``nncodec.nn.decode`` (uniform
quantisation, dependent quantisation on, one global QP for every weight
tensor, no LSA, no BN folding, no fine-tuning, no sparsification; NNCodec's
defaults for the rest: 1-D tensors are "unspecified" parameters coded at
``nonweight_qp`` -75). The decoded arrays go back into a copy of the
Model, which is serialised with ``caffemodel_bytes`` and run beside the
source through OpenCV 4.x on the held-out images (``zoo_ratios.HELD``'s
``verify.HELDOUT_IMAGES``), as ``benchmarks/zoo_ratios.py`` measures our
files. ratio = source bytes / (NNCodec bitstream + skeleton), where the
skeleton is zlib level 9 of the Model's ``skeleton`` (the NetParameter with
every blob's values removed): exactly the ``skeleton`` stream our own file
stores. Encoder and decoder run on one thread.

Compare mode needs neither NNCodec nor caffecompress (any Python)::

    python benchmarks/peer_nncodec.py --compare OURS.json PEER.json

``OURS.json`` is ``benchmarks/results_table.py --json`` output (or
``zoo_ratios.py --json``'s list of rows). Per model and preset: paired =
our ratio / NNCodec's best ratio over the QPs whose error <= ours; "robust"
keeps only QPs at which every finer QP of the sweep also holds that error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def gmean(xs):
    xs = [x for x in xs if x and math.isfinite(x)]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


# ---------------------------------------------------------------- sweep (NNCodec)

def import_nncodec():
    """``nncodec.nn``. Its import pulls in torchvision; the only torchvision on
    PyPI for torch 2.13 is a CUDA build whose ops library cannot load beside a
    CPU torch, and torchvision 0.28 then fails registering fake kernels for
    two ops it never defined. NNCodec uses none of torchvision's ops: define
    their schemas (no kernels) and import again."""
    import torch

    try:
        import nncodec.nn as nnc_nn
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
        for m in [m for m in sys.modules if m.split(".")[0] in ("torchvision", "nncodec")]:
            del sys.modules[m]
        for op in ("nms", "qnms"):
            torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import nncodec.nn as nnc_nn
    torch.set_num_threads(1)
    return nnc_nn


def parse_qps(spec: str) -> list[int]:
    if ":" in spec:
        a, b, s = (int(x) for x in spec.split(":"))
        return list(range(a, b + (1 if s > 0 else -1), s))
    return [int(x) for x in spec.split(",")]


def sweep(qps, only=None, min_bytes=100_000):
    import copy
    import dataclasses
    import tempfile
    import zlib

    import numpy as np

    sys.path.insert(0, str(HERE))
    from common import zoo_pairs

    import caffecompress as cc
    from caffecompress import verify
    from caffecompress.caffe import caffemodel_bytes

    nnc_nn = import_nncodec()
    import cv2
    import nncodec

    if not hasattr(cv2.utils, "logging"):
        # NNCodec pins numpy<2, so OpenCV 4.11 (the last wheels for NumPy 1), whose bindings lack
        # cv2.utils.logging, which caffecompress.runtime uses only to silence OpenCV's log lines
        import types
        cv2.utils.logging = types.SimpleNamespace(LOG_LEVEL_SILENT=0, getLogLevel=lambda: 0,
                                                  setLogLevel=lambda level: None)

    held = verify.sample_images(verify.HELDOUT_IMAGES)  # zoo_ratios.HELD
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, model_path, proto in zoo_pairs():
            src = model_path.read_bytes()
            if len(src) < min_bytes or (only and only not in name):
                continue
            model = cc.read_caffemodel(model_path, prototxt=proto)
            proto_text = proto.read_text()
            skeleton = len(zlib.compress(bytes(model.skeleton), 9))
            prototxt_z = len(zlib.compress(proto_text.encode("utf-8"), 9))
            params = {f"{lay.name}/{i}": np.ascontiguousarray(b, dtype=np.float32) for lay, i, b in model.blobs()}
            for qp in qps:
                args = {"approx_method": "uniform", "qp": qp, "use_dq": True, "opt_qp": False,
                        "lsa": False, "bnf": False, "sparsity": 0.0, "tca": False,
                        "results": tmp, "verbose": False}
                t0 = time.perf_counter()
                bs = nnc_nn.encode(params, args=args)
                t1 = time.perf_counter()
                rec = nnc_nn.decode(bytearray(bs), args=args)
                t2 = time.perf_counter()
                restored = copy.copy(model)
                restored.layers = [
                    dataclasses.replace(lay, blobs=[np.asarray(rec[f"{lay.name}/{i}"], np.float32).reshape(b.shape)
                                                    for i, b in enumerate(lay.blobs)])
                    for lay in model.layers]
                data = caffemodel_bytes(restored)
                reps = verify.compare((proto_text, src), (proto_text, data), held)
                err = verify.max_rel_error(reps)
                pt = {"model": name, "qp": qp, "input_bytes": len(src), "bitstream_bytes": len(bs),
                      "skeleton_bytes": skeleton, "prototxt_zlib9_bytes": prototxt_z,
                      "ratio": len(src) / (len(bs) + skeleton), "max_rel_l2": err,
                      "encode_s": t1 - t0, "decode_s": t2 - t1}
                points.append(pt)
                print(f"{name:<42} qp {qp:4d}  {len(bs):9d} B  {pt['ratio']:7.2f}x  err {err:.4f}  "
                      f"enc {pt['encode_s']:.2f}s dec {pt['decode_s']:.2f}s", flush=True)
    meta = {"nncodec": nncodec.__version__ if hasattr(nncodec, "__version__") else "2.1.3",
            "call": "nncodec.nn.encode(params, args={approx_method: uniform, qp: QP, use_dq: True, opt_qp: False, "
                    "lsa: False, bnf: False, sparsity: 0.0, tca: False}) (other args: nn.nncargs defaults); "
                    "nncodec.nn.decode(bytearray(bitstream), args=same)",
            "qps": qps, "skeleton": "len(zlib.compress(model.skeleton, 9)), as the container's skeleton stream",
            "ratio": "input_bytes / (bitstream_bytes + skeleton_bytes)",
            "images": list(verify.HELDOUT_IMAGES), "threads": 1}
    return {"meta": meta, "points": points}


def print_sweep(peer):
    by = {}
    for p in peer["points"]:
        by.setdefault(p["model"], []).append(p)
    print("\n| model | KB | best ratio at err <= 0.03 (QP, err) | QP range: err |")
    print("|---|---:|---:|---|")
    for m, ps in by.items():
        ok = [p for p in ps if p["max_rel_l2"] <= 0.03]
        b = max(ok, key=lambda p: p["ratio"]) if ok else None
        cell = f"{b['ratio']:.2f}x ({b['qp']}, {b['max_rel_l2']:.4f})" if b else "none"
        lo, hi = min(ps, key=lambda p: p["qp"]), max(ps, key=lambda p: p["qp"])
        print(f"| {m} | {ps[0]['input_bytes'] / 1e3:.0f} | {cell} | {lo['qp']}: {lo['max_rel_l2']:.4f} .. "
              f"{hi['qp']}: {hi['max_rel_l2']:.4f} |")
    print_peer_lines(by)


# ---------------------------------------------------------------- compare (no NNCodec)

def best(ps, err, robust=False):
    """NNCodec's best point at an error <= err (None if no QP reaches it).

    robust: only QPs at which every finer QP (smaller QP = smaller step) of
    the sweep also holds the error."""
    ps = sorted(ps, key=lambda p: p["qp"])
    ok = []
    for p in ps:
        if p["max_rel_l2"] <= err:
            ok.append(p)
        elif robust:
            break
    return max(ok, key=lambda p: p["ratio"]) if ok else None


def print_peer_lines(by):
    models = list(by)
    qps = sorted({p["qp"] for ps in by.values() for p in ps})
    print(f"\nNNCodec, one QP for every model ({len(models)} models): geometric-mean ratio, worst error")
    for q in qps:
        pts = [p for ps in by.values() for p in ps if p["qp"] == q]
        if len(pts) == len(models):
            print(f"  QP {q:4d}: {gmean(p['ratio'] for p in pts):6.2f}x  worst {max(p['max_rel_l2'] for p in pts):.4f}")
    for robust in (False, True):
        bs = [best(ps, 0.03, robust) for ps in by.values()]
        got = [b for b in bs if b]
        print(f"NNCodec best per model at error <= 0.03{' (robust)' if robust else ''}: "
              f"{gmean(b['ratio'] for b in got):.2f}x ({len(got)} of {len(models)} models reach it)")


def compare(ours_path, peer_path):
    ours = json.loads(Path(ours_path).read_text())
    rows = ours["rows"] if isinstance(ours, dict) else ours
    peer = json.loads(Path(peer_path).read_text())
    by = {}
    for p in peer["points"]:
        by.setdefault(p["model"], []).append(p)
    rows = [r for r in rows if r.get("preset") != "baselines" and r["model"] in by and r.get("max_rel_l2") is not None]
    presets = list(dict.fromkeys(r["preset"] for r in rows))
    paired = {}  # (preset, robust) -> [(model, value)]
    print("| model | preset | ours (err) | NNCodec best at err <= ours (QP, err) | paired | robust NNCodec | paired robust |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for m in by:
        for r in [r for r in rows if r["model"] == m]:
            e = r["max_rel_l2"]
            cells = []
            for robust in (False, True):
                b = best(by[m], e, robust)
                if b is None:
                    cells += [f"no NNCodec QP reaches {e:.2g}", "-"]
                else:
                    v = r["ratio"] / b["ratio"]
                    paired.setdefault((r["preset"], robust), []).append((m, v))
                    edge = " edge" if b["qp"] == max(p["qp"] for p in by[m]) else ""
                    cells += [f"{b['ratio']:.2f}x ({b['qp']}{edge}, {b['max_rel_l2']:.4f})", f"{v:.3f}"]
            print(f"| {m} | {r['preset']} | {r['ratio']:.2f}x ({e:.4f}) | " + " | ".join(cells) + " |")
    print("\npaired = our ratio / NNCodec's best ratio at an error <= ours, same model "
          "(\"edge\": the sweep's coarsest QP still holds our error, so NNCodec's ratio is a lower bound)")
    print(f"{'preset':<18} {'ours gmean':>10} {'NNCodec gmean':>13} {'paired gmean':>12} {'min (model)':>34} "
          f"{'robust gmean':>12} {'robust min':>10} {'models':>7}")
    for p in presets:
        rs = [r for r in rows if r["preset"] == p]
        line = f"{p:<18} {gmean(r['ratio'] for r in rs):>10.2f}"
        vs = paired.get((p, False), [])
        nb = [best(by[r["model"]], r["max_rel_l2"]) for r in rs]
        line += f" {gmean(b['ratio'] for b in nb if b):>13.2f}" if any(nb) else f" {'-':>13}"
        if vs:
            mn = min(vs, key=lambda t: t[1])
            line += f" {gmean(v for _, v in vs):>12.3f} {f'{mn[1]:.3f} ({mn[0]})':>34}"
        else:
            line += f" {'-':>12} {'-':>34}"
        rv = paired.get((p, True), [])
        line += (f" {gmean(v for _, v in rv):>12.3f} {min(v for _, v in rv):>10.3f}" if rv else f" {'-':>12} {'-':>10}")
        line += f" {len(vs):>3}/{len(rs)}"
        print(line)
    ob = []
    for m in by:
        ok = [r for r in rows if r["model"] == m and r["max_rel_l2"] <= 0.03]
        if ok:
            ob.append(max(r["ratio"] for r in ok))
    print(f"\nours, best per model over the presets at error <= 0.03: {gmean(ob):.2f}x ({len(ob)} of {len(by)} models reach it)")
    print_peer_lines(by)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the sweep's points here")
    ap.add_argument("--qps", default="-60:-20:2", help="first:last:step or a comma list (default -60:-20:2)")
    ap.add_argument("--only")
    ap.add_argument("--min-bytes", type=int, default=100_000)
    ap.add_argument("--compare", nargs=2, metavar=("OURS.json", "PEER.json"))
    a = ap.parse_args(argv)
    if a.compare:
        compare(*a.compare)
        return 0
    for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(v, "1")
    t0 = time.perf_counter()
    peer = sweep(parse_qps(a.qps), a.only, a.min_bytes)
    peer["meta"]["wall_s"] = time.perf_counter() - t0
    print_sweep(peer)
    print(f"\nwall {peer['meta']['wall_s']:.0f} s")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(peer, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
