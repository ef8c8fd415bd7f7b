"""Shared fixtures: where the zoo lives, GPU skipping."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

# No per-example deadline: the first example that reaches a numba kernel
# pays its compile (or cache load) time, and the machines are shared.
settings.register_profile("caffecompress", deadline=None)
settings.load_profile("caffecompress")

from zoofiles import ROOT, ZOO, zoo_manifest  # noqa: E402,F401  (re-exported to tests)


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
