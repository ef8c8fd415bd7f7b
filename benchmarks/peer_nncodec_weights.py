"""Issue 14: the coding cores alone, ours against NNCodec's, at equal weight MSE.

The per-model pairing (``peer_nncodec.py``) measures output errors on eight
held-out images, and a quantisation's held-out error is a draw (one step
can measure worse than a coarser one): it cannot tell a 3 % difference in
the cores. Here each of the zoo's large weight blobs (>= 20,000 values, > 1
dimension, models >= 100 KB) is coded alone by both and only the weights
are compared:

- NNCodec 2.1.3, ``nncodec.nn.encode({"w": blob})`` with the arguments of
  ``peer_nncodec.py`` (uniform quantisation, dependent quantisation,
  DeepCABAC), QP -58..-26 step 2: the bitstream's bytes and the weights'
  MSE after ``decode``;
- ours, the data-free rule's coder (``engine.blob._grid`` with dependent
  quantisation: the trellis, then rANS or Huffman, whichever is stored),
  DQ steps ``2**(q/4)`` for q = -60..-23: the stored streams' bytes and
  the MSE after ``decode_blob``.

For every NNCodec point inside our swept range, our bytes are interpolated
(log bytes against log MSE) at its MSE; the cells are our bytes over its.

Two environments (NNCodec's is described in benchmarks/README.md)::

    .venv-nncodec/bin/python benchmarks/peer_nncodec_weights.py --peer /tmp/nnc_weights.json   # ~1 min
    .venv/bin/python benchmarks/peer_nncodec_weights.py --compare /tmp/nnc_weights.json        # ~20 s
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import zoo_pairs  # noqa: E402

MIN_VALUES = 20_000
PEER_QPS = range(-58, -25, 2)
OUR_QS = np.arange(-60, -22, 1.0)
SHOWN = range(-46, -33, 2)  # the QPs printed (NNCodec's zoo points at errors <= 0.03 lie in -47..-26)


def big_blobs():
    """``{"model|layer/i": float32 array}`` of the zoo's large weight blobs."""
    import caffecompress as cc

    out = {}
    for name, mp, proto in zoo_pairs():
        if mp.stat().st_size < 100_000:
            continue
        m = cc.read_caffemodel(mp, prototxt=proto)
        for lay, i, b in m.blobs():
            if b.ndim > 1 and b.size >= MIN_VALUES:
                out[f"{name}|{lay.name}/{i}"] = np.ascontiguousarray(b, np.float32)
    return out


def peer(path: str) -> None:
    from peer_nncodec import import_nncodec

    nn = import_nncodec()
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key, x in big_blobs().items():
            pts = []
            for qp in PEER_QPS:
                args = {"approx_method": "uniform", "qp": qp, "use_dq": True, "opt_qp": False, "lsa": False,
                        "bnf": False, "sparsity": 0.0, "tca": False, "results": tmp, "verbose": False}
                bs = nn.encode({"w": x}, args=args)
                y = np.asarray(nn.decode(bytearray(bs), args=args)["w"], np.float64).reshape(x.shape)
                pts.append([qp, len(bs), float(np.mean((y - x) ** 2))])
            res[key] = pts
            print(key, x.shape, "QP -42:", [p for p in pts if p[0] == -42], flush=True)
    Path(path).write_text(json.dumps({"nncodec": "2.1.3", "points": res}, indent=1))


def ours(x: np.ndarray):
    from caffecompress.engine import blob as B

    pts = []
    for q in OUR_QS:
        e = B._grid(x.reshape(-1), x.shape, float(2.0 ** (q / 4)), 0.0, True, np)
        y = B.decode_blob("grid", e.meta, e.parts).astype(np.float64).reshape(x.shape)
        pts.append((e.nbytes, float(np.mean((y - x) ** 2))))
    return pts


def compare(path: str) -> int:
    theirs = json.loads(Path(path).read_text())["points"]
    blobs = big_blobs()
    logs, per_model = [], {}
    print(f"{'blob':<58} {'values':>7}  ours / NNCodec bytes at its MSE, by QP")
    print(f"{'':<58} {'':>7}  " + " ".join(f"{q:>6d}" for q in SHOWN))
    for key, x in blobs.items():
        pts = ours(x)
        lb = np.log([p[0] for p in pts])
        lm = np.log([p[1] for p in pts])
        order = np.argsort(lm)
        cells = {}
        for qp, nb, mse in theirs[key]:
            lmse = np.log(mse)
            if lm.min() <= lmse <= lm.max():
                cells[qp] = float(np.exp(np.interp(lmse, lm[order], lb[order]))) / nb
        shown = [cells.get(q) for q in SHOWN]
        print(f"{key:<58} {x.size:7d}  " + " ".join("     -" if c is None else f"{c:6.3f}" for c in shown))
        vals = [c for c in shown if c is not None]
        if vals:
            logs.append(np.mean(np.log(vals)))
            per_model.setdefault(key.split("|")[0], []).append((x.size, np.mean(np.log(vals))))
    print(f"\ngeometric mean over {len(logs)} blobs (each its mean over the QPs shown): "
          f"{float(np.exp(np.mean(logs))):.4f}")
    print("per model, weighted by values:")
    for name, rows in per_model.items():
        w = np.array([r[0] for r in rows], float)
        print(f"  {name:<44} {float(np.exp(np.sum(w * [r[1] for r in rows]) / w.sum())):.4f}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--peer", metavar="JSON", help="run NNCodec (in its environment) and write its points here")
    g.add_argument("--compare", metavar="JSON", help="run ours and compare with NNCodec's points")
    a = ap.parse_args(argv)
    if a.peer:
        peer(a.peer)
        return 0
    return compare(a.compare)


if __name__ == "__main__":
    sys.exit(main())
