"""Issue 3's GPU figures, CPU beside them: run this on a device machine.

No zoo is needed (a device machine gets the checkout only): the 16 conv/fc
weight blobs of VGG-16 (138M weights, shapes below) are drawn trained-like
by ``tools/synthetic.trained_like`` on the host, then copied to the device
outside every clock.

1. ``share+code``: every blob through ``share_weights(k=32)`` and
   ``huffman.encode`` of its labels (the labels stay where they were made).
   Target on an H100-class GPU: < 0.5 s for the whole model.
2. ``engine``: every blob through ``encode_blob(bits=5, prune=0.5)`` (prune
   50 % + k = 32: pruning, positions, sharing, coding).
3. ``decode``: the label streams of step 1 decoded again, every blob, in
   GB/s of symbols (1 label = 1 symbol). Target: >= 10 GB/s.
4. ``identity``: codebooks, labels and streams of the device run equal the
   host run's, byte for byte, on every blob (printed; exit 1 if not).

Times are medians of ``--repeat`` passes after one warm-up pass (kernel
compiles, numba), with the device synchronised before each clock stops.

Usage::

    python benchmarks/bench_gpu.py [--backend gpu] [--repeat 3] [--scale 1.0]
        [--json OUT]

``--backend cpu`` runs the same steps on the host (to try the script where
there is no GPU); ``--scale 0.05`` shrinks every blob's first axis.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from caffecompress.backend import get_xp, to_host  # noqa: E402
from caffecompress.engine import huffman as H  # noqa: E402
from caffecompress.engine.blob import encode_blob  # noqa: E402
from caffecompress.engine.kmeans import share_weights  # noqa: E402

# VGG-16's weight blobs (Caffe shapes: conv (out, in, kh, kw), fc (out, in))
VGG16 = [
    ("conv1_1", (64, 3, 3, 3)), ("conv1_2", (64, 64, 3, 3)),
    ("conv2_1", (128, 64, 3, 3)), ("conv2_2", (128, 128, 3, 3)),
    ("conv3_1", (256, 128, 3, 3)), ("conv3_2", (256, 256, 3, 3)), ("conv3_3", (256, 256, 3, 3)),
    ("conv4_1", (512, 256, 3, 3)), ("conv4_2", (512, 512, 3, 3)), ("conv4_3", (512, 512, 3, 3)),
    ("conv5_1", (512, 512, 3, 3)), ("conv5_2", (512, 512, 3, 3)), ("conv5_3", (512, 512, 3, 3)),
    ("fc6", (4096, 25088)), ("fc7", (4096, 4096)), ("fc8", (1000, 4096)),
]
K = 32


def blobs(scale: float, seed: int = 0):
    import synthetic  # noqa: PLC0415  (tools/)

    rng = np.random.default_rng(seed)
    out = []
    for name, shape in VGG16:
        shape = (max(1, int(round(shape[0] * scale))),) + shape[1:]
        out.append((name, synthetic.trained_like(shape, "conv" if len(shape) == 4 else "fc", rng)))
    return out


def sync(xp):
    if xp is not np:
        xp.cuda.Device().synchronize()


def timed(xp, fn, repeat):
    """Median seconds of ``repeat`` runs of ``fn()`` after one warm-up; its last result."""
    res = fn()
    sync(xp)
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = fn()
        sync(xp)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), res


def share_code(xp, dev):
    out = []
    for _, x in dev:
        sw = share_weights(x, k=K, xp=xp)
        s = H.encode(sw.labels.reshape(-1), nsym=sw.k, xp=xp) if sw.k > 1 else None
        out.append((sw, s))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="gpu")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    xp = get_xp(args.backend)
    host = blobs(args.scale)
    n = sum(x.size for _, x in host)
    dev = [(name, xp.asarray(x)) for name, x in host]
    sync(xp)
    desc = "cpu"
    if xp is not np:
        p = xp.cuda.runtime.getDeviceProperties(0)
        desc = p["name"].decode() if isinstance(p["name"], bytes) else str(p["name"])
    print(f"{len(host)} VGG-16 weight blobs, {n:,} weights ({4 * n / 1e6:.0f} MB), backend {args.backend} ({desc})")

    rows = {"backend": args.backend, "device": desc, "weights": int(n)}
    t, res = timed(xp, lambda: share_code(xp, dev), args.repeat)
    rows["share_code_s"] = t
    print(f"share+code (k={K}): {t:.3f} s  ({n / t / 1e6:.0f} M weights/s; target < 0.5 s on an H100-class GPU)")

    t, _ = timed(xp, lambda: [encode_blob(x, bits=5, prune=0.5, xp=xp) for _, x in dev], args.repeat)
    rows["engine_s"] = t
    print(f"engine encode_blob(bits=5, prune=0.5): {t:.3f} s")

    streams = [s for _, s in res if s is not None]
    nsym = sum(s.n for s in streams)
    t, dec = timed(xp, lambda: [H.decode(s, xp=xp) for s in streams], args.repeat)
    rows["decode_s"], rows["decode_symbols"] = t, int(nsym)
    print(f"decode: {nsym:,} symbols in {t:.4f} s = {nsym / t / 1e9:.2f} GB/s of symbols (target >= 10 GB/s)")
    big = max(streams, key=lambda s: s.n)
    t1, _ = timed(xp, lambda: H.decode(big, xp=xp), args.repeat)
    rows["decode_largest_gbps"] = big.n / t1 / 1e9
    print(f"decode, largest stream alone ({big.n:,} symbols): {big.n / t1 / 1e9:.2f} GB/s")

    # identity against the host (skipped when this run is the host)
    same = True
    if xp is not np:
        ref = share_code(np, host)
        for (name, _), (sw, s), (rw, rs) in zip(host, res, ref):
            ok = (sw.codebook.tobytes() == rw.codebook.tobytes()
                  and to_host(sw.labels).tobytes() == rw.labels.tobytes()
                  and (s is None) == (rs is None)
                  and (s is None or (s.payload.tobytes() == rs.payload.tobytes()
                                     and s.offsets.tobytes() == rs.offsets.tobytes()
                                     and s.lengths.tobytes() == rs.lengths.tobytes())))
            same &= ok
            if not ok:
                print(f"identity: {name} DIFFERS from the host")
        for (name, _), d, s in zip([h for h, (_, st) in zip(host, res) if st is not None], dec, streams):
            if to_host(d).tobytes() != H.decode(s).tobytes():
                same = False
                print(f"identity: decoded {name} DIFFERS from the host decoder")
        print(f"identity with the host: {'all blobs equal' if same else 'DIFFERENCES (above)'}")
    rows["identical"] = bool(same)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
