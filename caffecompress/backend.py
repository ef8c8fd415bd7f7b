"""Array-module selection: the only module that imports cupy (lazily).

``cpu`` is NumPy; ``gpu`` is CuPy on a CUDA device; ``auto`` is ``gpu`` when
one is usable, else ``cpu``. ``hybrid`` (GPU clustering overlapped with CPU
coding) is a pipeline mode and resolves to the GPU module here.
"""

from __future__ import annotations

import functools
import types

import numpy as np

from .errors import BackendUnavailableError

__all__ = ["BACKENDS", "get_xp", "gpu_available", "to_host", "is_gpu"]

BACKENDS = ("cpu", "gpu", "hybrid", "auto")


@functools.cache
def _cupy():
    """Import cupy and check a device exists; raise BackendUnavailableError why not."""
    try:
        import cupy  # noqa: PLC0415  (the one place cupy is imported)
    except Exception as exc:  # ImportError, or a broken CUDA install
        raise BackendUnavailableError(
            f"the GPU backend needs cupy (pip install 'caffecompress[gpu]'): {exc}"
        ) from exc
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        raise BackendUnavailableError(f"cupy is installed but CUDA is not usable: {exc}") from exc
    if n < 1:
        raise BackendUnavailableError("cupy is installed but no CUDA device was found")
    return cupy


def gpu_available() -> bool:
    """True when cupy imports and at least one CUDA device is visible."""
    try:
        _cupy()
    except BackendUnavailableError:
        return False
    return True


def get_xp(backend: str = "cpu") -> types.ModuleType:
    """Return the array module for ``backend`` (``cpu | gpu | hybrid | auto``).

    Raises
    ------
    BackendUnavailableError
        ``gpu``/``hybrid`` was asked for and no usable device exists.
    ValueError
        Unknown backend name.
    """
    if backend == "cpu":
        return np
    if backend in ("gpu", "hybrid"):
        return _cupy()
    if backend == "auto":
        return _cupy() if gpu_available() else np
    raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def is_gpu(xp) -> bool:
    """True when ``xp`` is not NumPy."""
    return xp is not np


def to_host(a) -> np.ndarray:
    """Copy a device array to a NumPy array (no-op for NumPy input)."""
    if isinstance(a, np.ndarray):
        return a
    get = getattr(a, "get", None)
    return get() if get is not None else np.asarray(a)
