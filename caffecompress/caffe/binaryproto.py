"""Read ``.binaryproto`` mean files (a serialized ``BlobProto``)."""

from __future__ import annotations

import mmap
import os

import numpy as np

from ..errors import FormatError
from .reader import MAX_BLOB_AXES, _Fetcher, _open_source, _raise_wire, decode_blob, scan_blob
from .wire import WireError

__all__ = ["read_binaryproto"]


def read_binaryproto(path) -> np.ndarray:
    """Read a ``.binaryproto`` (e.g. ``mean.binaryproto``) as a float32 array.

    The shape is the blob's own, as ``caffe.io.blobproto_to_array`` gives it:
    legacy ``(num, channels, height, width)`` when those are set, else ``shape``.
    ``double_data`` and fp16 ``raw_data`` are decoded like weights.

    Raises
    ------
    FormatError, TruncatedFileError
        Empty, truncated or not a BlobProto (message names the file).
    """
    fd, size, mm = _open_source(path)
    p = os.fspath(path)
    try:
        if size == 0:
            raise FormatError("empty file, not a binaryproto", path=p)
        try:
            bs = scan_blob(mm, 0, size)
        except WireError as e:
            _raise_wire(e, mm, size, p, None)
        if not (bs.f4 or bs.f8 or bs.raw):
            raise FormatError("no blob values: not a binaryproto mean file", path=p)
        shape = bs.claimed_shape()
        if bs.dims is None and not bs.legacy:
            shape = (sum(c for _, c, _ in (bs.f8 or bs.f4)),) if (bs.f8 or bs.f4) else shape
        if len(shape) > MAX_BLOB_AXES or any(d < 0 for d in shape):
            raise FormatError(f"invalid blob shape {shape}", path=p)
        return decode_blob(_Fetcher(mm, fd), bs, shape, p, None, 0)
    finally:
        if isinstance(mm, mmap.mmap):
            try:
                mm.close()
            except BufferError:
                pass
        os.close(fd)
