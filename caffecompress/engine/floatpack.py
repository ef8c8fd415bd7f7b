"""Float32 values as packed bit fields, and mantissa rounding for near-lossless blobs.

A float32 is a sign bit, an 8-bit exponent and a 23-bit mantissa. The
blobs stored losslessly (biases, BatchNorm statistics, PReLU slopes, Scale
factors) are small: a few hundred values, where LZMA over byte-shuffled
floats pays its start-up and gives ~30 bits a value. :func:`pack` writes
each value as its sign, its exponent less the blob's smallest one (in the
fewest bits that hold the range) and the mantissa's top ``m`` bits, where
``m`` keeps every set bit of every value: exact for any float32 array, and
short where the low mantissa bits are zero, which :func:`round_mantissa`
makes them.

:func:`round_mantissa` rounds each value to ``m`` mantissa bits (round half
to even on the bit pattern, as a float of that precision would): a relative
error under ``2**-(m + 1)`` per value, whatever its magnitude, so a
BatchNorm variance of 1e-3 keeps its precision beside one of 100 (a grid
step would not).

Stream (the ``fpack`` codec of the ``lossless`` method): one bit string,
most significant bit first, zero-padded to a byte: ``n`` sign bits, then
``n`` exponent offsets of ``ebits`` bits, then ``n`` mantissa heads of
``mbits`` bits; meta ``ebase`` (the smallest biased exponent), ``ebits``
and ``mbits``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["round_mantissa", "pack", "pack_nbytes", "unpack", "FPACK_MAX"]

#: Largest blob :func:`pack` takes and :func:`unpack` accepts (its bits are
#: unpacked one byte a bit: 32 MiB at this size).
FPACK_MAX = 1 << 20
_MANT = (1 << 23) - 1


def round_mantissa(x: np.ndarray, bits: int) -> np.ndarray:
    """``x`` (float32) rounded to ``bits`` mantissa bits, half to even.

    Values whose rounding would carry into the exponent get the next power
    of two (the float arithmetic's own carry); a value that would round to
    infinity, and NaN and infinity themselves, are left as they are.

    Parameters
    ----------
    x : numpy.ndarray
        float32, any shape.
    bits : int
        Mantissa bits kept, 0..23 (23: unchanged).

    Returns
    -------
    numpy.ndarray
        A new float32 array of ``x``'s shape.
    """
    if not 0 <= bits <= 23:
        raise ValueError(f"mantissa bits {bits} outside 0..23")
    a = np.ascontiguousarray(x, np.float32)
    if bits == 23:
        return a.copy()
    u = a.view(np.uint32).astype(np.uint64)
    sh = 23 - bits
    r = (u + ((1 << (sh - 1)) - 1) + ((u >> sh) & 1)) >> sh << sh
    r = r.astype(np.uint32)
    # NaN/Inf in, or an exponent carried to 255 (infinity) out: keep the value
    keep = ((u >> 23) & 0xFF) == 0xFF
    keep |= ((r >> 23) & 0xFF) == 0xFF
    r[keep] = u[keep].astype(np.uint32)
    return r.view(np.float32).reshape(a.shape)


def _fields(u: np.ndarray):
    e = ((u >> 23) & 0xFF).astype(np.int64)
    man = u & _MANT
    nz = man[man != 0]
    if nz.size:
        # trailing zeros of every set mantissa: the fewest bits that keep them all
        low = nz & (~nz + np.uint32(1))
        tz = int(np.frexp(low.astype(np.float64))[1].min()) - 1
        mbits = 23 - tz
    else:
        mbits = 0
    ebase = int(e.min()) if e.size else 0
    ebits = int(int(e.max()) - ebase).bit_length() if e.size else 0
    return e, man, ebase, ebits, mbits


def pack_nbytes(x: np.ndarray) -> int:
    """Bytes :func:`pack` would write for ``x`` (float32)."""
    u = np.ascontiguousarray(x, np.float32).reshape(-1).view(np.uint32)
    _, _, _, ebits, mbits = _fields(u)
    return (u.size * (1 + ebits + mbits) + 7) // 8


def _bits_of(v: np.ndarray, width: int) -> np.ndarray:
    """Each value's low ``width`` bits, most significant first (uint8, one a bit)."""
    if width == 0:
        return np.zeros((v.size, 0), np.uint8)
    b = np.unpackbits(v.astype(">u4").view(np.uint8).reshape(-1, 4), axis=1)
    return b[:, 32 - width :]


def pack(x: np.ndarray) -> tuple[dict, np.ndarray]:
    """``x`` (float32, at most :data:`FPACK_MAX` values) as ``(meta, stream)``; exact.

    Returns
    -------
    meta : dict
        ``ebase``, ``ebits``, ``mbits``.
    stream : numpy.ndarray of uint8
    """
    u = np.ascontiguousarray(x, np.float32).reshape(-1).view(np.uint32)
    if u.size > FPACK_MAX:
        raise ValueError(f"{u.size} values: fpack takes at most {FPACK_MAX}")
    e, man, ebase, ebits, mbits = _fields(u)
    sign = (u >> 31).astype(np.uint8)
    bits = np.concatenate([sign, _bits_of((e - ebase).astype(np.uint32), ebits).reshape(-1),
                           _bits_of(man >> (23 - mbits), mbits).reshape(-1)])
    return {"ebase": ebase, "ebits": ebits, "mbits": mbits}, np.packbits(bits)


def _int_meta(meta: dict, key: str, lo: int, hi: int) -> int:
    v = meta.get(key)
    if type(v) is not int or not lo <= v <= hi:  # noqa: E721  (bool is an int subclass)
        raise ValueError(f"fpack meta {key} {v!r} is not an integer in {lo}..{hi}")
    return v


def unpack(meta: dict, data: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` float32 values of an fpack stream (1-D).

    Raises
    ------
    ValueError
        Meta out of range, a stream of another length than the meta gives,
        or an exponent past 255.
    """
    ebase = _int_meta(meta, "ebase", 0, 255)
    ebits = _int_meta(meta, "ebits", 0, 8)
    mbits = _int_meta(meta, "mbits", 0, 23)
    if not 0 <= n <= FPACK_MAX:
        raise ValueError(f"fpack blob of {n} values (at most {FPACK_MAX})")
    width = 1 + ebits + mbits
    data = np.asarray(data, np.uint8).reshape(-1)
    if data.size != (n * width + 7) // 8:
        raise ValueError(f"fpack stream of {data.size} bytes, {(n * width + 7) // 8} expected")
    bits = np.unpackbits(data)[: n * width]
    sign = bits[:n].astype(np.uint32)

    def field(start, w):
        if w == 0:
            return np.zeros(n, np.uint32)
        b = bits[start : start + n * w].reshape(n, w).astype(np.uint32)
        return (b << np.arange(w - 1, -1, -1, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)

    e = field(n, ebits) + np.uint32(ebase)
    if n and int(e.max()) > 255:
        raise ValueError("fpack exponent past 255")
    man = field(n + n * ebits, mbits) << np.uint32(23 - mbits)
    return ((sign << np.uint32(31)) | (e << np.uint32(23)) | man).view(np.float32)
