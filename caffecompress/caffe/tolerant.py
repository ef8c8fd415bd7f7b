"""Parse a Caffe message so that no field we do not need can make it unreadable.

Forks reuse the field numbers above BVLC's range with other types
(``proto/FORKS.md``): CaffeOnSpark puts a class-name string at
``LayerParameter`` 10001, where R-FCN (and our full schema) has a message.
protobuf refuses a whole message when one declared field's bytes do not parse
as the declared type, so a reader that must understand every field is
brittle by design. The rule here:

* parse with the BVLC view of our schema (:data:`.proto.pb_bvlc`): every
  field it does not declare stays unknown bytes, and protobuf writes unknown
  bytes back as they were;
* when a field it *does* declare does not parse (another fork's meaning with
  the same wire type, bytes that are not that message, a bad packed run),
  find it, at whatever nesting depth, and parse again with a schema variant
  that leaves that ``(message, number)`` out (:func:`.proto.schema_without`):
  it, too, becomes unknown bytes, and the read goes on. A field number means
  one thing throughout a file (one fork wrote it), so the variant is per file.

A wire type that differs from the declared one is already an unknown field
to protobuf (the spec's rule, checked on both runtimes we support), so only
length-delimited fields can fail. :func:`opaque_fields` lists what a parse
kept as unknown bytes, for ``info``.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import wire
from .proto import classes_of, schema_without, short_name
from .wire import I32, I64, LEN, SGROUP, VARINT, WireError

__all__ = ["OpaqueField", "parse_tolerant", "opaque_fields", "WIRE_NAMES"]

#: Human names of the wire types (for messages and ``info``).
WIRE_NAMES = {VARINT: "varint", I64: "fixed64", LEN: "length-delimited", SGROUP: "group", I32: "fixed32"}

# protobuf's own default recursion limit; deeper nesting is refused here too
_MAX_DEPTH = 100

_FD = None  # FieldDescriptor, imported lazily (protobuf only under caffe/)


def _fd():
    global _FD
    if _FD is None:
        from google.protobuf.descriptor import FieldDescriptor

        _FD = FieldDescriptor
    return _FD


def _wire_types(fd) -> tuple:
    """Wire types protobuf accepts for a declared field (packed or not for repeated scalars)."""
    F = _fd()
    t = fd.type
    if t in (F.TYPE_MESSAGE, F.TYPE_STRING, F.TYPE_BYTES):
        return (LEN,)
    if t == F.TYPE_GROUP:
        return (SGROUP,)
    if t in (F.TYPE_FLOAT, F.TYPE_FIXED32, F.TYPE_SFIXED32):
        w = I32
    elif t in (F.TYPE_DOUBLE, F.TYPE_FIXED64, F.TYPE_SFIXED64):
        w = I64
    else:
        w = VARINT
    return (w, LEN) if _repeated(fd) else (w,)


def _repeated(fd) -> bool:
    # protobuf 7 dropped FieldDescriptor.label for is_repeated; 3.20 has only label
    rep = getattr(fd, "is_repeated", None)
    return bool(rep) if rep is not None else fd.label == _fd().LABEL_REPEATED


def _parses(cls, data: bytes) -> bool:
    try:
        cls.FromString(data)
    except Exception:  # DecodeError, or UnicodeDecodeError on the pure-Python runtime
        return False
    return True


def _find_bad(cls, buf, a: int, b: int, out: set, depth: int) -> bool:
    """Add to ``out`` every ``(message, number)`` whose record in ``buf[a:b]`` protobuf refuses.

    Returns False when ``buf[a:b]`` is not wire format at all (the caller
    then demotes the field that holds it).
    """
    if depth > _MAX_DEPTH:
        return False
    try:
        fields = list(wire.iter_fields(buf, a, b))
    except WireError:
        return False
    desc = cls.DESCRIPTOR
    ns = None
    for f in fields:
        fd = desc.fields_by_number.get(f.number)
        if fd is None or f.wtype not in _wire_types(fd):
            continue  # unknown to protobuf already
        if _parses(cls, bytes(buf[f.tag:f.b])):
            continue
        if fd.message_type is not None and f.wtype == LEN:
            ns = ns or classes_of(cls)
            sub = getattr(ns, short_name(fd.message_type))
            inner: set = set()
            if _find_bad(sub, buf, f.a, f.b, inner, depth + 1) and inner:
                out |= inner  # the culprits are inside; this field itself stays parsed
                continue
        out.add((short_name(desc), f.number))
    return True


def parse_tolerant(data, message: str = "NetParameter", *, bvlc: bool = True):
    """Parse ``data`` as ``message``, demoting fields whose bytes do not parse to unknown bytes.

    Parameters
    ----------
    data : bytes
        A serialized message (a caffemodel's net structure without blob values).
    message : str
        Short name of the message type.
    bvlc : bool
        Parse with the BVLC view (default: every fork field stays unknown bytes)
        or with our full schema (fork fields interpreted where they parse).

    Returns
    -------
    msg : google.protobuf.message.Message
        The parsed message; its class comes from a schema variant when fields
        were demoted (build related messages with :func:`.proto.classes_of`).
    demoted : frozenset of (str, int)
        The ``(message short name, field number)`` pairs left unparsed.

    Raises
    ------
    WireError
        ``data`` itself is not wire format, or nesting exceeds protobuf's limit.
    """
    data = bytes(data)
    demoted: set = set()
    for _ in range(8):  # each round only removes fields; one or two rounds settle it
        ns = schema_without(demoted, bvlc=bvlc)
        cls = getattr(ns, message)
        try:
            return cls.FromString(data), frozenset(demoted)
        except Exception as e:  # noqa: BLE001 - protobuf's error class differs across runtimes
            err = e
        found: set = set()
        if not _find_bad(cls, data, 0, len(data), found, 0):
            raise WireError(f"not a {message}: {err}", 0)
        if not found - demoted:
            raise WireError(f"{message} does not parse and no field could be set aside: {err}", 0)
        demoted |= found
    raise WireError(f"{message} does not parse: {err}", 0)  # pragma: no cover - bounded above


@dataclass(frozen=True)
class OpaqueField:
    """One field a parse kept as unknown bytes (written back byte for byte).

    Attributes
    ----------
    layer : str or None
        Name of the layer record holding it (None at net level).
    path : str
        Where it sits: the declared fields leading to it (``"memory_data_param"``,
        ``"blobs[0]"``), empty directly in the layer (or net) record.
    message : str
        The message type it appears in (``"LayerParameter"``).
    number, wire_type, nbytes : int
        Field number, wire type, size of the whole record in bytes.
    reason : str
        ``"not in the schema"``, ``"wire type varint where the schema declares
        length-delimited"`` or ``"does not parse as the declared X"``.
    """

    layer: str | None
    path: str
    message: str
    number: int
    wire_type: int
    nbytes: int
    reason: str

    def describe(self) -> str:
        """One line: where, which number, how many bytes, why."""
        where = f"layer {self.layer!r}" if self.layer is not None else "net"
        if self.path:
            where += f" {self.path}"
        return (f"{where}: {self.message} field {self.number} "
                f"({WIRE_NAMES.get(self.wire_type, self.wire_type)}, {self.nbytes} B), {self.reason}")


def opaque_fields(data, message: str = "NetParameter", *, bvlc: bool = True,
                  demoted=None, limit: int = 10000) -> list:
    """List the fields a tolerant parse of ``data`` keeps as unknown bytes.

    Parameters
    ----------
    data : bytes
        A serialized message (e.g. a model skeleton).
    message : str
        Its type's short name.
    bvlc : bool
        The schema view, as for :func:`parse_tolerant`.
    demoted : iterable of (str, int), optional
        Fields already known not to parse (from :func:`parse_tolerant`);
        computed when not given.
    limit : int
        Stop after this many entries.

    Returns
    -------
    list of OpaqueField
        In wire order, depth first.
    """
    data = bytes(data)
    if demoted is None:
        demoted = parse_tolerant(data, message, bvlc=bvlc)[1]
    demoted = frozenset(demoted)
    ns = schema_without(demoted, bvlc=bvlc)
    out: list = []
    _walk(getattr(ns, message), data, 0, len(data), None, "", demoted, out, limit, 0)
    return out


def _walk(cls, buf, a, b, layer, path, demoted, out, limit, depth) -> None:
    desc = cls.DESCRIPTOR
    mname = short_name(desc)
    ns = classes_of(cls)
    counts: dict = {}
    for f in wire.iter_fields(buf, a, b):
        if len(out) >= limit:
            return
        fd = desc.fields_by_number.get(f.number)
        reason = None
        if (mname, f.number) in demoted:
            reason = "does not parse as the type our schema declares (another fork's meaning)"
        elif fd is None:
            reason = "not in the schema"
        elif f.wtype not in _wire_types(fd):
            want = "/".join(WIRE_NAMES[w] for w in _wire_types(fd))
            reason = f"wire type {WIRE_NAMES.get(f.wtype, f.wtype)} where the schema declares {want} {fd.name}"
        if reason is not None:
            out.append(OpaqueField(layer, path, mname, f.number, f.wtype, f.b - f.tag, reason))
            continue
        if fd.message_type is None or f.wtype != LEN or depth >= _MAX_DEPTH:
            continue
        sub = getattr(ns, short_name(fd.message_type))
        i = counts.get(f.number, 0)
        counts[f.number] = i + 1
        if mname == "NetParameter" and fd.name in ("layer", "layers"):
            _walk(sub, buf, f.a, f.b, _layer_name(buf, f.a, f.b, fd.name), "", demoted, out, limit, depth + 1)
            continue
        step = f"{fd.name}[{i}]" if _repeated(fd) else fd.name
        _walk(sub, buf, f.a, f.b, layer, f"{path} > {step}" if path else step, demoted, out, limit, depth + 1)


def _layer_name(buf, a, b, kind) -> str:
    number = 1 if kind == "layer" else 4  # LayerParameter.name / V1LayerParameter.name
    for f in wire.iter_fields(buf, a, b):
        if f.number == number and f.wtype == LEN:
            return bytes(buf[f.a:f.b]).decode("utf-8", errors="replace")
    return ""


def opaque_report(skeleton, limit: int = 10000) -> list:
    """What a model's net structure keeps as unknown bytes, as plain dicts (for ``info``).

    Each dict has ``layer``, ``path``, ``message``, ``number``, ``wire_type``
    (its name), ``bytes``, ``reason`` and ``maybe`` (the forks that use this
    number there, from :mod:`.forks`; '' when none is known). A skeleton that
    does not parse at all gives one entry saying so.
    """
    from .forks import hint

    if not skeleton:
        return []
    try:
        found = opaque_fields(skeleton, limit=limit)
    except WireError as e:
        return [{"layer": None, "path": "", "message": "NetParameter", "number": 0, "wire_type": "",
                 "bytes": len(skeleton), "reason": f"the net structure is not wire format ({e})", "maybe": ""}]
    return [{"layer": o.layer, "path": o.path, "message": o.message, "number": o.number,
             "wire_type": WIRE_NAMES.get(o.wire_type, str(o.wire_type)), "bytes": o.nbytes,
             "reason": o.reason, "maybe": hint(o.message, o.number)} for o in found]
