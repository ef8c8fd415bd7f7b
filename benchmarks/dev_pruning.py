"""Does magnitude pruning earn a place among the allocation's candidates?

Issue 10 asks for pruning rates beside the bit widths "if they earn their
place". On an entropy-coded uniform grid, pruning the smallest weights is a
zero bin wider than the others: weights under ``t * step`` in magnitude go
to zero, the rest to their nearest level. This script adds, beside every
uniform grid candidate, one candidate per zero-bin half-width ``t`` (in
steps; 0.5 is the plain grid), rounded with GPTQ-style compensation where
the plain grid's is (``compensate.gptq_round(thresholds=...)``: the rest of
each row absorbs what pruning removed) and nearest otherwise, each with and
without bias correction as usual. The allocation then chooses freely among
all candidates. It runs :mod:`dev_fidelity` (development images, never the
held-out set) and prints, per model, how many blobs chose a pruned
candidate.

    .venv/bin/python benchmarks/dev_pruning.py [--widths 0.6667,0.8333] [--max-error 0.02]
        [--only NAME] [--json OUT.json]

Compare the geometric mean with ``dev_fidelity.py`` at the same target.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dev_fidelity  # noqa: E402

from caffecompress import allocate as A  # noqa: E402
from caffecompress.engine import compensate as C  # noqa: E402


def _pruned(b, M: np.ndarray, sig: float, key, c, t: float):
    """The candidate of grid ``c`` with a zero bin of half-width ``t`` steps."""
    grid = c.grid.astype(np.float64)
    half = (grid.size - 1) // 2  # the zero level's index (the grid is symmetric)
    thr = (grid[1:] + grid[:-1]) * 0.5
    if half >= 1:
        # widen the zero bin, never past the next levels
        thr[half - 1] = max(-t * c.step, grid[half - 1])
        thr[half] = min(t * c.step, grid[half + 1])
    if A._gptq_ok(b, key[1], extra=1):
        lab, tech = C.gptq_round(M, A._factor(b), grid, thresholds=thr), "pruned+gptq"
    else:
        lab, tech = np.searchsorted(thr, M).astype(np.int32), "pruned"
    name, dist, shift, delta = A._score(b, M, lab, grid, tech)
    counts = np.bincount(lab.reshape(-1), minlength=grid.size)
    used = np.flatnonzero(counts)
    remap = np.zeros(grid.size, np.int32)
    remap[used] = np.arange(used.size, dtype=np.int32)
    bits = max(1, int(math.ceil(math.log2(max(used.size, 2)))))
    return A._Cand(bits, name, A._counts_bytes(counts, codebook=False), dist, c.grid[used],
                   remap[lab].astype(np.uint16), shift, A._sqnr(sig, A._sq(delta)), grid=c.grid, step=c.step)


def install(widths) -> dict:
    """Add the pruned candidates to :func:`allocate._uniform_candidates`; returns the tally."""
    plain = A._uniform_candidates
    result = A._result
    tally = {"blobs": 0, "pruned": 0}

    def candidates(b, M, W64, sig, dq=True):
        plain(b, M, W64, sig, dq)
        for key, c in list(b.cands.items()):
            if key[0] == "u" and c.step is not None:
                for t in widths:
                    b.cands[("p", key[1], t)] = _pruned(b, M, sig, key, c, t)

    def spy(qm, blobs, choice, *a, **k):
        chosen = [v for v in choice.values() if v[0] == "p"]
        tally["blobs"] += len(choice)
        tally["pruned"] += len(chosen)
        print(f"  {len(chosen)} of {len(choice)} blobs chose a pruned candidate {chosen[:4]}", flush=True)
        return result(qm, blobs, choice, *a, **k)

    A._uniform_candidates = candidates
    A._result = spy
    return tally


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="0.6667,0.8333", help="zero-bin half-widths in steps, comma-separated")
    args, rest = ap.parse_known_args(argv)
    tally = install([float(x) for x in args.widths.split(",")])
    rc = dev_fidelity.main(rest)
    print(f"pruned candidates (zero bins {args.widths} steps): chosen by {tally['pruned']} of {tally['blobs']} blobs")
    return rc


if __name__ == "__main__":
    sys.exit(main())
