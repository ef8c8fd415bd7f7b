"""Sorted codebook levels as exp-Golomb-coded gaps between their float keys.

A k-means codebook of a few hundred levels costs ~23 bits a level as packed
float fields (:mod:`~caffecompress.engine.floatpack`; the fidelity pass
rounds its levels to ``bits + 10`` mantissa bits). On the zoo's small blobs
that is a large part of a file: ultraface/RFB-320's fidelity-targeted file
held 22 KB of codebooks beside 47 KB of labels, most of them 128-512 levels
of a blob of 288-4096 weights. Sorted levels are close together, so the
number of ``m``-bit floats between two neighbours is a small number.

Every level with at most ``m`` mantissa bits (its low ``23 - m`` bits zero)
has the key ``sign * (bits(|v|) >> (23 - m))``, ``bits`` its float32 bit
pattern: the keys of sorted levels are sorted integers, and each level is
its key exactly. :func:`pack` stores non-decreasing finite float32 levels
(no negative zero) as meta ``lmbits`` (``m``: the fewest that hold every
level), ``lbase`` (the first key), ``lk`` (the exp-Golomb order ``k``) and a
bit string, most significant bit first, zero-padded to a byte: for each of
the ``n - 1`` gaps ``g`` between consecutive keys, ``x = g + 2**k`` written
as ``bit_length(x) - 1 - k`` zeros and then ``x`` in ``bit_length(x)`` bits.
Level ``i`` restores as the float32 of sign ``sign(key)`` and bit pattern
``|key| << (23 - m)``. Exp-Golomb codes a few large gaps (across the
exponents near zero) in ~2 log2 bits, where a Rice code would write them in
unary.

Functions
---------
:func:`pack`, :func:`pack_nbytes` - the stream and its size (None where the levels do not apply).
:func:`unpack` - the levels back, checked.
"""

from __future__ import annotations

import numpy as np

__all__ = ["pack", "pack_nbytes", "unpack"]

_KMAX = 30
_FINITE = 0x7F800000  # the bit pattern of infinity: every finite magnitude is below it


def _keys(book: np.ndarray):
    """``(m, keys)`` of non-decreasing finite float32 levels without a
    negative zero; None otherwise."""
    b = np.ascontiguousarray(book, np.float32).reshape(-1)
    if b.size < 1 or not np.all(np.isfinite(b)) or np.any(np.diff(b) < 0):
        return None
    u = b.view(np.uint32).astype(np.int64)
    if np.any(u == 0x80000000):
        return None
    mag = u & 0x7FFFFFFF
    low = mag & 0x7FFFFF
    tz = 23
    nz = low[low != 0]
    if nz.size:
        tz = int(np.min(nz & -nz)).bit_length() - 1  # the fewest trailing zero bits
    m = 23 - tz
    key = mag >> tz
    return m, np.where(u >> 31 == 1, -key, key)


def _eg_bits(g: np.ndarray, k: int) -> int:
    x = g + (1 << k)
    n = np.frexp(x.astype(np.float64))[1].astype(np.int64)  # bit lengths (x < 2**33: exact)
    return int((2 * n - 1 - k).sum())


def _order(g: np.ndarray) -> tuple[int, int]:
    """``(k, bits)`` of the cheapest exp-Golomb order for gaps ``g``."""
    return min(((k, _eg_bits(g, k)) for k in range(_KMAX + 1)), key=lambda t: t[1])


def _max_bytes(n: int) -> int:
    """The most bytes a stream of ``n`` levels may take (72 bits a gap: gaps are < 2**33)."""
    return 9 * max(n - 1, 0) + 1


def pack_nbytes(book: np.ndarray) -> int | None:
    """Bytes of :func:`pack`'s stream (None where it does not apply)."""
    got = _keys(book)
    if got is None:
        return None
    return (_order(np.diff(got[1]))[1] + 7) // 8


def pack(book: np.ndarray) -> tuple[dict, np.ndarray] | None:
    """``(meta, uint8 stream)`` of non-decreasing finite float32 levels, else None."""
    got = _keys(book)
    if got is None:
        return None
    m, key = got
    g = np.diff(key)
    k, total = _order(g)
    x = g + (1 << k)
    n = np.frexp(x.astype(np.float64))[1].astype(np.int64)
    length = 2 * n - 1 - k
    start = np.concatenate([[0], np.cumsum(length)[:-1]]).astype(np.int64)
    bits = np.zeros(total, np.uint8)
    lead = start + n - 1 - k  # where x's own bits begin, after the zeros
    for j in range(int(n.max()) if n.size else 0):  # x's bits, most significant first
        on = j < n
        bits[(lead + j)[on]] = ((x >> (n - 1 - j)) & 1)[on]
    return {"lmbits": m, "lbase": int(key[0]), "lk": k}, np.packbits(bits)


def unpack(meta: dict, stream: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` levels of :func:`pack` (float32).

    Raises
    ------
    ValueError
        Meta out of range, a stream that does not hold exactly ``n - 1``
        gaps, or keys that are not finite float32 levels.
    """
    m, base, k = meta.get("lmbits"), meta.get("lbase"), meta.get("lk")
    for name, v, lo, hi in (("lmbits", m, 0, 23), ("lbase", base, -(_FINITE - 1), _FINITE - 1), ("lk", k, 0, _KMAX)):
        if type(v) is not int or not lo <= v <= hi:  # noqa: E721  (bool is an int subclass)
            raise ValueError(f"level meta {name} {v!r} is not an integer in {lo}..{hi}")
    s = np.asarray(stream)
    if s.dtype != np.uint8 or s.ndim != 1:
        raise ValueError("the level stream is not uint8 bytes")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"level count {n!r}")
    if s.size > _max_bytes(n):  # a bound before unpacking (the writer never exceeds it)
        raise ValueError(f"a level stream of {s.size} bytes for {n} levels")
    bits = np.unpackbits(s)
    ones = np.flatnonzero(bits)
    gaps = np.zeros(n - 1, np.int64)
    p = 0
    for i in range(n - 1):
        j = int(np.searchsorted(ones, p))
        if j >= ones.size:
            raise ValueError("the level stream ends inside a gap")
        t = int(ones[j])  # x's leading one
        width = (t - p) + k + 1
        end = t + width
        if width > 34 or end > bits.size:
            raise ValueError("the level stream ends inside a gap")
        x = 0
        for b in bits[t:end]:
            x = (x << 1) | int(b)
        gaps[i] = x - (1 << k)
        p = end
    if bits.size - p >= 8 or bits[p:].any():
        raise ValueError("the level stream holds more than its gaps")
    key = base + np.concatenate([[0], np.cumsum(gaps)])
    mag = np.abs(key) << (23 - m)
    if np.any(mag >= _FINITE):
        raise ValueError("levels outside float32")
    out = (mag | np.where(key < 0, 0x80000000, 0)).astype(np.uint32).view(np.float32)
    return out
