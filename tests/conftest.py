"""Shared fixtures: where the zoo lives, GPU skipping."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# No per-example deadline: the first example that reaches a numba kernel
# pays its compile (or cache load) time, and the machines are shared.
settings.register_profile("caffecompress", deadline=None)
settings.load_profile("caffecompress")

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


@pytest.fixture(scope="session")
def zoo() -> Path:
    if not ZOO.is_dir():
        pytest.skip(f"caffe zoo not found at {ZOO}")
    return ZOO


def _gpu_available() -> bool:
    try:
        from caffecompress import backend

        return backend.gpu_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _gpu_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device / cupy")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
