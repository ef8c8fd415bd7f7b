"""Keep freed memory in the process heap while a fidelity pass runs (glibc).

Why: the fidelity-targeted pass loads the net into OpenCV tens of times
(the reference, one suffix net a probe, the joint measurements) and makes
candidates of large blobs piece by piece. glibc serves every allocation over
its mmap threshold (dynamic, at most 32 MiB) with fresh pages from the
kernel and hands them back on ``free``, so each load of a VGG-16-sized net
page-faults its ~1.5 GB of buffers anew: 0.9-1.7 s a load, against 0.3 s
with the freed memory kept in the heap. Over the VGG-16-sized default that
is 94 -> 66 s, at a 6 % higher peak (``benchmarks/README.md``).

:func:`kept_heap` raises the mmap and trim thresholds (``mallopt``) for
the duration of the outermost ``with`` (threads share one count) and then
sets them to the dynamic rule's ceilings (mmap 32 MiB, trim 64 MiB: glibc
has no way back to the dynamic rule once they are set) and returns the
freed memory to the kernel (``malloc_trim``). Elsewhere than glibc it does
nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import threading
from contextlib import contextmanager

__all__ = ["kept_heap", "available"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP = 2**31 - 1  # mallopt takes an int: blobs up to 2 GiB come from the heap
_AFTER = {_M_MMAP_THRESHOLD: 32 << 20, _M_TRIM_THRESHOLD: 64 << 20}

_lock = threading.Lock()
_depth = 0
_libc = None


def _glibc():
    global _libc
    if _libc is None:
        _libc = False
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            try:
                lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                lib.mallopt.argtypes, lib.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
                lib.malloc_trim.argtypes, lib.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
                _libc = lib
            except (OSError, AttributeError):
                pass
    return _libc or None


def available() -> bool:
    """True where :func:`kept_heap` changes anything (glibc's ``mallopt``)."""
    return _glibc() is not None


@contextmanager
def kept_heap():
    """Keep freed memory in the heap inside the ``with`` (glibc; else a no-op)."""
    global _depth
    lib = _glibc()
    if lib is None:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            lib.mallopt(_M_MMAP_THRESHOLD, _KEEP)
            lib.mallopt(_M_TRIM_THRESHOLD, _KEEP)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for k, v in _AFTER.items():
                    lib.mallopt(k, v)
                lib.malloc_trim(0)
