"""Caffe I/O: the only package that touches protobuf (and, in :mod:`.hdf5`, h5py).

Public API
----------
read_caffemodel(path, prototxt=None) -> Model
    Binary ``.caffemodel`` (V0, V1, V2; upgraded to V2) or Caffe's
    ``.caffemodel.h5`` (recognised by content, as Caffe does).
read_prototxt(path) -> NetDef
    A net definition (any generation), kept verbatim and upgraded to V2.
write_caffemodel(model, path, *, keep_fp16=False)
    Dense V2 ``.caffemodel`` (``.h5`` suffix: Caffe's HDF5 weights).
caffemodel_bytes(model, *, keep_fp16=False) -> bytes
    The same file in memory (``cv2.dnn.readNetFromCaffe(proto_bytes, model_bytes)``).
write_caffemodel_h5(model, path)
    Caffe's ``.caffemodel.h5`` (``/data/<layer>/<i>``).
read_binaryproto(path) -> numpy.ndarray
    A ``.binaryproto`` mean file (a BlobProto) as a float32 array.
"""

from __future__ import annotations

import os

from ..model import Model
from .writer import caffemodel_bytes, caffemodel_chunks, write_caffemodel

__all__ = [
    "read_caffemodel",
    "read_prototxt",
    "write_caffemodel",
    "caffemodel_bytes",
    "caffemodel_chunks",
    "write_caffemodel_h5",
    "read_caffemodel_h5",
    "read_binaryproto",
]

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _is_hdf5(path) -> bool:
    """HDF5 signature at offset 0, 512, 1024, 2048, ... (a user block), as H5Fis_hdf5 looks."""
    try:
        with open(path, "rb") as f:
            off = 0
            while off <= 1 << 20:
                f.seek(off)
                head = f.read(8)
                if head == _HDF5_MAGIC:
                    return True
                if len(head) < 8:
                    return False
                off = 512 if off == 0 else off * 2
    except OSError:
        return False
    return False


def read_prototxt(path):
    """Read a net definition prototxt (see :func:`caffecompress.caffe.prototxt.read_prototxt`)."""
    from .prototxt import read_prototxt as _read

    return _read(path)


def read_caffemodel(path, prototxt=None) -> Model:
    """Read trained Caffe weights into a :class:`~caffecompress.model.Model`.

    Parameters
    ----------
    path : str or os.PathLike
        A binary ``.caffemodel`` of any generation (V0/V1 are upgraded to V2
        in Caffe's order) or a ``.caffemodel.h5`` (HDF5 is recognised by its
        signature, whatever the extension).
    prototxt : str or os.PathLike, optional
        The deploy net. Weights are paired with its layers by name, as Caffe
        does; layer types then come from the prototxt and ``Model.prototxt``
        holds its text verbatim. Weight layers the prototxt lacks are kept and
        listed in ``Model.unmatched``.

    Returns
    -------
    Model
        ``layers`` in file order (all records, including those without blobs);
        every blob a writable float32 array in Caffe's shape and blob order.

    Raises
    ------
    FormatError, TruncatedFileError
        Not a readable Caffe weights file (empty, truncated, text, corrupt,
        a blob claiming more values than it holds, mixed layer/layers, a
        missing or unreadable path); the message names the file and layer.
    SchemaMismatchError
        The prototxt needs a layer the weights lack, or blob counts/shapes differ.
    """
    if _is_hdf5(path):
        from .hdf5 import read_caffemodel_h5

        model = read_caffemodel_h5(path)
    else:
        from .reader import read_caffemodel_binary

        model = read_caffemodel_binary(path)
    if prototxt is not None:
        from .reader import pair_with_prototxt

        netdef = read_prototxt(prototxt)
        model = pair_with_prototxt(model, netdef, os.fspath(path), os.fspath(prototxt))
    for lay in model.layers:
        if any(b is None for b in lay.blobs):
            from ..errors import FormatError

            raise FormatError(
                "a blob is missing (a shared parameter stored only in its owner layer): "
                "pass the prototxt so it can be filled",
                path=os.fspath(path),
                layer=lay.name,
            )
    return model


def write_caffemodel_h5(model: Model, path) -> None:
    """Write Caffe's ``.caffemodel.h5`` (see :func:`caffecompress.caffe.hdf5.write_caffemodel_h5`)."""
    from .hdf5 import write_caffemodel_h5 as _write

    return _write(model, path)


def read_caffemodel_h5(path) -> Model:
    """Read Caffe's ``.caffemodel.h5`` (see :func:`caffecompress.caffe.hdf5.read_caffemodel_h5`)."""
    from .hdf5 import read_caffemodel_h5 as _read

    return _read(path)


def read_binaryproto(path):
    """Read a ``.binaryproto`` mean file (see :func:`caffecompress.caffe.binaryproto.read_binaryproto`)."""
    from .binaryproto import read_binaryproto as _read

    return _read(path)
