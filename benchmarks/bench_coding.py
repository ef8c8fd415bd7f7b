"""Entropy coding of weight-sharing labels: our Huffman coder vs general-purpose peers.

Corpus: the labels of real conv/fc weight blobs (every trained zoo model) and
of a synthetic trained-like VGG-16 (tools/synthetic.py; fc6's 103M weights
only with --fc6), clustered by ``share_weights(k, init="linear")`` for
k = 16, 32, 256. Each codec codes every blob's label stream on its own (one
byte per label as input for the byte-oriented peers), on one CPU core.

Reported per k and corpus, side by side:

* bytes including every table and offset (ours: code lengths + payload +
  uint32 chunk offsets + two ints per stream; dahuffman: payload only, its
  table is not counted), bits/symbol, ratio to ours;
* the order-0 entropy (no side data: a floor, not a code) and the per-blob
  optimum of unrestricted Huffman codes (payload only);
* encode / decode throughput in MB/s of symbols (1 byte = 1 symbol), median
  of ``--repeat`` passes over the whole corpus (per-blob fixed costs
  included), and the median rate over blobs of >= 64K labels.

First, the sparse-position methods (engine/sparse.py) on the same zoo blobs
pruned by magnitude at 50-90 %: entropy-coded gaps, Huffman-coded bitmask,
Deep Compression's fixed 4-bit gaps, and what ``method="auto"`` stores.

Targets (issue 3): within 1 % of the per-blob Huffman optimum including side
data; >= 50 MB/s encode and decode on one core.

Usage::

    .venv/bin/python benchmarks/bench_coding.py [--repeat 3] [--fc6] [--json out.json]
"""

from __future__ import annotations

import argparse
import heapq
import json
import lzma
import os
import sys
import time
import zlib
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core, as the targets are stated
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from caffecompress.engine import huffman as H  # noqa: E402
from caffecompress.engine.kmeans import share_weights  # noqa: E402

ZOO = Path(os.environ.get("CAFFE_ZOO", ROOT.parent / "shared" / "caffe-zoo"))
WEIGHT_TYPES = {"Convolution", "Deconvolution", "InnerProduct", "ConvolutionDepthwise", "DepthwiseConvolution"}
DAHUFFMAN_CAP = 1 << 20
# The shared 2-core machine is noisy: rates use this process's CPU time (one
# thread), which other processes do not inflate; --wall switches to wall time.
CLOCK = time.process_time  # dahuffman runs at ~1-3 MB/s: time it on the first 1M labels of a blob


def zoo_blobs():
    """(name, weight array) of every conv/fc weight blob of the trained zoo models."""
    from caffecompress.caffe import read_caffemodel

    out = []
    for f in sorted(ZOO.glob("*/*.caffemodel")):
        model = read_caffemodel(f)
        for lay, i, b in model.blobs():
            typ = lay.type or ""
            if i == 0 and b.ndim >= 2 and (typ in WEIGHT_TYPES or not typ) and b.size >= 64:
                out.append((f"{f.parent.name}/{f.stem}:{lay.name}", b))
    return out


def vgg_blobs(fc6: bool):
    """Trained-like VGG-16 conv/fc weights (fc6 optional: 103M values)."""
    import synthetic as syn

    name, specs = syn.infer_blob_shapes(ZOO / syn.VGG16_PROTOTXT)
    rng = np.random.default_rng(0)
    stats = syn.load_stats()
    out = []
    for lname, typ, shapes in specs:
        if not shapes or typ not in ("Convolution", "InnerProduct"):
            continue
        if lname == "fc6" and not fc6:
            continue
        kind = "conv" if typ == "Convolution" else "fc"
        out.append((f"vgg16:{lname}", syn.trained_like(shapes[0], kind, rng, stats=stats)))
    return out


def huffman_optimum_bits(counts) -> int:
    """Payload bits of an unrestricted Huffman code for these counts (heap)."""
    w = [int(c) for c in counts if c > 0]
    if len(w) == 1:
        return w[0]
    heapq.heapify(w)
    tot = 0
    while len(w) > 1:
        a, b = heapq.heappop(w), heapq.heappop(w)
        tot += a + b
        heapq.heappush(w, a + b)
    return tot


def entropy_bits(counts) -> float:
    c = counts[counts > 0].astype(np.float64)
    n = c.sum()
    return float(-(c * np.log2(c / n)).sum())


def _ours(engine):
    def enc(x, nsym):
        s = H.encode(x, nsym=nsym, engine=engine)
        meta, parts = H.stream_parts(s)
        return (meta, parts), sum(p.nbytes for p in parts.values()) + 8 * len(meta)

    def dec(blob, x, nsym):
        meta, parts = blob
        return H.decode(H.stream_from_parts(meta, parts), engine=engine)

    return enc, dec


def _bytes_codec(compress, decompress):
    def enc(x, nsym):
        c = compress(x.astype(np.uint8).tobytes() if nsym <= 256 else x.astype("<u2").tobytes())
        return c, len(c)

    def dec(c, x, nsym):
        return np.frombuffer(decompress(c), np.uint8 if nsym <= 256 else "<u2")

    return enc, dec


def codecs():
    import zstandard as zstd

    out = {
        "ours (numba)": _ours("compiled") if H.have_compiled() else None,
        "ours (numpy)": _ours("numpy"),
        "zlib-9": _bytes_codec(lambda b: zlib.compress(b, 9), zlib.decompress),
        "zstd-3": _bytes_codec(zstd.ZstdCompressor(level=3).compress, zstd.ZstdDecompressor().decompress),
        "zstd-19": _bytes_codec(zstd.ZstdCompressor(level=19).compress, zstd.ZstdDecompressor().decompress),
        "lzma-6": _bytes_codec(lambda b: lzma.compress(b, preset=6), lzma.decompress),
    }
    return {k: v for k, v in out.items() if v is not None}


def dahuffman_rate(streams):
    """dahuffman encode/decode MB/s on the first DAHUFFMAN_CAP labels of each stream, and its payload bytes."""
    try:
        from dahuffman import HuffmanCodec
    except ImportError:
        return None
    te = td = 0.0
    nsym = 0
    payload = 0
    for x, _ in streams:
        xs = x[:DAHUFFMAN_CAP].tolist()
        t0 = CLOCK()
        codec = HuffmanCodec.from_data(xs)
        data = codec.encode(xs)
        t1 = CLOCK()
        back = codec.decode(data)
        t2 = CLOCK()
        assert back == xs
        te += t1 - t0
        td += t2 - t1
        nsym += len(xs)
        payload += len(data)
    return {"enc_MBps": nsym / te / 1e6, "dec_MBps": nsym / td / 1e6, "symbols_timed": nsym, "payload_bytes": payload}


def run_corpus(label, blobs, ks, repeat):
    results = {}
    for k in ks:
        t0 = time.perf_counter()
        streams = []
        for _, w in blobs:
            sw = share_weights(w, k=k, init="linear")
            streams.append((np.ascontiguousarray(sw.labels).reshape(-1), int(sw.codebook.size)))
        tclust = time.perf_counter() - t0
        nsyms = sum(x.size for x, _ in streams)
        counts = [np.bincount(x, minlength=n) for x, n in streams]
        H0 = sum(entropy_bits(c) for c in counts) / 8
        HUF = sum((huffman_optimum_bits(c) + 7) // 8 for c in counts)
        row = {"blobs": len(streams), "symbols": nsyms, "clustering_s": tclust,
               "entropy_bytes": H0, "huffman_optimum_bytes": HUF, "codecs": {}}
        for name, (enc, dec) in codecs().items():
            enc_t, dec_t, per_blob_e, per_blob_d = [], [], [], []
            size = 0
            for rep in range(repeat):
                te = td = 0.0
                size = 0
                for x, n in streams:
                    a = CLOCK()
                    c, nb = enc(x, n)
                    b = CLOCK()
                    y = dec(c, x, n)
                    d = CLOCK()
                    if rep == 0:
                        assert np.array_equal(np.asarray(y), x), name
                        if x.size >= 1 << 16:
                            per_blob_e.append(x.size / (b - a) / 1e6)
                            per_blob_d.append(x.size / (d - b) / 1e6)
                    te += b - a
                    td += d - b
                    size += nb
                enc_t.append(te)
                dec_t.append(td)
            row["codecs"][name] = {
                "bytes": size,
                "bits_per_symbol": 8 * size / nsyms,
                "enc_MBps": nsyms / float(np.median(enc_t)) / 1e6,
                "dec_MBps": nsyms / float(np.median(dec_t)) / 1e6,
                "enc_MBps_blob_median": float(np.median(per_blob_e)) if per_blob_e else None,
                "dec_MBps_blob_median": float(np.median(per_blob_d)) if per_blob_d else None,
            }
        dh = dahuffman_rate(streams)
        if dh:
            row["codecs"]["dahuffman"] = {"bytes": None, "bits_per_symbol": None, "enc_MBps": dh["enc_MBps"],
                                          "dec_MBps": dh["dec_MBps"], "note": f"timed on {dh['symbols_timed']} labels; payload only"}
            row["dahuffman_payload_bits_per_symbol"] = 8 * dh["payload_bytes"] / dh["symbols_timed"]
        results[k] = row
        _print(label, k, row)
    return results


def _print(label, k, row):
    ours = row["codecs"].get("ours (numba)", row["codecs"]["ours (numpy)"])
    print(f"\n== {label}, k={k}: {row['blobs']} blobs, {row['symbols']:,} labels "
          f"(clustering {row['clustering_s']:.1f} s)")
    print(f"   order-0 entropy {row['entropy_bytes']:,.0f} B ({8 * row['entropy_bytes'] / row['symbols']:.4f} b/sym); "
          f"per-blob Huffman optimum {row['huffman_optimum_bytes']:,} B "
          f"({8 * row['huffman_optimum_bytes'] / row['symbols']:.4f} b/sym)")
    print(f"   ours / Huffman optimum = {ours['bytes'] / row['huffman_optimum_bytes']:.4f} (incl. all tables+offsets); "
          f"ours / entropy = {ours['bytes'] / row['entropy_bytes']:.4f}")
    print(f"   {'codec':14s} {'bytes':>12s} {'b/sym':>7s} {'x ours':>7s} {'enc MB/s':>9s} {'dec MB/s':>9s} {'enc/blob':>9s} {'dec/blob':>9s}")
    for name, c in row["codecs"].items():
        if c["bytes"] is None:
            print(f"   {name:14s} {'-':>12s} {row.get('dahuffman_payload_bits_per_symbol', 0):7.3f} {'-':>7s} "
                  f"{c['enc_MBps']:9.2f} {c['dec_MBps']:9.2f}   ({c['note']})")
            continue
        eb = c["enc_MBps_blob_median"]
        db = c["dec_MBps_blob_median"]
        print(f"   {name:14s} {c['bytes']:12,d} {c['bits_per_symbol']:7.3f} {c['bytes'] / ours['bytes']:7.3f} "
              f"{c['enc_MBps']:9.1f} {c['dec_MBps']:9.1f} {eb if eb else float('nan'):9.1f} {db if db else float('nan'):9.1f}")


def run_sparse(blobs, sparsities=(0.5, 0.7, 0.8, 0.9)):
    """Sparse-position methods on the zoo blobs pruned by magnitude: bytes and bits per weight."""
    from caffecompress.engine import sparse as S
    from caffecompress.engine.prune import prune_mask

    out = {}
    print("\n== sparse positions of magnitude-pruned zoo conv/fc weights (bytes, all blobs summed)")
    print(f"   {'sparsity':>8s} {'weights':>10s} {'gaps (auto b)':>14s} {'bitmask+H':>10s} {'DC 4-bit':>10s} "
          f"{'auto':>10s} {'b/weight':>9s} {'b/kept':>7s} {'H(mask)':>8s}  b chosen (1..8)")
    for sp in sparsities:
        tot = {"gaps": 0, "bitmask": 0, "gap4": 0, "auto": 0}
        n = kept = 0
        hbits = 0.0
        bs = np.zeros(9, int)
        t_enc = t_dec = 0.0
        for _, w in blobs:
            m = prune_mask(w, sparsity=sp).reshape(-1)
            sizes = S.candidate_sizes(m)
            tot["gaps"] += sizes["gaps"][0]
            bs[sizes["gaps"][1]] += 1
            tot["bitmask"] += sizes["bitmask"]
            tot["gap4"] += sizes["gap4"]
            a = CLOCK()
            enc = S.encode_positions(m)
            b = CLOCK()
            back = S.decode_positions(enc, m.size)
            c = CLOCK()
            assert np.array_equal(back, m)
            t_enc += b - a
            t_dec += c - b
            tot["auto"] += sum(p.nbytes for p in enc.parts.values())
            n += m.size
            kept += int(m.sum())
            p = m.mean()
            if 0 < p < 1:
                hbits += m.size * float(-(p * np.log2(p) + (1 - p) * np.log2(1 - p)))
        out[sp] = {**tot, "weights": n, "kept": kept, "binary_entropy_bytes": hbits / 8,
                   "enc_MBps": n / t_enc / 1e6, "dec_MBps": n / t_dec / 1e6, "gap_bits_hist": bs.tolist()}
        print(f"   {sp:8.2f} {n:10,d} {tot['gaps']:14,d} {tot['bitmask']:10,d} {tot['gap4']:10,d} {tot['auto']:10,d} "
              f"{8 * tot['auto'] / n:9.3f} {8 * tot['auto'] / max(kept, 1):7.3f} {8 * hbits / 8 / n:8.3f}  {bs[1:].tolist()}")
    print("   (H(mask): i.i.d. binary entropy of the keep-mask per weight, a reference, not a bound)")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ks", default="16,32,256")
    ap.add_argument("--fc6", action="store_true", help="include VGG-16 fc6 (103M weights; slow)")
    ap.add_argument("--no-vgg", action="store_true")
    ap.add_argument("--json", help="write all figures here")
    ap.add_argument("--wall", action="store_true", help="rates from wall-clock time instead of CPU time")
    args = ap.parse_args(argv)
    global CLOCK
    if args.wall:
        CLOCK = time.perf_counter
    ks = [int(k) for k in args.ks.split(",")]
    print(f"numpy {np.__version__}; compiled coder: {'numba' if H.have_compiled() else 'absent'}; one thread; "
          f"rates from {'wall' if args.wall else 'process CPU'} time")
    zb = zoo_blobs()
    out = {"sparse": run_sparse(zb)}
    out["zoo"] = run_corpus("zoo conv/fc weights", zb, ks, args.repeat)
    if not args.no_vgg:
        out["vgg16"] = run_corpus("synthetic VGG-16 conv/fc" + ("" if args.fc6 else " (without fc6)"),
                                  vgg_blobs(args.fc6), ks, args.repeat)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
