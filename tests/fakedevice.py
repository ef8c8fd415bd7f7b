"""NumPy posing as a device array module, for the engine's device branches on CPU."""

from __future__ import annotations

import numpy as np


class NumpyAsDevice:
    """numpy under another name: code that tests ``xp is not np`` takes
    its device-side branches (larger steps, the gather tables, one-piece
    packing) on plain host arrays, so CPU runs can check that they give the
    host's results. Anything that needs CUDA itself (raw kernels) still
    needs a real device."""

    def __getattr__(self, name):
        return getattr(np, name)
