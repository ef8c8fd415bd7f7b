"""A small protobuf wire-format scanner and encoder (no schema needed).

The weights of a ``.caffemodel`` are a few huge packed ``float`` fields inside
an otherwise small message tree. Letting protobuf materialise them costs a
full decode of every value (and caps messages at 2 GiB); walking the wire
format by hand costs one pass over the *tags* only, after which each packed
payload is a byte span that NumPy reads directly.

Everything here works on any object supporting ``buf[i] -> int`` and slicing
(``bytes``, ``memoryview``, ``mmap``). Positions are absolute byte offsets.
Errors are :class:`WireError` (no file name: callers add the file and layer
when they turn it into a :mod:`caffecompress.errors` type).
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np

__all__ = [
    "VARINT",
    "I64",
    "LEN",
    "I32",
    "WireError",
    "Field",
    "read_varint",
    "next_field",
    "iter_fields",
    "encode_varint",
    "encode_key",
    "encode_len_field",
    "unpacked_run",
]

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5

# Field numbers are at most 2^29 - 1; deeper group nesting than this is hostile.
_MAX_FIELD = (1 << 29) - 1
_MAX_GROUP_DEPTH = 64


class WireError(Exception):
    """Malformed wire data at ``pos``; ``truncated`` when it ran past the end."""

    def __init__(self, msg: str, pos: int, truncated: bool = False):
        super().__init__(f"{msg} at byte {pos}")
        self.pos = pos
        self.truncated = truncated


class Field(NamedTuple):
    """One field record.

    ``a``/``b`` are the value for VARINT (``a`` = value, ``b`` = end of the
    record) and the payload span ``[a, b)`` for every other wire type.
    ``tag`` is where the record (its key) starts, so ``buf[tag:b]`` is the
    whole record verbatim.
    """

    number: int
    wtype: int
    a: int
    b: int
    tag: int


def read_varint(buf, pos: int, end: int) -> tuple[int, int]:
    """Decode a base-128 varint at ``pos``; return ``(value, next_pos)``.

    Raises :class:`WireError` (``truncated=True``) when it runs past ``end``
    and when it is longer than 10 bytes.
    """
    result = 0
    shift = 0
    start = pos
    while True:
        if pos >= end:
            raise WireError("varint runs past the end", start, truncated=True)
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError("varint longer than 10 bytes", start)


def _skip_group(buf, pos: int, end: int, number: int, depth: int) -> int:
    """Skip a (deprecated) group body; return the position after its end tag."""
    if depth > _MAX_GROUP_DEPTH:
        raise WireError("groups nested too deeply", pos)
    while True:
        tag = pos
        key, pos = read_varint(buf, pos, end)
        num, wt = key >> 3, key & 7
        if wt == EGROUP:
            if num != number:
                raise WireError("mismatched end-group tag", tag)
            return pos
        pos = _skip_value(buf, pos, end, num, wt, tag, depth + 1)[1]


def _skip_value(buf, pos, end, num, wt, tag, depth=0) -> tuple[int, int]:
    """Return ``(a, b)`` for a value starting at ``pos`` (see :class:`Field`)."""
    if wt == VARINT:
        return read_varint(buf, pos, end)
    if wt == LEN:
        n, p = read_varint(buf, pos, end)
        if n > end - p:
            raise WireError(f"field {num}: length {n} runs past the end", tag, truncated=True)
        return p, p + n
    if wt == I32:
        if pos + 4 > end:
            raise WireError(f"field {num}: fixed32 runs past the end", tag, truncated=True)
        return pos, pos + 4
    if wt == I64:
        if pos + 8 > end:
            raise WireError(f"field {num}: fixed64 runs past the end", tag, truncated=True)
        return pos, pos + 8
    if wt == SGROUP:
        return pos, _skip_group(buf, pos, end, num, depth)
    raise WireError(f"field {num}: invalid wire type {wt}", tag)


def next_field(buf, pos: int, end: int) -> Field:
    """Decode the field record starting at ``pos`` (``pos < end``)."""
    tag = pos
    key, pos = read_varint(buf, pos, end)
    num, wt = key >> 3, key & 7
    if num == 0 or num > _MAX_FIELD:
        raise WireError(f"invalid field number {num}", tag)
    if wt == EGROUP:
        raise WireError("unexpected end-group tag", tag)
    a, b = _skip_value(buf, pos, end, num, wt, tag)
    return Field(num, wt, a, b, tag)


def iter_fields(buf, start: int, end: int) -> Iterator[Field]:
    """Yield every field record of the message occupying ``buf[start:end]``."""
    pos = start
    while pos < end:
        f = next_field(buf, pos, end)
        pos = f.b
        yield f


def unpacked_run(buf, pos: int, end: int, key: int, width: int) -> int:
    """Count consecutive unpacked fixed-width records with one-byte ``key`` from ``pos``.

    An unpacked ``repeated float`` is ``key, 4 bytes, key, 4 bytes, ...``;
    this finds the run length with one vectorised comparison instead of a
    Python loop per element.
    """
    step = width + 1
    n = (end - pos) // step
    if n == 0:
        return 0
    keys = np.frombuffer(buf, np.uint8, count=n * step, offset=pos)[::step]
    bad = np.flatnonzero(keys != key)
    return int(bad[0]) if bad.size else n


def encode_varint(value: int) -> bytes:
    """Encode a non-negative int (or a negative int64 as 10 bytes) as a varint."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_key(number: int, wtype: int) -> bytes:
    """Encode a field key."""
    return encode_varint((number << 3) | wtype)


def encode_len_field(number: int, payload_len: int) -> bytes:
    """Key and length prefix of a length-delimited field of ``payload_len`` bytes."""
    return encode_key(number, LEN) + encode_varint(payload_len)
