"""A few thousand seeded mutation cases over every reader, in two worker processes.

The contract per case: a result or a CaffeCompressError naming the file;
never another exception, a crash, a hang, a memory blow-up, a result taken
through a link or external storage, or a ``.ccz.h5`` restored to other weights.
``benchmarks/fuzz_readers.py`` runs the same cases by the 100,000.
"""

from __future__ import annotations

from collections import Counter

import mutfuzz


def test_fuzz_every_reader():
    rep = mutfuzz.campaign(3500, seed=20261201, workers=2, timeout=20.0, rss_limit_mb=256)
    print(rep.table())
    assert rep.bad == 0, "\n".join(map(str, rep.findings[:20]))
    # every kind ran, and both outcomes occur for each (the mutations reach the readers)
    for kind in mutfuzz.KINDS:
        assert rep.counts[(kind, "error")] > 0, kind
        assert rep.counts[(kind, "ok")] + rep.counts[(kind, "error")] >= 400, kind
    families = {label.split(":")[0] for (_, label, _) in rep.ops}
    assert {"bytes", "text", "h5", "index", "stream"} <= families
    # format 1.1: the grid method's meta and label streams were forged, and refused
    grid = Counter()
    for (kind, label, outcome), n in rep.ops.items():
        if label.startswith("index:grid_"):
            grid[outcome] += n
    assert grid["error"] > 0 and grid["ok"] + grid["error"] >= 10, grid
    # format 1.2: dependent quantisation, the rANS coder and its token mode switched on, off or hostile
    switched = Counter()
    for (kind, label, outcome), n in rep.ops.items():
        if label.startswith(("index:grid_set_", "index:grid_no_")):
            switched[outcome] += n
    assert switched["error"] > 0, switched
    # format 1.3: the fpack codec of lossless records switched on, off or hostile
    packed = Counter()
    for (kind, label, outcome), n in rep.ops.items():
        if label.startswith("index:lossless_") and label != "index:lossless_none":
            packed[outcome] += n
    assert packed["error"] > 0 and packed["ok"] + packed["error"] >= 10, packed


def test_harness_sees_violations(tmp_path, monkeypatch):
    """The classifier itself: an untyped exception, a silent change and a blow-up are each caught."""
    import numpy as np

    seeds = mutfuzz.build_seeds(tmp_path / "seeds")
    s = seeds["v2"][0]

    def boom(*a, **k):
        raise KeyError("x")

    monkeypatch.setattr(mutfuzz, "run_entry", boom)
    assert mutfuzz.classify("v2", s, 1, str(tmp_path / "c.caffemodel"), None, 256)[1] == "untyped"

    def silent(*a, **k):
        raise mutfuzz._Silent("differs")

    monkeypatch.setattr(mutfuzz, "run_entry", silent)
    assert mutfuzz.classify("v2", s, 1, str(tmp_path / "c.caffemodel"), None, 256)[1] == "silent"

    def hog(*a, **k):
        x = np.ones(64 << 20, np.uint8)  # 64 MiB touched
        return x.sum()

    monkeypatch.setattr(mutfuzz, "run_entry", hog)
    assert mutfuzz.classify("v2", s, 1, str(tmp_path / "c.caffemodel"), None, 16)[1] == "blowup"


def test_harness_sees_hangs_and_crashes():
    """Worker-level outcomes: a case that never answers is a hang, a worker killed by SIGSEGV a crash."""
    for inject, outcome in (("hang", "hang"), ("crash", "crash")):
        rep = mutfuzz.campaign(14, seed=0, workers=1, timeout=3.0, kinds=("v2",), inject=inject)
        assert sum(v for (k, o), v in rep.counts.items() if o == outcome) == 2, rep.counts
        assert sum(rep.counts.values()) == 14  # the replacement worker ran the rest
        if outcome == "crash":
            assert all("exit -11" in f[-1] for f in rep.findings)
