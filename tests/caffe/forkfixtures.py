"""Fork fixtures built from wire facts: a real zoo model whose layers carry fork X's fields.

Each field of the inventory (:mod:`caffecompress.caffe.forks`) gets a payload
of its declared type, placed where that fork writes it: layer-level fields in
a layer record with blobs (``conv1``) and in one without (``data12``),
parameter fields inside that parameter's record, blob fields inside a blob,
net fields at net level. Caffe's C++ writes unknown fields after the known
ones, so each goes at the end of its message. Payloads of message type carry
the sub-fields the inventory states (PSROIPooling, ROIPooling, SmoothL1,
FillerParameter, ImResize, the SSD messages of our schema); a message whose
fields it does not list is an empty message.
"""

from __future__ import annotations

import struct

from caffecompress.caffe import forks, wire
from caffecompress.caffe.wire import I32, LEN, VARINT

#: The real model the fixtures are built on (V2, conv + PReLU + pooling, 28 KB).
BASE = "mtcnn/det1.caffemodel"
BLOB_LAYER, PLAIN_LAYER = "conv1", "data12"

# LayerParameter number of each parameter message, and the layer that holds it
_PARAM = {"ConvolutionParameter": (106, "conv1"), "PoolingParameter": (121, "pool1"),
          "BatchNormParameter": (139, "conv1"), "InnerProductParameter": (117, "conv1"),
          "ScaleParameter": (142, "conv1"), "MemoryDataParameter": (119, "data12"),
          "LossParameter": (101, "loss1")}
# BlobProto 10/12 are blob values (read as fp16/raw data: their own tests); V1
# fields need a V1 net
SKIP = {("BlobProto", 10), ("BlobProto", 12), ("V1LayerParameter", 43)}

_STRINGS = {"source_class": b"com.yahoo.ml.caffe.LMDB", "engine": b"MKLDNN", "source": b"hdfs:///mnist/train",
            "conv_algorithm": b"direct", "conv_algos_override": b"-1,-1,-1",
            "dataframe_column_select": b"label"}


def _len(n, payload: bytes) -> bytes:
    return wire.encode_len_field(n, len(payload)) + payload


def _var(n, v: int) -> bytes:
    return wire.encode_key(n, VARINT) + wire.encode_varint(v)


def _f32(n, v: float) -> bytes:
    return wire.encode_key(n, I32) + struct.pack("<f", v)


_INNER = {
    "PSROIPoolingParameter": _f32(1, 0.0625) + _var(2, 21) + _var(3, 7),
    "ROIPoolingParameter": _var(1, 7) + _var(2, 7) + _f32(3, 0.0625),
    "SmoothL1LossParameter": _f32(1, 3.0),
    "FillerParameter": _len(1, b"constant") + _f32(2, 1.0),
    "ImResizeParameter": _var(1, 368) + _var(2, 368),
    "PermuteParameter": _len(1, b"\x00\x02\x03\x01"),
    "PriorBoxParameter": _f32(1, 30.0),
    "NormalizeParameter": _var(1, 0),
    "NormalizeBBoxParameter": _var(1, 0),
    "DetectionOutputParameter": _var(1, 21),
    "BoxAnnotatorOHEMParameter": _var(1, 128),
}


def record(ff: forks.ForkField) -> bytes:
    """One wire record of the field with a payload of its type."""
    t, n = ff.type, ff.number
    if t in ("bool", "enum", "int32", "uint32"):
        return _var(n, 1)
    if t == "float":
        return _f32(n, 0.5)
    if t == "string":
        return _len(n, _STRINGS.get(ff.name, b"fixture"))
    if t == "bytes":
        return _len(n, b"\x00\x3c\x00\x3c")
    if t == "rep string":
        return _len(n, b"label") + _len(n, b"image")
    if t == "rep uint32":
        return _len(n, b"\x01\x02")
    return _len(n, _INNER.get(t, b""))


def _layer_name(buf, f) -> str:
    for g in wire.iter_fields(buf, f.a, f.b):
        if g.number == 1 and g.wtype == LEN:
            return bytes(buf[g.a:g.b]).decode()
    return ""


def _append_inside(buf, f, number, extra: bytes) -> tuple:
    """The layer record's payload with ``extra`` appended inside its first field ``number``."""
    out, done = [], False
    for g in wire.iter_fields(buf, f.a, f.b):
        rec = bytes(buf[g.tag:g.b])
        if g.number == number and g.wtype == LEN and not done:
            rec = _len(number, bytes(buf[g.a:g.b]) + extra)
            done = True
        out.append(rec)
    return b"".join(out), done


def inject(src: bytes, fields) -> bytes:
    """``src`` (a V2 caffemodel) with every field of ``fields`` placed as its fork writes it."""
    per_layer: dict = {}  # layer -> list of (param number or None or 'blob', record)
    net_extra = b""
    for ff in fields:
        if (ff.message, ff.number) in SKIP:
            continue
        rec = record(ff)
        if ff.message == "NetParameter":
            net_extra += rec
        elif ff.message == "LayerParameter":
            per_layer.setdefault(BLOB_LAYER, []).append((None, rec))
            per_layer.setdefault(PLAIN_LAYER, []).append((None, rec))
        elif ff.message == "BlobProto":
            per_layer.setdefault(BLOB_LAYER, []).append(("blob", rec))
        else:
            number, layer = _PARAM[ff.message]
            per_layer.setdefault(layer, []).append((number, rec))
    out = []
    for f in wire.iter_fields(src, 0, len(src)):
        if f.number != 100 or f.wtype != LEN or _layer_name(src, f) not in per_layer:
            out.append(bytes(src[f.tag:f.b]))
            continue
        items = per_layer[_layer_name(src, f)]
        body = bytes(src[f.a:f.b])
        tail = b""
        for where, rec in items:
            if where is None:
                tail += rec
                continue
            number = 7 if where == "blob" else where
            mem = memoryview(body)
            view = wire.Field(100, LEN, 0, len(body), 0)
            new, done = _append_inside(mem, view, number, rec)
            body = new if done else body + _len(number, rec)
        out.append(_len(100, body + tail))
    return b"".join(out) + net_extra


def fixtures() -> dict:
    """Fixture id -> the inventory fields it carries: one per fork, the fields
    OpenCV's own schema cannot parse split off into their own fixture."""
    out = {}
    for key in forks.FORKS:
        fs = [f for f in forks.fields_of(key) if (f.message, f.number) not in SKIP]
        if key in ("mobilenet", "openpose"):
            continue  # no proto changes: their fixtures are below
        safe = [f for f in fs if (f.fork, f.message, f.number) not in OPENCV_REFUSES]
        out[key] = safe
        for f in fs:
            if (f.fork, f.message, f.number) in OPENCV_REFUSES:
                out[f"{key}-{f.name}"] = [f]
    return out


#: Fields whose payload OpenCV 4.x's schema cannot parse (its own meaning of the
#: number), so OpenCV refuses the whole file, source and restored alike.
#: Checked by the tests: OpenCV must refuse exactly these.
OPENCV_REFUSES = {
    ("intel", "LayerParameter", 149),  # "MKLDNN" read as OpenCV's NormalizeBBoxParameter
}
