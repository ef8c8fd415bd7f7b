"""caffecompress: make trained Caffe models far smaller without retraining.

``import caffecompress`` is cheap: protobuf, h5py, cupy and cv2 are imported
only when the function that needs them is first used (PEP 562 ``__getattr__``).
"""

from __future__ import annotations

import importlib

from .errors import *  # noqa: F401,F403  (the error classes are public API)
from .errors import __all__ as _error_names
from .model import Layer, Model

__version__ = "0.1.0"

# public name -> "module:attribute", resolved on first access
_LAZY = {
    "read_caffemodel": "caffecompress.caffe:read_caffemodel",
    "read_prototxt": "caffecompress.caffe:read_prototxt",
    "write_caffemodel": "caffecompress.caffe:write_caffemodel",
    "write_caffemodel_h5": "caffecompress.caffe:write_caffemodel_h5",
    "read_binaryproto": "caffecompress.caffe:read_binaryproto",
    "compress": "caffecompress.pipeline:compress",
    "decompress": "caffecompress.container:decompress",
    "save": "caffecompress.container:save",
    "open_compressed": "caffecompress.container:open_compressed",
    "caffemodel_bytes": "caffecompress.container:caffemodel_bytes",
    "opencv_net": "caffecompress.verify:opencv_net",
    "batch": "caffecompress.batching:batch",
}

__all__ = ["Layer", "Model", "__version__", *_error_names, *_LAZY]


def __getattr__(name: str):
    try:
        target = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'caffecompress' has no attribute {name!r}") from None
    mod, attr = target.split(":")
    value = getattr(importlib.import_module(mod), attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
