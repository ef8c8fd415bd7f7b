"""Write the golden files from the project's example model, one format version at a time.

Run once per format version (never to "fix" a failing golden test: the
files are what old caffecompress versions wrote, and must be read forever):

    .venv/bin/python tests/golden/make_golden.py --version 1.0   # the 1.0 files (2026)
    .venv/bin/python tests/golden/make_golden.py --version 1.1   # the grid method's files
    .venv/bin/python tests/golden/make_golden.py --version 1.2   # dependent quantisation and rANS (needs numba)
    .venv/bin/python tests/golden/make_golden.py --version 1.3   # packed float fields (fpack)
    .venv/bin/python tests/golden/make_golden.py --version 2.0   # the 2.x layout (index block)
    .venv/bin/python tests/golden/make_golden.py --version 2.1   # packed codebooks (needs OpenCV)
    .venv/bin/python tests/golden/make_golden.py --version 2.2   # running-magnitude rANS contexts (needs OpenCV, numba)
    .venv/bin/python tests/golden/make_golden.py --version 2.3   # codebooks as level gaps (needs OpenCV)

Each version writes only its own presets and refuses to overwrite a file
that exists (``--force`` to regenerate on purpose, which is never right for
a released version). For each preset it writes ``example.<preset>.ccz.h5``
and a ``.json`` manifest with the shape, dtype and SHA-256 of every
restored blob, of the skeleton and of the prototxt, the format version the
file carries and the settings it was written with.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import h5py

import caffecompress as cc

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "caffecompress" / "data"
PRESETS = {
    "lossless": {"preset": "lossless"},
    "default": {"preset": "default"},
    "deep-compression": {"preset": "deep-compression"},
    "bits4-prune": {"preset": "default", "bits": 4, "prune": 0.5},
}
#: Format 1.1: the ``grid`` method: the data-free rule (large alphabets, up to
#: +-2047), one given step (data-free, so the step is the one given: the
#: fidelity allocation picks its own steps) and the fidelity-targeted default
#: (needs OpenCV; its grids beside ``exact`` blobs).
PRESETS_1_1 = {
    "grid": {"preset": "default", "data_free": True},
    "grid-step": {"preset": "default", "data_free": True, "step": 0.01},
    "grid-fidelity": {"preset": "default", "step": 0.01},
}
#: Format 1.2: grid blobs with dependent quantisation (``dq_seg``) and the
#: context-adaptive rANS coder (``coder=rans``), both in magnitude-token mode
#: (``tok``: alphabets over 256) and plain (``rans-step``'s 241-symbol fc
#: blob). Written where numba runs (without it the engine writes 1.1 grids).
PRESETS_1_2 = {
    "dq-rans": {"preset": "default", "data_free": True},
    "rans-step": {"preset": "default", "data_free": True, "step": 0.003},
}
#: Format 1.3: ``lossless`` blobs as packed float32 fields (codec ``fpack``):
#: the data-free rule's biases, rounded to 12 mantissa bits, and the exact
#: small blobs of the lossless preset.
PRESETS_1_3 = {
    "fpack": {"preset": "default", "data_free": True},
    "fpack-lossless": {"preset": "lossless"},
}
#: Format 2.0: the index block (LZMA2 of the prototxt, the skeleton and the
#: compact JSON index): a data-free file (grids, DQ, rANS, packed fields), a
#: lossless one and a pruned fixed-width one (k-means codebooks, sparse positions).
PRESETS_2_0 = {
    "v2-data-free": {"preset": "default", "data_free": True},
    "v2-lossless": {"preset": "lossless"},
    "v2-bits4-prune": {"preset": "default", "bits": 4, "prune": 0.5},
}
#: Format 2.1: codebooks as packed fields: k-means levels as found (a fixed
#: width, data-free) and rounded to bits + 10 mantissa bits (the
#: fidelity-targeted default; needs OpenCV).
PRESETS_2_1 = {
    "v21-bits6": {"preset": "default", "bits": 6, "data_free": True},
    "v21-fidelity": {"preset": "default"},
}
#: Format 2.2: rANS-coded grid labels with the running-magnitude contexts
#: (meta ``ctx = 1``): the fidelity-targeted default's coarse grids (needs
#: OpenCV and numba; on the example model the data-free rule's fine grids
#: keep the older contexts, which learn faster on its small blobs).
PRESETS_2_2 = {
    "v22-fidelity": {"preset": "default"},
}
#: Format 2.3: k-means codebooks as exp-Golomb-coded gaps between the float
#: keys of their rounded levels (meta ``cb_lk``): the fidelity-targeted
#: default, and a fixed width with compensation (needs OpenCV).
PRESETS_2_3 = {
    "v23-fidelity": {"preset": "default"},
    "v23-bits6": {"preset": "default", "bits": 6},
}
VERSIONS = {"1.0": PRESETS, "1.1": PRESETS_1_1, "1.2": PRESETS_1_2, "1.3": PRESETS_1_3, "2.0": PRESETS_2_0,
            "2.1": PRESETS_2_1, "2.2": PRESETS_2_2, "2.3": PRESETS_2_3}


def manifest(model) -> dict:
    blobs = {}
    for lay in model.layers:
        for i, b in enumerate(lay.blobs):
            blobs[f"{lay.name}/{i}"] = [list(b.shape), b.dtype.str, hashlib.sha256(b.tobytes()).hexdigest()]
    return {
        "blobs": blobs,
        "skeleton_sha256": hashlib.sha256(model.skeleton).hexdigest(),
        "prototxt_sha256": None if model.prototxt is None else hashlib.sha256(model.prototxt.encode()).hexdigest(),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--version", choices=sorted(VERSIONS), required=True,
                    help="the format version whose golden files to write")
    ap.add_argument("--force", action="store_true", help="overwrite existing golden files (never for a release)")
    args = ap.parse_args(argv)
    presets = VERSIONS[args.version]
    outs = {name: (HERE / f"example.{name}.ccz.h5", HERE / f"example.{name}.json") for name in presets}
    there = [str(p.name) for pair in outs.values() for p in pair if p.exists()]
    if there and not args.force:
        print(f"refusing to overwrite golden files: {', '.join(there)} (--force)", file=sys.stderr)
        return 1
    model = cc.read_caffemodel(DATA / "example.caffemodel", prototxt=DATA / "example.prototxt")
    for name, kw in presets.items():
        out, man = outs[name]
        cm = cc.compress(model, **kw)
        cc.save(cm, out, force=True, format_major=int(args.version.split(".")[0]))
        with h5py.File(out, "r") as f:
            got = f.attrs["format_version"].decode()
        if got != args.version:
            out.unlink()
            print(f"{out.name}: the settings {kw} wrote format {got}, not {args.version}", file=sys.stderr)
            return 1
        restored = cc.decompress(out)
        info = manifest(restored)
        info["format_version"] = got
        info["settings"] = kw
        man.write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        print(out.name, out.stat().st_size, "format", got, sorted({r.method for r in cm.records}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
