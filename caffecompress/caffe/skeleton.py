"""What a model skeleton says about its blobs, read from the wire alone.

A skeleton (:attr:`caffecompress.model.Model.skeleton`) is a V2 NetParameter
whose blobs keep their shape fields but no values. The container checks a
compressed file's index against it before decoding anything: which layer
records hold blobs, how many, and how many values each claims.
"""

from __future__ import annotations

from . import wire
from .wire import LEN, VARINT

__all__ = ["skeleton_blobs"]

_LAYER, _NAME, _BLOBS = 100, 1, 7  # NetParameter.layer, LayerParameter.name/blobs
_LEGACY = (1, 2, 3, 4)  # BlobProto num, channels, height, width
_SHAPE = 7  # BlobProto.shape; BlobShape.dim is field 1


def _dims(buf, a, b) -> list:
    dims = []
    for f in wire.iter_fields(buf, a, b):
        if f.number != 1:
            continue
        if f.wtype == VARINT:
            dims.append(f.a)
        elif f.wtype == LEN:
            p = f.a
            while p < f.b:
                v, p = wire.read_varint(buf, p, f.b)
                dims.append(v)
    return dims


def _claim(buf, a, b):
    """What a blob placeholder says of its shape: ``("shape", dims)`` from its
    ``shape`` field, ``("legacy", (num, channels, height, width))``, or None."""
    legacy: dict = {}
    shape = None
    for f in wire.iter_fields(buf, a, b):
        if f.number == _SHAPE and f.wtype == LEN:
            shape = _dims(buf, f.a, f.b)
        elif f.number in _LEGACY and f.wtype == VARINT:
            legacy[f.number] = f.a
    if shape is not None:
        return ("shape", tuple(shape))
    if len(legacy) == 4:
        return ("legacy", tuple(legacy[k] for k in _LEGACY))
    return None


def skeleton_blobs(skeleton: bytes) -> list:
    """``[(layer name, [claim per blob]), ...]`` for each layer record.

    A claim is ``("shape", dims)``, ``("legacy", (num, channels, height,
    width))`` or None (a placeholder without shape fields).

    Raises
    ------
    caffecompress.caffe.wire.WireError
        The skeleton is not valid wire data.
    """
    out = []
    buf = bytes(skeleton)
    for rec in wire.iter_fields(buf, 0, len(buf)):
        if rec.number != _LAYER or rec.wtype != LEN:
            continue
        name, counts = "", []
        for f in wire.iter_fields(buf, rec.a, rec.b):
            if f.number == _NAME and f.wtype == LEN and not name:  # the first, as the writer pairs
                name = buf[f.a : f.b].decode("utf-8", errors="replace")
            elif f.number == _BLOBS and f.wtype == LEN:
                counts.append(_claim(buf, f.a, f.b))
        out.append((name, counts))
    return out
