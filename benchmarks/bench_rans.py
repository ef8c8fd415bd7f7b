"""The grid method's index coders side by side on the zoo (issue 14, part 2).

For every weight blob of the zoo models >= 100 KB, the data-free rule's
dependent-quantisation indices (what ``--data-free`` stores) are coded by:

- the static Huffman code (``engine.huffman``, the table included);
- our context-adaptive rANS (``engine.rans``), numba twin and NumPy twin,
  with each context rule (format 1.2's previous index, 2.2's running magnitude);
- ``constriction`` (if importable): its ANS coder with one static
  categorical model per blob (order 0; the count table it needs is charged
  at 2 bytes a used symbol), and, on the first ``--ctx-symbols`` values of
  the largest blob, the same context model as ours (4 classes of the
  previous index, counts adapted after every value) driven one value a call,
  which is what a model that depends on decoded values needs through its
  Python API.

Prints total bytes (and their ratio to Huffman's) and coding speed in M
values/s (encode / decode, one process, the machine's threads for ours).
``--big N``: per-core throughput on one blob of N weights instead.

    .venv/bin/python benchmarks/bench_rans.py
    .venv/bin/python benchmarks/bench_rans.py --big 16777216
    PYTHONPATH=/path/to/constriction .venv/bin/python benchmarks/bench_rans.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import zoo_pairs  # noqa: E402

import caffecompress as cc  # noqa: E402
from caffecompress.engine import blob as B  # noqa: E402
from caffecompress.engine import huffman as H  # noqa: E402
from caffecompress.engine import rans as R  # noqa: E402


def _labels():
    """(labels uint16, nsym, qmin) of every data-free grid blob of the zoo >= 100 KB."""
    out = []
    for name, mp, pp in zoo_pairs():
        if mp.stat().st_size < 100_000:
            continue
        cm = cc.compress(cc.read_caffemodel(mp, prototxt=pp), data_free=True)
        for r in cm.records:
            if r.method == "grid" and int(r.meta["nsym"]) >= 2:
                ns = int(r.meta["nsym"])
                lab = np.concatenate(list(B._label_blocks(r.meta, r.parts, ns, 1 << 30))).astype(np.uint16)
                out.append((lab, ns, int(r.meta["qmin"])))
    return out


def _timed(fn, *a, **k):
    t = time.perf_counter()
    r = fn(*a, **k)
    return r, time.perf_counter() - t


def big_blob(n: int, repeat: int) -> None:
    """Per-core throughput on one big blob (filters of log-normal scales): the
    trellis, the rANS coder both ways, the fused DQ decode and the Huffman
    decoder, with 1 thread and with the machine's threads (medians)."""
    from caffecompress.engine import grid as G
    from caffecompress.engine import trellis as T

    rng = np.random.default_rng(0)
    rows = n // 4096
    x = (rng.laplace(0, 1, rows * 4096) * np.repeat(np.exp(rng.normal(-4.5, 0.8, rows)), 4096)).astype(np.float32)
    s = T.grid_step_for(x, 2.0 ** -10.3)
    T.values(np.zeros(8192, np.uint16), 0, s)
    for nt in sorted({1, G.worker_threads()}):
        R.worker_threads = T.worker_threads = (lambda nt=nt: nt)
        ts = {}
        for _ in range(repeat):
            k, t = _timed(T.quantize, x, s)
            ts.setdefault("trellis", []).append(t)
            q = int(k.min())
            lab = (k - q).astype(np.uint16)
            ns = int(lab.max()) + 1
            list(R.decode_groups(*R.encode(lab[:8192], ns, q), 8192, ns, q))
            (m, p), t = _timed(R.encode, lab, ns, q)
            ts.setdefault("rANS encode", []).append(t)
            _, t = _timed(lambda: sum(g.size for g in R.decode_groups(m, p, lab.size, ns, q)))
            ts.setdefault("rANS decode", []).append(t)
            _, t = _timed(T.values, lab, q, s)
            ts.setdefault("DQ labels -> float32", []).append(t)
            hs = H.encode(lab, nsym=ns)
            H.decode(H.encode(lab[:8192], nsym=ns))
            _, t = _timed(H.decode, hs)
            ts.setdefault("Huffman decode", []).append(t)
        print(f"{x.size} weights, {ns} symbols, {nt} thread(s): " + ", ".join(
            f"{k} {x.size / sorted(v)[len(v) // 2] / 1e6:.1f} M/s" for k, v in ts.items()))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ctx-symbols", type=int, default=20_000)
    ap.add_argument("--big", type=int, metavar="N", help="only the per-core throughput on one blob of N weights")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args(argv)
    if a.big:
        big_blob(a.big, a.repeat)
        return
    blobs = _labels()
    n = sum(lab.size for lab, _, _ in blobs)
    print(f"{len(blobs)} grid blobs, {n} indices (zoo models >= 100 KB, data-free rule)")
    w0, ns0, q0 = blobs[0]  # compile outside the clock
    list(R.decode_groups(*R.encode(w0, ns0, q0), w0.size, ns0, q0))
    rows = {}
    hb = te = td = 0.0
    for lab, ns, _ in blobs:
        s, t = _timed(H.encode, lab, nsym=ns)
        _, t2 = _timed(H.decode, s)
        hb += sum(np.asarray(v).nbytes for v in H.stream_parts(s)[1].values())
        te, td = te + t, td + t2
    rows["huffman (static table)"] = (hb, te, td)
    rules = {0: "4 contexts, previous index (format 1.2)", R.CTX_EMA: "16 contexts, running magnitude (2.2)"}
    for ctx, what in rules.items():
        for eng in ("numba", "numpy") if R.have_compiled() else ("numpy",):
            rb = te = td = 0.0
            for lab, ns, q in blobs:
                (m, p), t = _timed(R.encode, lab, ns, q, engine=eng, ctx=ctx)
                _, t2 = _timed(lambda: list(R.decode_groups(m, p, lab.size, ns, q, engine=eng)))
                rb += sum(v.nbytes for v in p.values())
                te, td = te + t, td + t2
            rows[f"ours: adaptive rANS, {what} ({eng})"] = (rb, te, td)
    best = 0.0
    for lab, ns, q in blobs:  # what the engine stores (blob._rans_parts, without its estimate gate)
        sizes = [sum(v.nbytes for v in R.encode(lab, ns, q)[1].values())]
        if lab.size <= B.RANS_BOTH_MAX:
            sizes.append(sum(v.nbytes for v in R.encode(lab, ns, q, ctx=0)[1].values()))
        counts = np.bincount(lab, minlength=ns)
        lengths = H.code_lengths(counts, H.auto_max_len(int(np.count_nonzero(counts))))
        rb_, hb_ = min(sizes), H.stream_nbytes(counts, lengths, lab.size)
        best += rb_ if rb_ < B.RANS_MIN_GAIN * hb_ else hb_
    rows["stored: the smaller rule's rANS where >= 1 % under Huffman, else Huffman"] = (best, float("nan"),
                                                                                       float("nan"))
    try:
        import constriction  # noqa: PLC0415  (its submodules are attributes of the extension)

        cm_model, stack = constriction.stream.model, constriction.stream.stack
    except ImportError:
        print("constriction not importable: its rows are skipped")
        cm_model = None
    if cm_model is not None:
        cb = te = td = 0.0
        for lab, ns, _ in blobs:
            counts = np.bincount(lab, minlength=ns).astype(np.float64)
            mdl = cm_model.Categorical(counts, perfect=False)
            sym = lab.astype(np.int32)
            t = time.perf_counter()
            enc = stack.AnsCoder()
            enc.encode_reverse(sym, mdl)
            comp = enc.get_compressed()
            te += time.perf_counter() - t
            t = time.perf_counter()
            dec = stack.AnsCoder(comp)
            back = dec.decode(mdl, sym.size)
            td += time.perf_counter() - t
            assert np.array_equal(back, sym)
            cb += comp.nbytes + 2 * int(np.count_nonzero(counts))
        rows["constriction: ANS, static order-0 table"] = (cb, te, td)
        lab, ns, q = max(blobs, key=lambda b: b[0].size)
        k = min(a.ctx_symbols, lab.size)
        ctxof = np.minimum(np.abs(np.arange(ns) + q), R.NCTX - 1)
        counts = np.ones((R.NCTX, ns))
        t = time.perf_counter()
        dec_models = []
        prev = 0
        for i in range(k):  # a decoder must build each value's model from the values before it
            dec_models.append(cm_model.Categorical(counts[prev].copy(), perfect=False))
            counts[prev, lab[i]] += R.INC
            prev = ctxof[lab[i]]
        enc = stack.AnsCoder()
        for i in range(k - 1, -1, -1):
            enc.encode_reverse(np.array([lab[i]], np.int32), dec_models[i])
        per_value = (time.perf_counter() - t) / k
        print(f"constriction, our context model one value a call: {1e-6 / per_value:.2f} M values/s to encode "
              f"({k} values of the largest blob; decoding makes the same calls)")
    print(f"{'coder':<50} {'bytes':>10} {'vs Huffman':>10} {'encode M/s':>11} {'decode M/s':>11}")
    for name, (nb, te, td) in rows.items():
        sp = (f"{n / te / 1e6:>11.1f} {n / td / 1e6:>11.1f}" if te == te else f"{'':>11} {'':>11}")
        print(f"{name:<50} {nb:>10.0f} {nb / hb:>10.4f} {sp}")


if __name__ == "__main__":
    main()
