"""Fuzz every reader: >= 100,000 seeded mutation cases, counts per kind and outcome.

    python benchmarks/fuzz_readers.py [--cases 105000] [--seed 1] [--workers 2]
        [--timeout 20] [--rss-limit-mb 256] [--kinds ccz,...] [--json OUT.json]

Kinds: binary caffemodel V0/V1/V2, prototxt, binaryproto, ``.caffemodel.h5``
and ``.ccz.h5``; mutation families bytes, text, HDF5 structure, forged
index and forged streams (see ``tests/fuzz/mutfuzz.py``). Each case runs in
a worker process under an address-space limit, with its peak RSS rise
measured and a per-case timeout: the outcomes ``untyped``, ``unnamed``,
``silent``, ``wrong``, ``blowup``, ``hang`` and ``crash`` break the contract
and are listed (kind, seed, case seed: replay one with ``mutfuzz.replay``).
Exit status 1 when any case broke it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fuzz"))

import mutfuzz  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=105_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--rss-limit-mb", type=float, default=256.0)
    ap.add_argument("--kinds", default=",".join(mutfuzz.KINDS),
                    help=f"comma-separated kinds to fuzz (default all: {','.join(mutfuzz.KINDS)})")
    ap.add_argument("--json", help="write the counts and findings here")
    args = ap.parse_args(argv)
    kinds = tuple(k for k in args.kinds.split(",") if k)
    if not kinds or set(kinds) - set(mutfuzz.KINDS):
        ap.error(f"--kinds: choose from {', '.join(mutfuzz.KINDS)}")
    t0 = time.perf_counter()

    def progress(done, rep):
        print(f"  {done:>7} cases, {rep.bad} contract violations, {time.perf_counter() - t0:.0f} s",
              file=sys.stderr, flush=True)

    rep = mutfuzz.campaign(args.cases, seed=args.seed, workers=args.workers, timeout=args.timeout,
                           rss_limit_mb=args.rss_limit_mb, kinds=kinds, progress=progress)
    print(f"{sum(rep.counts.values())} cases in {rep.seconds:.0f} s ({args.workers} workers, seed {args.seed}, "
          f"kinds {','.join(kinds)}); "
          f"largest peak RSS rise of a case {rep.peak_mb:.0f} MiB\n")
    print(rep.table())
    fam = Counter()
    for (kind, label, outcome), n in rep.ops.items():
        fam[(kind, label.split(":")[0], outcome)] += n
    print("\nper kind and mutation family:")
    for kind in mutfuzz.KINDS:
        for f in sorted({f for (k, f, _) in fam if k == kind}):
            row = {o: fam[(kind, f, o)] for (k, ff, o) in fam if k == kind and ff == f}
            print(f"  {kind:<12} {f:<7} " + "  ".join(f"{o} {n}" for o, n in sorted(row.items())))
    if rep.findings:
        print(f"\n{len(rep.findings)} contract violations:")
        for f in rep.findings[:200]:
            print("  ", f)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "cases": sum(rep.counts.values()), "seconds": rep.seconds, "seed": args.seed, "kinds": list(kinds),
            "counts": {f"{k}/{o}": n for (k, o), n in sorted(rep.counts.items())},
            "ops": {f"{k}/{l}/{o}": n for (k, l, o), n in sorted(rep.ops.items())},
            "findings": rep.findings, "peak_mb": rep.peak_mb}, indent=1))
    return 1 if rep.bad else 0


if __name__ == "__main__":
    sys.exit(main())
