"""What rounding the blobs of kind ``other`` (biases, BatchNorm, Scale, PReLU) costs and saves.

For each zoo model: the output error of the model with only those blobs
rounded to ``m`` mantissa bits (every weight blob exact), on the
development images (neither calibration nor held-out), and over all models
the bytes those blobs take as shuffled LZMA of the exact floats, as packed
fields exact, and as packed fields rounded::

    .venv/bin/python benchmarks/dev_other_rounding.py [--bits 8 10 12] [--min-kb 0]
"""

from __future__ import annotations

import argparse
import lzma
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import caffecompress as cc  # noqa: E402
from caffecompress import verify  # noqa: E402
from caffecompress.config import blob_kind  # noqa: E402
from caffecompress.container import caffemodel_bytes  # noqa: E402
from caffecompress.engine import floatpack as F  # noqa: E402
from caffecompress.pipeline import _lzma_filters, _shuffle  # noqa: E402
from common import zoo_pairs  # noqa: E402
from dev_fidelity import DEV_IMAGES  # noqa: E402


def _others(model):
    for lay in model.layers:
        for i, b in enumerate(lay.blobs):
            b = np.asarray(b)
            if b.dtype == np.float32 and blob_kind(lay.type, i, b.shape) == "other":
                yield lay, i, b


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, nargs="+", default=[8, 10, 12])
    ap.add_argument("--min-kb", type=float, default=0.0)
    args = ap.parse_args(argv)
    images = verify.sample_images(DEV_IMAGES)
    sizes = {"lzma exact": 0, "packed exact": 0, **{f"packed {m} bits": 0 for m in args.bits}}
    values = 0
    worst = {m: (0.0, "") for m in args.bits}
    for name, src, proto in zoo_pairs():
        if src.stat().st_size < args.min_kb * 1024:
            continue
        text = proto.read_text()
        row = []
        for m in args.bits:
            model = cc.read_caffemodel(src, prototxt=proto)
            for lay, i, b in list(_others(model)):
                lay.blobs[i] = F.round_mantissa(b, m)
            err = verify.max_rel_error(verify.compare((text, src), (text, caffemodel_bytes(model)), images))
            row.append(err)
            if err > worst[m][0]:
                worst[m] = (err, name)
        for _, _, b in _others(cc.read_caffemodel(src)):
            values += b.size
            raw = _shuffle(b).tobytes()
            sizes["lzma exact"] += len(lzma.compress(raw, format=lzma.FORMAT_RAW, filters=_lzma_filters(len(raw))))
            sizes["packed exact"] += F.pack_nbytes(b)
            for m in args.bits:
                sizes[f"packed {m} bits"] += F.pack_nbytes(F.round_mantissa(b, m))
        print(f"{name:45s} " + "  ".join(f"{m} bits {e:.2e}" for m, e in zip(args.bits, row)), flush=True)
    print(f"{values} values in blobs of kind 'other':")
    for k, v in sizes.items():
        print(f"  {k:16s} {v:8d} B  {8 * v / max(values, 1):5.2f} bits a value")
    for m, (e, n) in worst.items():
        print(f"  {m} bits: worst development error {e:.2e} ({n})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
