"""Sorted codebook levels on a power-of-two grid, stored as Rice-coded gaps.

A k-means codebook of a few hundred levels costs ~23 bits a level as packed
float fields (:mod:`~caffecompress.engine.floatpack`, its levels rounded to
``bits + 10`` mantissa bits). On the zoo's small blobs that is a large part
of a file: ultraface/RFB-320's fidelity-targeted file held 22 KB of
codebooks beside 47 KB of labels, most of them 128-512 levels of a blob of
288-4096 weights. Sorted levels are close together, so their differences
are small numbers. :func:`round_levels` puts the levels on the grid
``2**e`` with ``e = floor(log2(mean spacing)) - EXTRA``: a level moves by at
most ``2**-(EXTRA + 1)`` of the mean spacing (the mantissa rounding's bound,
``2**-(bits + 11)`` of a level's magnitude, is the same for the largest
levels). :func:`pack` stores any non-decreasing float32 levels that are
integer multiples of one power of two (found from the values, not assumed):
meta ``lexp`` (the exponent ``e``), ``lbase`` (the first level over
``2**e``), ``lrice`` (the Rice parameter ``k``), and a bit string, most
significant bit first, zero-padded to a byte: for each of the ``n - 1``
gaps ``g`` between consecutive levels (over ``2**e``), ``g >> k`` zeros, a
one, then the low ``k`` bits of ``g``. Level ``i`` restores as the float32
of ``(lbase + g_1 + ... + g_i) * 2**lexp``, exact.

Functions
---------
:func:`round_levels` - levels onto their grid (None where it does not apply).
:func:`pack`, :func:`pack_nbytes` - the stream and its size (None where the levels are not on one grid).
:func:`unpack` - the levels back, checked.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["EXTRA", "round_levels", "pack", "pack_nbytes", "unpack"]

#: Grid bits below the mean level spacing.
EXTRA = 10
_QMAX = 1 << 24  # |level / 2**e| stays under this: every multiple is a float32
_EXP = (-160, 128)  # float32's powers of two, subnormals included
_KMAX = 31


def round_levels(book: np.ndarray) -> np.ndarray | None:
    """Non-decreasing ``book`` (float32, 1-D, >= 2 levels) on the grid
    ``2**e``, ``e = floor(log2(mean spacing)) - EXTRA``; None where the
    levels are not sorted and finite, all equal, or the grid would need more
    than 24 bits (levels far from zero beside a small spread)."""
    b = np.asarray(book, np.float64).reshape(-1)
    if b.size < 2 or not np.all(np.isfinite(b)) or np.any(np.diff(b) < 0) or b[-1] <= b[0]:
        return None
    e = math.floor(math.log2((b[-1] - b[0]) / (b.size - 1))) - EXTRA
    if not _EXP[0] <= e < _EXP[1]:
        return None
    q = np.rint(np.ldexp(b, -e))
    if np.abs(q).max() >= _QMAX:
        return None
    return np.ldexp(q, e).astype(np.float32)


def _grid(book: np.ndarray):
    """``(e, q)``: the largest power of two ``2**e`` that every level is a
    multiple of, and the integers ``q``; None if not sorted, finite, within
    24 bits on that grid, or all zero."""
    b = np.asarray(book, np.float32).reshape(-1)
    if b.size < 1 or not np.all(np.isfinite(b)) or np.any(np.diff(b) < 0):
        return None
    nz = b[b != 0].astype(np.float64)
    if nz.size == 0:
        return None
    m, ex = np.frexp(nz)  # nz = m * 2**ex, 0.5 <= |m| < 1, m has <= 24 significant bits
    mi = np.ldexp(m, 24).astype(np.int64)  # exact: the 24-bit significand
    tz = np.zeros(mi.size, np.int64)
    v = np.abs(mi)
    for _ in range(24):  # trailing zero bits of each significand
        odd = (v & 1) == 1
        tz += ~odd & (v > 0)
        v = np.where(odd, v, v >> 1)
    e = int((ex - 24 + tz).min())
    if not _EXP[0] <= e < _EXP[1]:
        return None
    q = np.rint(np.ldexp(b.astype(np.float64), -e)).astype(np.int64)
    if np.abs(q).max() >= _QMAX:
        return None
    return e, q


def _max_bytes(n: int) -> int:
    """The most bytes a stream of ``n`` levels may take (64 bits a gap)."""
    return 8 * max(n - 1, 0) + 1


def _rice_k(g: np.ndarray) -> tuple[int, int]:
    """``(k, bits)`` of the cheapest Rice parameter for gaps ``g``."""
    best = None
    for k in range(_KMAX + 1):
        bits = int(((g >> k) + 1 + k).sum())
        if best is None or bits < best[1]:
            best = (k, bits)
        if k and not (g >> k).any():
            break
    return best


def pack_nbytes(book: np.ndarray) -> int | None:
    """Bytes of :func:`pack`'s stream (None where it does not apply)."""
    got = _grid(book)
    if got is None:
        return None
    nb = (_rice_k(np.diff(got[1]))[1] + 7) // 8
    return nb if nb <= _max_bytes(got[1].size) else None


def pack(book: np.ndarray) -> tuple[dict, np.ndarray] | None:
    """``(meta, uint8 stream)`` of non-decreasing float32 levels on one power-of-two grid, else None."""
    got = _grid(book)
    if got is None:
        return None
    e, q = got
    g = np.diff(q)
    k, total = _rice_k(g)
    if (total + 7) // 8 > _max_bytes(q.size):
        return None
    bits = np.zeros(total, np.uint8)
    u = g >> k
    length = u + 1 + k
    start = np.concatenate([[0], np.cumsum(length)[:-1]]).astype(np.int64)
    bits[start + u] = 1  # each unary run's terminator
    for j in range(k):  # the low k bits, most significant first
        bits[start + u + 1 + j] = (g >> (k - 1 - j)) & 1
    return {"lexp": e, "lbase": int(q[0]), "lrice": k}, np.packbits(bits)


def unpack(meta: dict, stream: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` levels of :func:`pack` (float32).

    Raises
    ------
    ValueError
        Meta out of range, a stream that does not hold exactly ``n - 1``
        gaps, or levels outside the grid's range.
    """
    e, base, k = meta.get("lexp"), meta.get("lbase"), meta.get("lrice")
    for name, v, lo, hi in (("lexp", e, _EXP[0], _EXP[1] - 1), ("lbase", base, 1 - _QMAX, _QMAX - 1),
                            ("lrice", k, 0, _KMAX)):
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
    w = np.left_shift(1, np.arange(k - 1, -1, -1, dtype=np.int64))
    p = 0
    for i in range(n - 1):
        j = int(np.searchsorted(ones, p))
        if j >= ones.size:
            raise ValueError("the level stream ends inside a gap")
        t = int(ones[j])  # the unary run's terminator
        end = t + 1 + k
        if end > bits.size:
            raise ValueError("the level stream ends inside a gap")
        gaps[i] = ((t - p) << k) + (int(bits[t + 1 : end].astype(np.int64) @ w) if k else 0)
        p = end
    if bits.size - p >= 8 or bits[p:].any():
        raise ValueError("the level stream holds more than its gaps")
    q = base + np.concatenate([[0], np.cumsum(gaps)])
    if np.abs(q).max() >= _QMAX:
        raise ValueError("levels outside the grid's range")
    out = np.ldexp(q.astype(np.float64), e).astype(np.float32)
    if not np.all(np.isfinite(out)):
        raise ValueError("levels outside float32")
    return out
