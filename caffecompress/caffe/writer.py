"""Write a :class:`~caffecompress.model.Model` as a dense V2 binary ``.caffemodel``.

Every blob's values are written the way BVLC Caffe's float build writes
them (``Blob::ToProto``): packed float32 ``data`` (field 5); so BVLC Caffe,
pycaffe and OpenCV 4.x all load the file. Its shape fields are the ones the
source stored, taken from the skeleton's blob placeholder (legacy
``num/channels/height/width`` stay legacy, ``shape`` stays ``shape``), with
every other field the placeholder kept, in place; the values go where Caffe
writes them (field-number order). A blob without a placeholder, or whose
array no longer matches the stored dims, gets ``data`` then a fresh ``shape``.
With ``keep_fp16=True`` blobs that were stored as fp16 ``raw_data`` in the
source (``Layer.storage``) are written that way again (OpenCV/NVCaffe only).

Everything else comes from ``model.skeleton`` (the source NetParameter with
blob values removed), copied at the wire level in its own field order: the
blob placeholders of each layer record are replaced by the encoded arrays at
the same position. A canonical V2 source (fields ascending) is thus
rewritten byte for byte. Without a skeleton, minimal LayerParameter records
are synthesized from each layer's name, type, ``param_names`` and blobs.

No protobuf is needed here; payloads are streamed from the arrays' memory
(no ``tobytes`` copy of a whole blob).
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import FormatError, OutputExistsError
from ..fileio import atomic_write as _atomic_write
from ..model import Layer, Model
from . import wire
from .wire import LEN

__all__ = ["write_caffemodel", "caffemodel_bytes", "caffemodel_chunks", "encode_blob", "MAX_CAFFEMODEL_BYTES"]

# Caffe and OpenCV read at most INT_MAX bytes (kProtoReadBytesLimit).
MAX_CAFFEMODEL_BYTES = (1 << 31) - 1

_LAYER = 100  # NetParameter.layer
_BLOBS = 7  # LayerParameter.blobs


def _payload(arr: np.ndarray, dtype: str) -> memoryview:
    a = np.ascontiguousarray(arr, dtype=dtype)  # no copy when already contiguous <f4
    return memoryview(a.reshape(-1)).cast("B")


def encode_blob(arr, *, fp16: bool = False) -> list:
    """Encode one array as a BlobProto; return its chunks (bytes / memoryviews).

    Dense: packed float32 ``data`` (omitted when empty) then ``shape`` (omitted
    for a 0-d array, as Caffe writes a 0-axis blob). ``fp16=True``: ``shape``,
    ``raw_data_type = FLOAT16``, ``raw_data`` (OpenCV's shrinkCaffeModel layout).
    """
    arr = np.asarray(arr)
    if arr.dtype.kind != "f" and arr.dtype.kind not in "iub":
        raise TypeError(f"blob of dtype {arr.dtype} cannot be written as float")
    shape = _shape_field(arr) if arr.ndim else b""
    if fp16:
        data = _payload(arr, "<f2")
        return [shape + b"\x50\x02" + wire.encode_len_field(12, len(data)), data]
    if arr.size == 0:
        return [shape]
    data = _payload(arr, "<f4")
    return [wire.encode_len_field(5, len(data)), data, shape]


def _shape_field(arr) -> bytes:
    """A BlobProto ``shape`` field (packed dims) for ``arr``'s shape."""
    dims = b"".join(wire.encode_varint(int(d)) for d in arr.shape)
    inner = wire.encode_len_field(1, len(dims)) + dims
    return wire.encode_len_field(7, len(inner)) + inner


def _size(chunks) -> int:
    return sum(len(c) if isinstance(c, bytes) else c.nbytes for c in chunks)


_LEGACY = (1, 2, 3, 4)  # BlobProto num, channels, height, width
_DATA, _SHAPE, _RAW_TYPE = 5, 7, 10


def _squeezed(dims) -> tuple:
    dims = tuple(int(d) for d in dims)
    k = 0
    while k < len(dims) and dims[k] == 1:
        k += 1
    return dims[k:]


def _stored_dims(skel, fields):
    """The shape a placeholder's stored fields claim (legacy dims first, as Caffe), or None."""
    legacy = {f.number: f.a for f in fields if f.number in _LEGACY and f.wtype == wire.VARINT}
    if legacy:
        return tuple(legacy.get(k, 0) for k in _LEGACY)
    dims, seen = [], False
    for f in fields:
        if f.number == _SHAPE and f.wtype == LEN:
            seen = True
            for g in wire.iter_fields(skel, f.a, f.b):
                if g.number == 1 and g.wtype == wire.VARINT:
                    dims.append(g.a)
                elif g.number == 1 and g.wtype == LEN:
                    p = g.a
                    while p < g.b:
                        v, p = wire.read_varint(skel, p, g.b)
                        dims.append(v)
    return tuple(dims) if seen else None


def _insert_pairs(kept, number: int, pairs) -> list:
    """Put ``pairs`` before the first kept ``(number, bytes)`` numbered above ``number``
    (Caffe writes known fields in number order, unknown ones last)."""
    at = next((k for k, (n, _) in enumerate(kept) if n > number), len(kept))
    return kept[:at] + list(pairs) + kept[at:]


def _insert(kept, number: int, chunks) -> list:
    """:func:`_insert_pairs` for value chunks; returns the chunks alone."""
    return [c for _, c in _insert_pairs(kept, number, [(number, c) for c in chunks])]


def _from_placeholder(skel, ph, arr, fp16: bool) -> list:
    """A BlobProto from its skeleton placeholder: the stored shape fields and every
    other kept field as they were, the values inserted where Caffe writes them.

    The stored shape fields are kept when they describe ``arr`` (the same
    dims once leading 1s are dropped, which is how the reader squeezed legacy
    4-D dims); otherwise they give way to a fresh ``shape``.
    """
    fields = list(wire.iter_fields(skel, ph.a, ph.b))
    arr = np.asarray(arr)
    stored = _stored_dims(skel, fields)
    keep_shape = stored is not None and _squeezed(stored) == _squeezed(arr.shape)
    if stored is None and arr.ndim == 0:
        keep_shape = True  # a 0-axis blob: Caffe writes no shape either
    kept = [(f.number, bytes(skel[f.tag:f.b])) for f in fields
            if keep_shape or f.number not in _LEGACY + (_SHAPE,)]
    if not keep_shape and arr.ndim:
        kept = _insert_pairs(kept, _SHAPE, [(_SHAPE, _shape_field(arr))])
    if fp16:
        data = _payload(arr, "<f2")
        return _insert(kept, _RAW_TYPE, [b"\x50\x02", wire.encode_len_field(12, len(data)), data])
    if arr.size == 0:
        return [c for _, c in kept]
    data = _payload(arr, "<f4")
    return _insert(kept, _DATA, [wire.encode_len_field(_DATA, len(data)), data])


def _blob_records(layer: Layer, keep_fp16: bool, skel=None, placeholders=()) -> list:
    out = []
    storage = list(layer.storage) + ["float32"] * len(layer.blobs)
    for i, arr in enumerate(layer.blobs):
        fp16 = keep_fp16 and storage[i] == "float16"
        if i < len(placeholders):
            body = _from_placeholder(skel, placeholders[i], arr, fp16)
        else:
            body = encode_blob(arr, fp16=fp16)
        out.append(wire.encode_len_field(_BLOBS, _size(body)))
        out.extend(body)
    return out


def _synth_layer(layer: Layer, keep_fp16: bool) -> list:
    head = []
    name = layer.name.encode()
    head.append(wire.encode_len_field(1, len(name)) + name)
    if layer.type:
        t = layer.type.encode()
        head.append(wire.encode_len_field(2, len(t)) + t)
    if any(layer.param_names):
        for pn in layer.param_names:
            pb_name = pn.encode()
            inner = wire.encode_len_field(1, len(pb_name)) + pb_name if pn else b""
            head.append(wire.encode_len_field(6, len(inner)) + inner)
    return [b"".join(head), *_blob_records(layer, keep_fp16)]


def _skeleton_layer(skel, rec, layer: Layer, keep_fp16: bool) -> list:
    fields = list(wire.iter_fields(skel, rec.a, rec.b))
    # blobs go where the first placeholder was, else in field-number order
    at = next((k for k, f in enumerate(fields) if f.number == _BLOBS), None)
    if at is None:
        at = next((k for k, f in enumerate(fields) if f.number > _BLOBS), len(fields))
    out = [bytes(skel[f.tag : f.b]) for f in fields[:at] if f.number != _BLOBS]
    placeholders = [f for f in fields if f.number == _BLOBS and f.wtype == LEN]
    out += _blob_records(layer, keep_fp16, skel, placeholders)
    out += [bytes(skel[f.tag : f.b]) for f in fields[at:] if f.number != _BLOBS]
    return out


def _record_name(skel, rec) -> str:
    for f in wire.iter_fields(skel, rec.a, rec.b):
        if f.number == 1 and f.wtype == LEN:
            return bytes(skel[f.a : f.b]).decode("utf-8", errors="replace")
    return ""


def _has_placeholders(skel, rec) -> bool:
    return any(f.number == _BLOBS for f in wire.iter_fields(skel, rec.a, rec.b))


def net_chunks(model: Model, keep_fp16: bool = False, path=None) -> list:
    """The whole NetParameter as a list of chunks."""
    out = []
    skel = model.skeleton
    if not skel:
        if model.name:
            n = model.name.encode()
            out.append(wire.encode_len_field(1, len(n)) + n)
        for lay in model.layers:
            body = _synth_layer(lay, keep_fp16)
            out.append(wire.encode_len_field(_LAYER, _size(body)))
            out.extend(body)
        return out
    try:
        top = list(wire.iter_fields(skel, 0, len(skel)))
    except wire.WireError as e:
        raise FormatError(f"model skeleton is corrupt: {e}", path=path) from None
    pending: dict[str, list] = {}
    for lay in model.layers:
        pending.setdefault(lay.name, []).append(lay)
    for f in top:
        if f.number == _LAYER and f.wtype == LEN:
            name = _record_name(skel, f)
            queue = pending.get(name)
            if queue:
                try:
                    body = _skeleton_layer(skel, f, queue.pop(0), keep_fp16)
                except wire.WireError as e:  # a placeholder inside the record is not wire format
                    raise FormatError(f"model skeleton is corrupt: {e}", path=path, layer=name) from None
                out.append(wire.encode_len_field(_LAYER, _size(body)))
                out.extend(body)
                continue
            if _has_placeholders(skel, f):
                raise FormatError("the model has no layer for this skeleton record with blobs", path=path,
                                  layer=name)
        elif f.number == 2 and f.wtype == LEN:  # another wire type is an unknown field, kept as is
            raise FormatError("model skeleton is not V2 (has 'layers' records)", path=path)
        out.append(bytes(skel[f.tag : f.b]))
    left = [n for n, q in pending.items() if q]
    if left:
        raise FormatError(f"layers not in the model skeleton: {left[:5]}", path=path, layer=left[0])
    return out


def caffemodel_chunks(model: Model, *, keep_fp16: bool = False) -> list:
    """The dense V2 ``.caffemodel`` of ``model`` as a list of byte chunks (to write out without a joined copy)."""
    chunks = net_chunks(model, keep_fp16, path=model.source)  # errors name where the model came from
    total = _size(chunks)
    if total > MAX_CAFFEMODEL_BYTES:
        raise FormatError(_too_big(total))
    return chunks


def caffemodel_bytes(model: Model, *, keep_fp16: bool = False) -> bytes:
    """The dense V2 ``.caffemodel`` of ``model`` in memory (e.g. for ``cv2.dnn.readNetFromCaffe``)."""
    return b"".join(caffemodel_chunks(model, keep_fp16=keep_fp16))


def _too_big(total: int) -> str:
    return (
        f"the caffemodel would be {total} bytes; Caffe and OpenCV cannot read a binary "
        f"caffemodel over 2 GiB - 1. Write Caffe's HDF5 format instead "
        f"(write_caffemodel_h5, a .caffemodel.h5 path)"
    )


def _same_file(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def atomic_write(path, chunks) -> None:
    """Write chunks to a temporary file beside ``path``, then rename it into place."""

    def write(tmp):
        with open(tmp, "wb") as f:
            for c in chunks:
                f.write(c)

    _atomic_write(path, write)


def check_output_path(model: Model, path) -> None:
    """Refuse to write onto the model's own source file, or into a directory."""
    p = os.fspath(path)
    if os.path.isdir(p):
        raise FormatError("output path is a directory", path=p)
    if model.source and os.path.exists(p) and _same_file(p, model.source):
        raise OutputExistsError("refusing to overwrite the input file", path=p)


def write_caffemodel(model: Model, path, *, keep_fp16: bool = False) -> None:
    """Write ``model`` as a dense V2 binary ``.caffemodel`` at ``path``.

    A path ending in ``.h5`` writes Caffe's HDF5 weights instead
    (:func:`~caffecompress.caffe.hdf5.write_caffemodel_h5`).

    Parameters
    ----------
    model : Model
        Layers and blobs (any float dtype; written as float32), plus the skeleton.
    path : str or os.PathLike
        Output file. Written to a temporary name in the same folder, then renamed.
    keep_fp16 : bool
        Write blobs whose source storage was fp16 ``raw_data`` as fp16 again
        (OpenCV/NVCaffe only: BVLC Caffe cannot read those).

    Raises
    ------
    FormatError
        The file would exceed 2 GiB - 1 (use ``.caffemodel.h5``), or the model's
        layers disagree with its skeleton.
    OutputExistsError
        ``path`` is the model's own source file.
    """
    p = os.fspath(path)
    if p.endswith(".h5"):
        from .hdf5 import write_caffemodel_h5

        return write_caffemodel_h5(model, p)
    check_output_path(model, p)
    chunks = net_chunks(model, keep_fp16, path=p)
    total = _size(chunks)
    if total > MAX_CAFFEMODEL_BYTES:
        raise FormatError(_too_big(total), path=p)
    atomic_write(p, chunks)
