"""Write the golden format-1.0 files from the project's example model.

Run once per format version (never to "fix" a failing golden test: the
files are what old caffecompress versions wrote, and must be read forever):

    .venv/bin/python tests/golden/make_golden.py

For each preset it writes ``example.<preset>.ccz.h5`` and a ``.json``
manifest with the shape, dtype and SHA-256 of every restored blob, of the
skeleton and of the prototxt.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import caffecompress as cc

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "caffecompress" / "data"
PRESETS = {
    "lossless": {"preset": "lossless"},
    "default": {"preset": "default"},
    "deep-compression": {"preset": "deep-compression"},
    "bits4-prune": {"preset": "default", "bits": 4, "prune": 0.5},
}


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


def main():
    model = cc.read_caffemodel(DATA / "example.caffemodel", prototxt=DATA / "example.prototxt")
    for name, kw in PRESETS.items():
        out = HERE / f"example.{name}.ccz.h5"
        cm = cc.compress(model, **kw)
        cc.save(cm, out, force=True)
        restored = cc.decompress(out)
        info = manifest(restored)
        info["format_version"] = "1.0"
        info["settings"] = kw
        (HERE / f"example.{name}.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        print(out.name, out.stat().st_size)


if __name__ == "__main__":
    main()
