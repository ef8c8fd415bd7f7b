"""Where the Caffe zoo lives and what its MANIFEST lists (one place for the
conftest and the Caffe test helpers), and a noisy copy of a model's layer."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# CI and developers have shared/ beside the checkout; never copy zoo files in.
ZOO = Path(os.environ.get("CAFFE_ZOO", ROOT.parent / "shared" / "caffe-zoo"))


def zoo_manifest() -> list[dict]:
    """Rows of the zoo's MANIFEST.tsv (empty when the zoo is absent)."""
    path = ZOO / "MANIFEST.tsv"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    head = lines[0].split("\t")
    return [dict(zip(head, ln.split("\t"))) for ln in lines[1:] if ln.strip()]


def with_noisy_weights(model, name: str, rng, scale: float = 0.05):
    """``model`` with layer ``name``'s weights plus Gaussian noise of
    ``scale`` times their largest magnitude (its other blobs as they are)."""
    import dataclasses  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    li = next(i for i, lay in enumerate(model.layers) if lay.name == name)
    lay = model.layers[li]
    w = lay.blobs[0]
    noisy = (w + scale * np.abs(w).max() * rng.standard_normal(w.shape)).astype(np.float32)
    layers = list(model.layers)
    layers[li] = dataclasses.replace(lay, blobs=[noisy, *lay.blobs[1:]])
    return dataclasses.replace(model, layers=layers)
