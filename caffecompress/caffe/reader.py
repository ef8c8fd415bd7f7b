"""Read binary ``.caffemodel`` files (V0, V1, V2) into a :class:`~caffecompress.model.Model`.

How it works
------------
1. The file is memory-mapped and its NetParameter walked at the wire level
   (:mod:`.wire`): every layer record and, inside it, every ``BlobProto``.
   Only tags are touched; a packed ``data`` payload is just a byte span.
2. The *skeleton* is the same byte stream with the blob value fields
   (``data``, ``diff``, ``double_data``, ``double_diff``, ``raw_data``,
   ``raw_data_type``) cut out; shapes and every other field stay, including
   fields our schema does not know.
3. V2 names, types and ``param`` names are read from the wire, and the
   skeleton is the stripped bytes verbatim (so a canonical file is rewritten
   byte for byte); protobuf only validates it. V0/V1 files are parsed with
   protobuf (values already removed, so it is cheap), upgraded to V2 in
   Caffe's order by :func:`.upgrade.upgrade_net`, and re-serialized; blob
   placeholders keep their stored shape fields (legacy dims stay legacy).
   Either parse uses the BVLC schema, tolerantly (:mod:`.tolerant`): a fork's
   field never makes a file unreadable, it stays unknown bytes.
4. Each blob's values are copied once from the file into a fresh, writable
   float32 array (``os.preadv`` straight into the array for packed ``data``,
   so the mapped pages never enter the resident set): peak memory is about
   the size of the weights.

Value rules (Caffe's float build, ``Blob<float>::FromProto``): ``double_data``
wins over ``data`` and is rounded to float32; a blob with neither but with
OpenCV/NVCaffe ``raw_data`` is decoded by ``raw_data_type`` (FLOAT16, FLOAT,
DOUBLE). Every array is float32. ``Layer.storage`` remembers what each blob was
stored as (``"float32"``, ``"float64"``, ``"float16"``) so a writer can keep fp16.
Legacy 4-D ``num/channels/height/width`` dims are squeezed right-aligned to the
rank Caffe gives that blob (``(1,1,N,K)`` InnerProduct weight -> ``(N,K)``).
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import CaffeCompressError, FormatError, SchemaMismatchError, TruncatedFileError
from ..model import Layer, Model
from . import wire
from .wire import I32, I64, LEN, VARINT, WireError

__all__ = ["read_caffemodel", "parse_caffemodel", "MAX_BLOB_AXES"]

MAX_BLOB_AXES = 32  # Caffe's kMaxBlobAxes

# BlobProto field numbers
_NUM, _CHANNELS, _HEIGHT, _WIDTH = 1, 2, 3, 4
_DATA, _DIFF, _SHAPE, _DOUBLE_DATA, _DOUBLE_DIFF = 5, 6, 7, 8, 9
_RAW_TYPE, _RAW_DATA = 10, 12
_VALUE_FIELDS = frozenset({_DATA, _DIFF, _DOUBLE_DATA, _DOUBLE_DIFF, _RAW_TYPE, _RAW_DATA})
# raw_data_type enum (OpenCV / NVIDIA Caffe): DOUBLE=0 FLOAT=1 FLOAT16=2 INT=3 UINT=4
_RAW_DTYPES = {0: ("<f8", "float64"), 1: ("<f4", "float32"), 2: ("<f2", "float16")}

# NetParameter: name=1, layers(V1)=2, layer(V2)=100. V1LayerParameter: layer(V0)=1,
# name=4, type=5, blobs=6, param names=1001. V0LayerParameter: name=1, type=2,
# blobs=50. LayerParameter (V2): name=1, type=2, param=6, blobs=7.
_NET_LAYERS_V1, _NET_LAYER_V2 = 2, 100

# V1 LayerType enum -> V2 type string (UpgradeV1LayerType).
V1_TYPES = [
    "", "Accuracy", "BNLL", "Concat", "Convolution", "Data", "Dropout", "EuclideanLoss",
    "Flatten", "HDF5Data", "HDF5Output", "Im2col", "ImageData", "InfogainLoss",
    "InnerProduct", "LRN", "MultinomialLogisticLoss", "Pooling", "ReLU", "Sigmoid",
    "Softmax", "SoftmaxWithLoss", "Split", "TanH", "WindowData", "Eltwise", "Power",
    "SigmoidCrossEntropyLoss", "HingeLoss", "MemoryData", "ArgMax", "Threshold",
    "DummyData", "Slice", "MVN", "AbsVal", "Silence", "ContrastiveLoss", "Exp",
    "Deconvolution",
]

# Rank Caffe gives blob i of a layer type, used to squeeze legacy 4-D dims.
_RANKS = {
    "Convolution": (4, 1),
    "Deconvolution": (4, 1),
    "InnerProduct": (2, 1),
    "Embed": (2, 1),
    "BatchNorm": (1, 1, 1),
    "Scale": (1, 1),
    "Bias": (1,),
    "PReLU": (1,),
}


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


@dataclass
class BlobScan:
    """Where one BlobProto's parts sit in the buffer (nothing decoded yet)."""

    start: int
    end: int
    legacy: dict = field(default_factory=dict)  # field number -> int value
    dims: list | None = None  # BlobShape.dim, None when no shape field
    f4: list = field(default_factory=list)  # (offset, count, stride) segments of `data`
    f8: list = field(default_factory=list)  # same for `double_data`
    raw: list = field(default_factory=list)  # (offset, nbytes) of raw_data (last wins)
    raw_type: int | None = None
    keep: list = field(default_factory=list)  # (start, end) spans of non-value fields

    def claimed_shape(self) -> tuple:
        """The shape the blob declares, by Caffe's precedence (legacy dims first)."""
        if self.legacy:
            return tuple(self.legacy.get(k, 0) for k in (_NUM, _CHANNELS, _HEIGHT, _WIDTH))
        return tuple(self.dims or ())

    def storage(self) -> str:
        if self.f8:
            return "float64"
        if self.f4 or not self.raw:
            return "float32"
        return _RAW_DTYPES.get(self.raw_type, ("", "unknown"))[1]


def scan_blob(buf, start: int, end: int) -> BlobScan:
    """Locate the parts of the BlobProto occupying ``buf[start:end]``."""
    bs = BlobScan(start, end)
    pos = start
    while pos < end:
        f = wire.next_field(buf, pos, end)
        n, wt = f.number, f.wtype
        if n in (_DATA, _DOUBLE_DATA):
            width = 4 if n == _DATA else 8
            segs = bs.f4 if n == _DATA else bs.f8
            if wt == LEN:
                nbytes = f.b - f.a
                if nbytes % width:
                    raise WireError(f"packed field {n} of {nbytes} bytes is not a multiple of {width}", f.tag)
                if nbytes:
                    segs.append((f.a, nbytes // width, width))
            elif wt == (I32 if n == _DATA else I64):
                # unpacked: a run of key+value records, found in one vectorised step
                key = buf[f.tag]
                if f.a - f.tag == 1:
                    run = wire.unpacked_run(buf, f.tag, end, key, width)
                else:  # pragma: no cover - single-byte keys for these fields
                    run = 1
                segs.append((f.a, run, width + 1))
                pos = f.tag + run * (width + 1)
                continue
            else:
                raise WireError(f"BlobProto field {n} has wire type {wt}", f.tag)
        elif n in (_DIFF, _DOUBLE_DIFF):
            pass  # gradients: not weights, dropped
        elif n == _RAW_DATA:
            if wt != LEN:
                raise WireError(f"BlobProto raw_data has wire type {wt}", f.tag)
            bs.raw = [(f.a, f.b - f.a)]  # a bytes field: last one wins
        elif n == _RAW_TYPE and wt == VARINT:
            bs.raw_type = f.a
        elif n in (_NUM, _CHANNELS, _HEIGHT, _WIDTH) and wt == VARINT:
            bs.legacy[n] = _signed64(f.a)
            bs.keep.append((f.tag, f.b))
        elif n == _SHAPE and wt == LEN:
            dims = _scan_shape(buf, f.a, f.b)
            bs.dims = (bs.dims or []) + dims  # repeated fields of merged messages concatenate
            bs.keep.append((f.tag, f.b))
        else:
            bs.keep.append((f.tag, f.b))  # unknown or fork field: kept in the skeleton
        pos = f.b
    return bs


def _scan_shape(buf, start: int, end: int) -> list:
    dims = []
    for f in wire.iter_fields(buf, start, end):
        if f.number != 1:
            continue
        if f.wtype == VARINT:
            dims.append(_signed64(f.a))
            if len(dims) > MAX_BLOB_AXES:
                raise WireError("BlobShape has more than 32 axes", f.tag)
        elif f.wtype == LEN:
            p = f.a
            while p < f.b:
                v, p = wire.read_varint(buf, p, f.b)
                dims.append(_signed64(v))
                if len(dims) > MAX_BLOB_AXES:
                    raise WireError("BlobShape has more than 32 axes", f.tag)
    return dims


@dataclass
class RecordScan:
    """One layer record of the NetParameter."""

    index: int
    kind: int  # 100 (V2 layer) or 2 (V1/V0 layers)
    tag: int
    start: int
    end: int
    name: str = ""
    type: str | None = None
    v0: bool = False
    param_names: list = field(default_factory=list)
    blobs: list = field(default_factory=list)  # BlobScan
    blob_fields: list = field(default_factory=list)  # Field records of the blobs (for stripping)


def _text(buf, a, b) -> str:
    return bytes(buf[a:b]).decode("utf-8", errors="replace")


def scan_record(buf, rec: RecordScan) -> None:
    """Fill ``rec`` with the name, type, param names and blob locations."""
    v2 = rec.kind == _NET_LAYER_V2
    blob_no = 7 if v2 else 6
    for f in wire.iter_fields(buf, rec.start, rec.end):
        n = f.number
        if n == 1 and f.wtype == LEN and v2:
            rec.name = _text(buf, f.a, f.b)
        elif n == 2 and f.wtype == LEN and v2:
            rec.type = _text(buf, f.a, f.b)
        elif n == 6 and f.wtype == LEN and v2:
            pname = ""
            for g in wire.iter_fields(buf, f.a, f.b):
                if g.number == 1 and g.wtype == LEN:
                    pname = _text(buf, g.a, g.b)
            rec.param_names.append(pname)
        elif n == 4 and f.wtype == LEN and not v2:
            rec.name = _text(buf, f.a, f.b)
        elif n == 5 and f.wtype == VARINT and not v2:
            rec.type = V1_TYPES[f.a] if f.a < len(V1_TYPES) else f"V1:{f.a}"
        elif n == 1001 and f.wtype == LEN and not v2:
            rec.param_names.append(_text(buf, f.a, f.b))
        elif n == 1 and f.wtype == LEN and not v2:
            rec.v0 = True
            for g in wire.iter_fields(buf, f.a, f.b):
                if g.number == 1 and g.wtype == LEN:
                    rec.name = _text(buf, g.a, g.b)
                elif g.number == 2 and g.wtype == LEN:
                    rec.type = _text(buf, g.a, g.b)
                elif g.number == 50 and g.wtype == LEN:
                    rec.blobs.append(scan_blob(buf, g.a, g.b))
        if n == blob_no and f.wtype == LEN:
            rec.blobs.append(scan_blob(buf, f.a, f.b))


@dataclass
class NetScan:
    """The wire-level map of a NetParameter."""

    format: str
    name: str
    records: list
    top: list  # top-level Field records


def _looks_like_text(buf, n) -> bool:
    head = bytes(buf[: min(n, 256)])
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\r\n\t" for c in text)


def scan_net(buf, size: int, path=None) -> NetScan:
    """Walk the top level of a NetParameter; raise typed errors naming ``path``."""
    if size == 0:
        raise FormatError("empty file, not a caffemodel", path=path)
    top = []
    records = []
    name = ""
    try:
        for f in wire.iter_fields(buf, 0, size):
            top.append(f)
            if f.number in (_NET_LAYERS_V1, _NET_LAYER_V2) and f.wtype == LEN:
                records.append(RecordScan(len(records), f.number, f.tag, f.a, f.b))
            elif f.number == 1 and f.wtype == LEN:
                name = _text(buf, f.a, f.b)
    except WireError as e:
        _raise_wire(e, buf, size, path, None)
    kinds = {r.kind for r in records}
    if len(kinds) > 1:
        raise FormatError(
            "the net has both 'layer' (V2) and 'layers' (V1) records; Caffe refuses to "
            "upgrade such an inconsistent NetParameter",
            path=path,
        )
    if not records:
        hint = " (it looks like text: a prototxt?)" if _looks_like_text(buf, size) else ""
        raise FormatError(f"no layer records: not a Caffe NetParameter{hint}", path=path)
    for rec in records:
        try:
            scan_record(buf, rec)
        except WireError as e:
            _raise_wire(e, buf, size, path, rec.name or f"#{rec.index}")
    if _NET_LAYER_V2 in kinds:
        fmt = "V2"
    else:
        fmt = "V0" if any(r.v0 for r in records) else "V1"
    return NetScan(fmt, name, records, top)


def _raise_wire(e: WireError, buf, size, path, layer):
    if e.truncated:
        raise TruncatedFileError(f"file ends early or is corrupt: {e}", path=path, layer=layer) from None
    hint = ""
    if _looks_like_text(buf, size):
        hint = " (it looks like text: a prototxt given as weights?)"
    raise FormatError(f"not a valid binary caffemodel: {e}{hint}", path=path, layer=layer) from None


# ---------------------------------------------------------------- values


def _target_shape(bs: BlobScan, ltype: str | None, index: int, path, layer) -> tuple:
    shape = bs.claimed_shape()
    if len(shape) > MAX_BLOB_AXES:
        raise FormatError(f"blob {index} has {len(shape)} axes (Caffe allows 32)", path=path, layer=layer)
    if any(d < 0 for d in shape):
        raise FormatError(f"blob {index} has a negative dimension {shape}", path=path, layer=layer)
    if bs.legacy:
        ranks = _RANKS.get(ltype or "")
        if ranks and index < len(ranks):
            shape = list(shape)
            while len(shape) > ranks[index] and shape[0] == 1:
                shape.pop(0)
            shape = tuple(shape)
    return shape


class _Fetcher:
    """Copies value spans out of the source into fresh arrays."""

    def __init__(self, buf, fd=None):
        self.buf = buf
        self.fd = fd

    def f4_into(self, out: np.ndarray, off: int, count: int, stride: int) -> None:
        if stride == 4 and self.fd is not None:
            mv = memoryview(out).cast("B")
            want = count * 4
            got = 0
            while got < want:
                n = os.preadv(self.fd, [mv[got:]], off + got)
                if n <= 0:
                    raise OSError("short read")
                got += n
            mv.release()
            return
        self._strided_into(out, off, count, stride, "<f4")

    def _strided_into(self, out, off, count, stride, dtype):
        width = np.dtype(dtype).itemsize
        if stride == width:
            src = np.frombuffer(self.buf, dtype, count=count, offset=off)
        else:
            raw = np.frombuffer(self.buf, np.uint8, count=count * stride, offset=off - (stride - width))
            src = raw.reshape(count, stride)[:, stride - width :].copy().view(dtype).reshape(count)
        out[...] = src  # one copy (casting when dtype is wider/narrower)
        del src

    def any_into(self, out, off, count, stride, dtype):
        if dtype == "<f4":
            self.f4_into(out, off, count, stride)
        else:
            self._strided_into(out, off, count, stride, dtype)


def decode_blob(fetch: _Fetcher, bs: BlobScan, shape: tuple, path, layer, index) -> np.ndarray:
    """Decode a blob's values into a new writable float32 array of ``shape``.

    The element count the shape claims is checked against the bytes actually
    present *before* anything is allocated.
    """
    want = 1
    for d in shape:
        want *= int(d)
    if bs.f8:
        segs, dtype = bs.f8, "<f8"
    elif bs.f4:
        segs, dtype = bs.f4, "<f4"
    elif bs.raw:
        if bs.raw_type not in _RAW_DTYPES:
            raise FormatError(
                f"blob {index}: raw_data of unsupported raw_data_type {bs.raw_type}", path=path, layer=layer
            )
        dtype = _RAW_DTYPES[bs.raw_type][0]
        off, nbytes = bs.raw[0]
        width = np.dtype(dtype).itemsize
        if nbytes % width:
            raise FormatError(
                f"blob {index}: raw_data of {nbytes} bytes is not a multiple of {width}", path=path, layer=layer
            )
        segs = [(off, nbytes // width, width)] if nbytes else []
    else:
        segs, dtype = [], "<f4"
    have = sum(c for _, c, _ in segs)
    if have != want:
        raise FormatError(
            f"blob {index}: shape {tuple(shape)} claims {want} values but the file holds {have}",
            path=path,
            layer=layer,
        )
    out = np.empty(want, np.float32)
    k = 0
    for off, count, stride in segs:
        fetch.any_into(out[k : k + count], off, count, stride, dtype)
        k += count
    return out.reshape(shape)


# ---------------------------------------------------------------- skeleton


def _strip_record(buf, rec: RecordScan, marker=None) -> bytes:
    """The layer record's payload with blob values removed.

    ``marker(i)`` (optional) returns bytes appended to blob ``i``'s placeholder
    so it can be recognised after protobuf moved it during an upgrade.
    """
    blob_iter = iter(range(len(rec.blobs)))
    bmap = {bs.start: bs for bs in rec.blobs}

    def strip_msg(start, end, depth) -> bytes:
        out = []
        for f in wire.iter_fields(buf, start, end):
            if f.wtype == LEN and f.a in bmap and depth <= 1 and _is_blob_field(rec, f, depth):
                i = next(blob_iter)
                bs = bmap[f.a]
                body = b"".join(bytes(buf[s:e]) for s, e in bs.keep)
                if marker is not None:
                    body += marker(i)
                out.append(wire.encode_len_field(f.number, len(body)) + body)
            elif rec.v0 and depth == 0 and f.number == 1 and f.wtype == LEN:
                body = strip_msg(f.a, f.b, 1)
                out.append(wire.encode_len_field(1, len(body)) + body)
            else:
                out.append(bytes(buf[f.tag : f.b]))
        return b"".join(out)

    return strip_msg(rec.start, rec.end, 0)


def _is_blob_field(rec, f, depth) -> bool:
    if rec.kind == _NET_LAYER_V2:
        return depth == 0 and f.number == 7
    return (depth == 0 and f.number == 6) or (depth == 1 and f.number == 50)


def strip_net(buf, scan: NetScan, marker=None) -> bytes:
    """The NetParameter bytes with every blob's values removed (order kept)."""
    out = []
    it = iter(scan.records)
    for f in scan.top:
        if f.number in (_NET_LAYERS_V1, _NET_LAYER_V2) and f.wtype == LEN:
            rec = next(it)
            if rec.blobs:
                body = _strip_record(buf, rec, None if marker is None else (lambda i, r=rec: marker(r, i)))
                out.append(wire.encode_len_field(f.number, len(body)) + body)
                continue
        out.append(bytes(buf[f.tag : f.b]))
    return b"".join(out)


# ---------------------------------------------------------------- entry points


def parse_caffemodel(buf, size: int | None = None, *, path=None, fd=None) -> Model:
    """Build a :class:`Model` from the bytes of a binary caffemodel.

    ``buf`` is any buffer (bytes, memoryview, mmap). ``fd``, when given, is an
    open descriptor of the same bytes used for copy-free reads of packed data.
    """
    if size is None:
        size = len(buf)
    scan = scan_net(buf, size, path)
    fetch = _Fetcher(buf, fd)
    if scan.format == "V2":
        return _build_v2(buf, scan, fetch, path)
    return _build_upgraded(buf, scan, fetch, path)


def _parse_skeleton(data: bytes, path):
    """Validate and parse the net structure with the BVLC schema, tolerantly.

    Fields BVLC does not declare (every fork's) stay unknown bytes; a declared
    field whose bytes do not parse as its type (a fork reusing the number) is
    set aside as unknown bytes too, at any depth (:mod:`.tolerant`). Only a
    structure that is not wire format at all is refused.
    """
    from .tolerant import parse_tolerant

    try:
        return parse_tolerant(data)[0]
    except WireError as e:
        raise FormatError(f"not a valid caffemodel: protobuf cannot parse the net structure ({e})",
                          path=path) from None


def _build_v2(buf, scan, fetch, path) -> Model:
    skeleton = strip_net(buf, scan)
    _parse_skeleton(skeleton, path)
    layers = []
    for rec in scan.records:
        arrays, storage = [], []
        for i, bs in enumerate(rec.blobs):
            shape = _target_shape(bs, rec.type, i, path, rec.name)
            arrays.append(decode_blob(fetch, bs, shape, path, rec.name, i))
            storage.append(bs.storage())
        pn = (rec.param_names + [""] * len(arrays))[: len(arrays)]
        layers.append(Layer(rec.name, rec.type or None, arrays, pn, storage=storage))
    return Model(layers=layers, name=scan.name, skeleton=skeleton, source=None if path is None else str(path),
                 format="V2")


def _build_upgraded(buf, scan, fetch, path) -> Model:
    from .upgrade import upgrade_net

    # Tag each blob placeholder with its global index (as one double_data value,
    # exact for any index) so it can be found wherever the upgrade moves it.
    ids = {}
    flat = []
    for rec in scan.records:
        for i, bs in enumerate(rec.blobs):
            ids[(rec.index, i)] = len(flat)
            flat.append((rec, i, bs))

    def marker(rec, i):
        payload = np.float64(ids[(rec.index, i)]).tobytes()
        return wire.encode_len_field(_DOUBLE_DATA, 8) + payload

    net = _parse_skeleton(strip_net(buf, scan, marker), path)
    try:
        v2, _src = upgrade_net(net, keep_blob_dims=True)
    except CaffeCompressError as e:
        if getattr(e, "path", None) is None and hasattr(e, "reason"):
            raise type(e)(e.reason, path=path, layer=e.layer) from None  # add the file name
        raise
    except Exception as e:  # an upgrader bug must still surface as a typed, located error
        raise FormatError(f"cannot upgrade the {scan.format} net to V2: {e}", path=path) from None

    layers = []
    for lp in v2.layer:
        arrays, storage = [], []
        for i, blob in enumerate(lp.blobs):
            if len(blob.double_data) != 1:
                raise FormatError("blob lost its placeholder during upgrade", path=path, layer=lp.name)
            gid = int(blob.double_data[0])
            rec, _, bs = flat[gid]
            shape = _target_shape(bs, lp.type, i, path, lp.name)
            arr = decode_blob(fetch, bs, shape, path, lp.name, i)
            arrays.append(arr)
            storage.append(bs.storage())
            # the placeholder keeps the stored shape fields (legacy num/channels/
            # height/width or shape) and any unknown ones: a writer restores them
            blob.ClearField("double_data")
        pn = [lp.param[i].name if i < len(lp.param) else "" for i in range(len(arrays))]
        layers.append(Layer(lp.name, lp.type or None, arrays, pn, storage=storage))
    return Model(layers=layers, name=v2.name, skeleton=v2.SerializeToString(),
                 source=None if path is None else str(path), format=scan.format)


def _open_source(path):
    """Open ``path`` for reading: (fd, size, mmap or b''); typed errors for bad paths."""
    p = os.fspath(path)
    if os.path.isdir(p):
        raise FormatError("is a directory, not a caffemodel file", path=p)
    try:
        fd = os.open(p, os.O_RDONLY)
    except FileNotFoundError:
        raise FormatError("no such file", path=p) from None
    except PermissionError:
        raise FormatError("permission denied (unreadable file)", path=p) from None
    except OSError as e:
        raise FormatError(f"cannot open: {e.strerror or e}", path=p) from None
    try:
        size = os.fstat(fd).st_size
        mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ) if size else b""
    except (OSError, ValueError) as e:
        os.close(fd)
        raise FormatError(f"cannot read: {e}", path=p) from None
    return fd, size, mm


def read_caffemodel_binary(path) -> Model:
    """Read a binary ``.caffemodel`` (any generation) at ``path``."""
    fd, size, mm = _open_source(path)
    try:
        return parse_caffemodel(mm, size, path=os.fspath(path), fd=fd)
    finally:
        if isinstance(mm, mmap.mmap):
            try:
                mm.close()
            except BufferError:  # a view is still referenced somewhere; GC will unmap
                pass
        os.close(fd)


# ---------------------------------------------------------------- prototxt pairing

# Learnable blobs per layer type: (count function of the LayerParameter) or None
def expected_blob_count(lp, nbottom: int | None = None) -> int | None:
    """How many blobs Caffe creates for a V2 LayerParameter (None when unknown)."""
    t = lp.type
    if t in ("Convolution", "Deconvolution"):
        return 1 + bool(lp.convolution_param.bias_term)
    if t == "InnerProduct":
        return 1 + bool(lp.inner_product_param.bias_term)
    if t == "Embed":
        return 1 + bool(lp.embed_param.bias_term)
    if t == "BatchNorm":
        return 3
    if t == "Scale":
        nb = len(lp.bottom) if nbottom is None else nbottom
        return (1 if nb == 1 else 0) + bool(lp.scale_param.bias_term)
    if t in ("Bias", "PReLU", "Parameter"):
        return 1 if (t != "Bias" or len(lp.bottom) == 1) else 0
    return None


def _check_shapes(lp, arrays, where) -> None:
    """Check what the prototxt alone determines about the blob shapes."""
    t = lp.type
    if t in ("Convolution", "Deconvolution") and arrays:
        cp = lp.convolution_param
        w = arrays[0].shape
        n = cp.num_output
        g = cp.group or 1
        if len(w) < 3:
            raise SchemaMismatchError(f"weight shape {w} is not a convolution kernel", **where)
        if t == "Convolution" and w[0] != n:
            raise SchemaMismatchError(f"weight shape {w} but num_output is {n}", **where)
        if t == "Deconvolution" and w[1] * g != n:
            raise SchemaMismatchError(f"weight shape {w} but num_output is {n} (group {g})", **where)
        nsp = len(w) - 2
        if cp.HasField("kernel_h") or cp.HasField("kernel_w"):
            k = (cp.kernel_h, cp.kernel_w)
        else:
            ks = list(cp.kernel_size)
            k = tuple(ks * nsp) if len(ks) == 1 else tuple(ks)
        if k and tuple(w[2:]) != k:
            raise SchemaMismatchError(f"weight shape {w} but the kernel is {k}", **where)
        if len(arrays) > 1 and arrays[1].shape != (n,):
            raise SchemaMismatchError(f"bias shape {arrays[1].shape} but num_output is {n}", **where)
    elif t == "InnerProduct" and arrays:
        ip = lp.inner_product_param
        n = ip.num_output
        w = arrays[0].shape
        if len(w) < 2:
            raise SchemaMismatchError(f"weight shape {w} is not a matrix", **where)
        got = w[-1] if ip.transpose else w[0]
        if got != n:
            raise SchemaMismatchError(f"weight shape {w} but num_output is {n}", **where)
        if len(arrays) > 1 and arrays[1].shape != (n,):
            raise SchemaMismatchError(f"bias shape {arrays[1].shape} but num_output is {n}", **where)
    elif t == "BatchNorm" and len(arrays) == 3:
        if arrays[0].shape != arrays[1].shape or arrays[2].size != 1:
            raise SchemaMismatchError(
                f"BatchNorm blobs {[a.shape for a in arrays]} are not (C), (C), (1)", **where
            )


def _adopt_prototxt_structure(model: Model, netdef, files) -> None:
    """For weights without structure (HDF5): prototxt order, param names, shared blobs, skeleton."""
    from .proto import pb

    by_name = {lay.name: lay for lay in model.layers}
    owners = {}
    ordered = []
    for lp in netdef.net.layer:
        lay = by_name.pop(lp.name, None)
        if lay is None:
            lay = Layer(lp.name, lp.type, [], [])
        names = [lp.param[i].name if i < len(lp.param) else "" for i in range(len(lay.blobs))]
        for i, pname in enumerate(names):
            if pname and lay.blobs[i] is not None:
                owners.setdefault(pname, lay.blobs[i])
            elif pname and pname in owners:
                lay.blobs[i] = owners[pname]  # Caffe stores a shared blob only in its owner
        lay.param_names = names
        ordered.append(lay)
    ordered.extend(by_name.values())
    model.layers = ordered
    skel = pb.NetParameter()
    skel.CopyFrom(netdef.net)
    for lp in skel.layer:
        del lp.blobs[:]
    for lay in by_name.values():
        skel.layer.add(name=lay.name)
    model.skeleton = skel.SerializeToString()
    model.name = skel.name


def _in_test_phase(lp) -> bool:
    """Whether a layer's include/exclude phase rules keep it in a TEST-phase net."""
    test = 1  # Phase.TEST
    for rule in lp.exclude:
        if rule.HasField("phase") and rule.phase == test:
            return False
    if len(lp.include):
        return any(not rule.HasField("phase") or rule.phase == test for rule in lp.include)
    if lp.HasField("phase") and lp.phase != test:
        return False
    return True


def pair_with_prototxt(model: Model, netdef, weights_path, prototxt_path) -> Model:
    """Match weights to prototxt layers by name, as Caffe does; check counts and shapes."""
    files = f"{weights_path} vs {prototxt_path}"
    if model.format == "HDF5":
        _adopt_prototxt_structure(model, netdef, files)
    by_name = {}
    for lay in model.layers:
        # OpenCV takes the first same-named layer that has blobs; Caffe the first
        # same-named one. They differ only for duplicate names; prefer blobs.
        if lay.name not in by_name or (lay.blobs and not by_name[lay.name].blobs):
            by_name[lay.name] = lay
    proto_names = set()
    for lp in netdef.net.layer:
        proto_names.add(lp.name)
        if not _in_test_phase(lp):
            continue  # Caffe would not instantiate it in a deploy (TEST) net
        where = {"path": files, "layer": lp.name}
        want = expected_blob_count(lp)
        lay = by_name.get(lp.name)
        if lay is not None and any(b is None for b in lay.blobs):
            raise SchemaMismatchError("a blob is missing from the weights file", **where)
        if lay is None or not lay.blobs:
            if want:
                raise SchemaMismatchError(
                    f"the prototxt's {lp.type} layer has no weights in the caffemodel", **where
                )
            continue
        if want is not None and len(lay.blobs) != want:
            raise SchemaMismatchError(
                f"the caffemodel holds {len(lay.blobs)} blobs, the prototxt's {lp.type} layer needs {want}",
                **where,
            )
        _check_shapes(lp, lay.blobs, where)
    types = {}
    for lp in netdef.net.layer:
        types.setdefault(lp.name, lp.type)
    for lay in model.layers:
        if lay.name in types:
            lay.type = types[lay.name] or lay.type
    model.unmatched = [lay.name for lay in model.layers if lay.blobs and lay.name not in proto_names]
    model.prototxt = netdef.text
    return model
