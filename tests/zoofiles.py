"""Where the Caffe zoo lives and what its MANIFEST lists (one place for the
conftest and the Caffe test helpers)."""

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
