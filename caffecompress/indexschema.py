"""The compressed file's index, validated against its schema before any decoding.

The index (deflated JSON at the end of ``/payload``) is covered by a CRC32,
but a CRC only proves the bytes are the ones written: a crafted file can
carry any JSON with a matching CRC. So every value the reader will use is
checked here first - types, ranges, stream bounds, each blob record against
its codec's meta and its layer, the records against the skeleton's blob
placeholders - and nothing is allocated on the index's word until it passes.
Failures are :class:`~caffecompress.errors.CorruptDataError` naming the file.
"""

from __future__ import annotations

import json
import math
import zlib

import numpy as np

from .errors import CorruptDataError

__all__ = ["check_index", "check_skeleton", "check_layout", "layout_crc", "MAX_ELEMENTS"]

#: What a Caffe blob can be (``Blob::Reshape``: count <= INT_MAX, at most 32 axes).
MAX_ELEMENTS = (1 << 31) - 1
MAX_AXES = 32
MAX_BLOBS_PER_LAYER = 256
_METHODS = ("lossless", "ref", "raw", "exact", "shared", "shared+sparse", "grid")
_LIST_FIELDS = ("param_names", "storage")  # Layer fields the index keeps per layer


class _Bad(Exception):
    """One schema violation (turned into CorruptDataError with the file name)."""


def _int(v, what, lo=0, hi=None) -> int:
    if type(v) is not int:  # noqa: E721  (bool is an int subclass; JSON floats are not ints)
        raise _Bad(f"{what} is {v!r}, not an integer")
    if v < lo or (hi is not None and v > hi):
        raise _Bad(f"{what} = {v} is out of range")
    return v


def _str(v, what) -> str:
    if not isinstance(v, str):
        raise _Bad(f"{what} is {v!r}, not a string")
    return v


def _dict(v, what) -> dict:
    if not isinstance(v, dict):
        raise _Bad(f"{what} is not an object")
    return v


def _list(v, what, n=None) -> list:
    if not isinstance(v, list) or (n is not None and len(v) != n):
        raise _Bad(f"{what} is not a list" + ("" if n is None else f" of {n}"))
    return v


def _real(v, what) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise _Bad(f"{what} is {v!r}, not a number")
    try:
        return float(v)
    except (ValueError, OverflowError):
        raise _Bad(f"{what} is {v!r}, not a number") from None


def _dtype(v, what, kinds) -> np.dtype:
    try:
        dt = np.dtype(_str(v, what))
    except TypeError:
        raise _Bad(f"{what} {v!r} is not a dtype") from None
    if dt.kind not in kinds or dt.hasobject or dt.itemsize not in (1, 2, 4, 8) or dt.fields is not None:
        raise _Bad(f"{what} {v!r} is not a plain numeric dtype")
    return dt


def _stream(e, what, size) -> None:
    off, ln, dt, count, crc = _list(e, what, 5)
    _int(off, f"{what} offset")
    _int(ln, f"{what} length")
    _int(count, f"{what} count")
    _int(crc, f"{what} CRC32", 0, 0xFFFFFFFF)
    if off + ln > size:
        raise _Bad(f"{what} lies outside the payload")
    if ln != count * _dtype(dt, f"{what} dtype", "biuf").itemsize:
        raise _Bad(f"{what}: length does not match dtype and count")


def _part2(e, what) -> int:
    """A 2.x part entry ``[length, dtype]``; its length."""
    ln, dt = _list(e, what, 2)
    _int(ln, f"{what} length")
    if ln % _dtype(dt, f"{what} dtype", "biuf").itemsize:
        raise _Bad(f"{what}: length is not a whole number of {dt} values")
    return ln


def _layers(ix) -> list:
    out = []
    for i, entry in enumerate(_list(ix["layers"], "layers")):
        name, typ, extra = _list(entry, f"layer {i}", 3)
        _str(name, f"layer {i} name")
        if typ is not None:
            _str(typ, f"layer {i} type")
        for k, v in _dict(extra, f"layer {i} fields").items():
            if k in _LIST_FIELDS:
                for s in _list(v, f"layer {i} {k}"):
                    _str(s, f"layer {i} {k} entry")
        out.append(name)
    return out


def _meta_shape(meta, shape, what) -> None:
    s = meta.get("shape")
    if s != ",".join(str(d) for d in shape):
        raise _Bad(f"{what}: meta shape {s!r} is not the record's shape {shape}")


#: The ``grid`` method's dependent-quantisation segment bound (as ``engine.blob``'s decoder).
_MAX_DQ_SEG = 1 << 20


def _grid_meta(meta, what) -> None:
    """Types of a ``grid`` record's meta: ``step`` a positive finite ``float.hex``
    string, ``qmin`` and ``nsym`` (>= 1) and ``nlab`` integers, ``bits`` and
    ``dq_seg`` integers where present. The ranges the levels must keep (the
    +-2047 indices, a finite float32 level) are the decoder's, checked again there."""
    for key in ("step", "qmin", "nsym", "nlab"):
        if key not in meta:
            raise _Bad(f"{what}: grid blob meta is incomplete: it lacks {key!r}")
    v = meta["step"]
    try:
        if not isinstance(v, str):
            raise TypeError
        step = float.fromhex(v)
    except (TypeError, ValueError, OverflowError):
        raise _Bad(f"{what}: grid blob meta is incomplete: step {v!r} is not a float.hex string") from None
    if not (step > 0.0 and math.isfinite(step)):
        raise _Bad(f"{what}: grid step {v!r} is not a positive finite number")
    for key, lo, hi in (("qmin", None, None), ("nsym", 1, None), ("bits", 0, 64), ("dq_seg", 1, _MAX_DQ_SEG)):
        if key not in meta:
            continue
        v = meta[key]
        if type(v) is not int:  # noqa: E721  (bool is an int subclass; JSON floats are not ints)
            raise _Bad(f"{what}: grid blob meta is incomplete: {key} {v!r} is not an integer")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise _Bad(f"{what}: grid blob meta {key} = {v} is out of range")


def _blob(b, i, blobs, nlayers, size, compact=False) -> tuple:
    what = f"blob record {i}"
    b = _dict(b, what)
    for key in ("layer", "blob", "method", "kind", "dtype", "shape", "crc32", "shared", "bits", "sparsity",
                "sqnr", "meta", "parts"):
        if key not in b:
            raise _Bad(f"{what} lacks {key!r}")
    layer = _int(b["layer"], f"{what} layer", 0, nlayers - 1)
    _int(b["blob"], f"{what} index", 0, MAX_BLOBS_PER_LAYER - 1)
    method = _str(b["method"], f"{what} method")
    if method not in _METHODS:
        raise _Bad(f"{what}: unknown method {method!r}")
    _str(b["kind"], f"{what} kind")
    _dtype(b["dtype"], f"{what} dtype", "fiu")
    shape = [_int(d, f"{what} shape") for d in _list(b["shape"], f"{what} shape")]
    if len(shape) > MAX_AXES or math.prod(shape) > MAX_ELEMENTS:
        raise _Bad(f"{what}: shape {shape} is larger than a Caffe blob can be "
                   f"({MAX_AXES} axes, {MAX_ELEMENTS} values)")
    _int(b["crc32"], f"{what} crc32", 0, 0xFFFFFFFF)
    shared = _int(b["shared"], f"{what} shared", -1)
    _int(b["bits"], f"{what} bits", 0, 64)
    _real(b["sparsity"], f"{what} sparsity")
    _real(b["sqnr"], f"{what} sqnr")
    meta = _dict(b["meta"], f"{what} meta")
    for k, v in meta.items():
        if not isinstance(v, (int, float, str, bool)) or v is None:
            raise _Bad(f"{what}: meta {k!r} is not a plain scalar")
    parts = _dict(b["parts"], f"{what} parts")
    stored = 0
    for k, e in parts.items():
        if compact:
            stored += _part2(e, f"{what} part {k!r}")
        else:
            _stream(e, f"{what} part {k!r}", size)
    if method == "ref":
        if not 0 <= shared < i:
            raise _Bad(f"{what}: a shared blob must point at an earlier record, not {shared}")
        own = blobs[shared]
        if own["method"] == "ref" or own["shape"] != shape or own["dtype"] != b["dtype"] \
                or own["crc32"] != b["crc32"] or parts:
            raise _Bad(f"{what}: a shared blob must repeat its owner's shape, dtype and CRC32, and store nothing")
    elif shared != -1:
        raise _Bad(f"{what}: method {method!r} with a shared owner")
    elif method == "lossless":
        if meta.get("codec") not in ("lzma", "zlib", "fpack") or "data" not in parts:
            raise _Bad(f"{what}: lossless blob without its codec or data")
        if meta["codec"] == "fpack":
            for key, hi in (("ebase", 255), ("ebits", 8), ("mbits", 23)):
                _int(meta.get(key), f"{what} fpack {key}", 0, hi)
    else:
        _meta_shape(meta, shape, what)
        if "nlab" in meta:
            _int(meta["nlab"], f"{what} label count", 0, math.prod(shape))
        if method == "grid":
            _grid_meta(meta, what)
    return layer, b["blob"], shape, stored


def check_index(ix, size: int, path, *, data_bytes: int | None = None) -> list:
    """Validate a decoded index against the schema; return its layer names.

    Parameters
    ----------
    ix : object
        The JSON index as decoded.
    size : int
        Bytes in ``/payload`` (every stream must lie inside).
    path : str
        The file, for messages.
    data_bytes : int, optional
        A 2.x index (compact part entries ``[length, dtype]``, no ``streams``):
        the bytes before the index block, which the parts must fill exactly.

    Raises
    ------
    CorruptDataError
    """
    compact = data_bytes is not None
    try:
        ix = _dict(ix, "the index")
        if compact and "streams" in ix:
            raise _Bad("a 2.x index keeps its skeleton and prototxt in the index block, not in 'streams'")
        for key in ("model", "layers", "blobs") if compact else ("model", "streams", "layers", "blobs"):
            if key not in ix:
                raise _Bad(f"the index lacks {key!r}")
        model = _dict(ix["model"], "model")
        for key in ("name", "format"):
            if key in model:
                _str(model[key], f"model {key}")
        for key in ("unmatched", "warnings"):
            for s in _list(model.get(key, []), f"model {key}"):
                _str(s, f"model {key} entry")
        _dict(model.get("settings", {}), "model settings")
        if "seconds" in model:
            _real(model["seconds"], "model seconds")
        if not compact:
            streams = _dict(ix["streams"], "streams")
            if "skeleton" not in streams:
                raise _Bad("the index has no skeleton stream")
            for k, e in streams.items():
                _stream(e, f"stream {k!r}", size)
        names = _layers(ix)
        blobs = _list(ix["blobs"], "blobs")
        nexts = [0] * len(names)
        stored = 0
        for i, b in enumerate(blobs):
            layer, index, _, n = _blob(b, i, blobs, len(names), size, compact)
            stored += n
            if index != nexts[layer]:
                raise _Bad(f"blob record {i}: blob {index} of layer {names[layer]!r} out of order")
            nexts[layer] += 1
        if compact and stored != data_bytes:
            raise _Bad(f"the parts hold {stored} bytes where the payload has {data_bytes} before the index")
        return names
    except _Bad as exc:
        raise CorruptDataError(f"index damaged: {exc}", path=path) from None


def _strip_ones(dims) -> tuple:
    dims = tuple(dims)
    while dims and dims[0] == 1:
        dims = dims[1:]
    return dims


def _fits(shape, claim) -> bool:
    """A record's shape against a placeholder's: equal to a ``shape`` field; to
    legacy 4-D dims up to the leading 1s that Caffe's upgrade drops."""
    kind, dims = claim
    if kind == "shape":
        return tuple(shape) == tuple(dims)
    return _strip_ones(shape) == _strip_ones(dims)


def check_skeleton(ix, placeholders: list, path) -> None:
    """Check the blob records against the skeleton's placeholders, as the writer pairs them.

    ``placeholders`` is :func:`caffecompress.caffe.skeleton.skeleton_blobs` of
    the stored skeleton: each record with placeholders must meet the index
    layer of its name (first unpaired one, as the writer pairs) holding as
    many blobs, each of the shape its placeholder claims; every index layer
    must pair with a record.
    An empty skeleton (weights read from HDF5 without a prototxt) says nothing.

    Raises
    ------
    CorruptDataError
    """
    if not placeholders:
        return
    per_layer: dict = {}
    for b in ix["blobs"]:
        per_layer.setdefault(b["layer"], []).append(tuple(b["shape"]))
    queue: dict = {}
    for li, (name, _t, _e) in enumerate(ix["layers"]):
        queue.setdefault(name, []).append(li)
    for name, counts in placeholders:
        q = queue.get(name)
        li = q.pop(0) if q else None
        if not counts:
            continue
        if li is None:
            raise CorruptDataError(f"the skeleton has {len(counts)} blobs for a layer the index lacks",
                                   path=path, layer=name)
        have = per_layer.get(li, [])
        if len(have) != len(counts):
            raise CorruptDataError(f"the index holds {len(have)} blobs where the skeleton has {len(counts)}",
                                   path=path, layer=name)
        for k, (shape, claim) in enumerate(zip(have, counts)):
            if claim is not None and not _fits(shape, claim):
                raise CorruptDataError(f"blob {k} has shape {list(shape)} where the skeleton says "
                                       f"{claim[0]} {list(claim[1])}", path=path, layer=name)
    # every layer pairs with a skeleton record (the writer refuses the rest)
    left = [ix["layers"][li][0] for q in queue.values() for li in q]
    if left:
        raise CorruptDataError(f"layers with blobs that the skeleton lacks: {left[:5]}", path=path, layer=left[0])


def layout_crc(ix) -> int:
    """CRC32 of what a restore makes of the index: layer names, types and
    fields, and per blob its position, shape, dtype, CRC32 and owner.

    Saved files carry it as ``layout`` (earlier 1.0 files lack it and are
    read without this check). It ties the records together, so a forged index that drops a record, renames a
    layer or reshapes a blob (same bytes, same blob CRC) is caught even
    without a skeleton to compare with (a model built in memory, HDF5 weights).
    """
    what = [ix["layers"], [[b["layer"], b["blob"], b["shape"], b["dtype"], b["crc32"], b["shared"]]
                           for b in ix["blobs"]]]
    text = json.dumps(what, sort_keys=True, separators=(",", ":"))
    return zlib.crc32(text.encode("utf-8")) & 0xFFFFFFFF


def check_layout(ix, path) -> None:
    """Compare the index with its ``layout`` CRC (files without one: nothing to compare).

    Raises
    ------
    CorruptDataError
    """
    if "layout" not in ix:
        return
    want = ix["layout"]
    if type(want) is not int or want != layout_crc(ix):  # noqa: E721
        raise CorruptDataError("index damaged: its records fail the layout CRC32 (layers, shapes, "
                               "blob CRCs do not match what was written)", path=path)
