"""Canonical, length-limited Huffman codes: lengths, codes, decoding tables.

Code lengths come from package-merge (Larmore & Hirschberg), which gives the
exact minimum total length among prefix codes whose lengths do not exceed
``max_len`` (host, tiny: ``O(max_len * nsym log nsym)``; a numba twin when
installed). Codes are canonical: sorted by ``(length, symbol)``, consecutive
integers, so only the lengths are stored and a decoding table is one
``np.repeat``. :mod:`~caffecompress.engine.huffman` codes streams with them.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ..errors import CorruptDataError

__all__ = [
    "MAX_SYMBOLS",
    "MAX_CODE_LEN",
    "auto_max_len",
    "code_lengths",
    "canonical_codes",
    "decode_table",
    "coded_bits",
]

#: Largest alphabet (12-bit labels).
MAX_SYMBOLS = 4096
#: Longest code a stream may use: keeps the 2**L decoding table <= 4 MiB and a
#: code plus a 7-bit misalignment inside one 32-bit window.
MAX_CODE_LEN = 20


def lazy_numba(build):
    """Decorator: ``build(numba)`` returns a compiled kernel; the decorated
    name becomes a cached getter of it, None where numba is not installed
    (the ``fast`` extra), so numba is imported on first use only."""

    @functools.cache
    def get():
        try:
            import numba  # noqa: PLC0415  (optional extra)
        except Exception:  # pragma: no cover - exercised where numba is absent
            return None
        return build(numba)

    get.__doc__ = build.__doc__
    return get


def auto_max_len(nused: int) -> int:
    """Default length limit for an alphabet of ``nused`` present symbols.

    ``clamp(ceil(log2(nused)) + 6, 12, 15)``: 12 bits (a 16 KiB decoding
    table) for up to 64 symbols, 14 for 256, 15 from 512 on. Measured on
    zoo and VGG-16 labels with k = 256, a 12-bit limit costs 0.5 % over the
    unrestricted Huffman code and 14 bits 0.1 %, while the compiled decoder
    still runs at ~190 MB/s.
    """
    need = max(1, math.ceil(math.log2(max(nused, 1))))
    return int(min(15, max(12, need + 6)))


def code_lengths(counts, max_len: int, *, engine: str = "auto") -> np.ndarray:
    """Optimal length-limited code lengths for symbol ``counts`` (package-merge).

    Parameters
    ----------
    counts : array_like of int
        Non-negative occurrence count of every symbol.
    max_len : int
        Longest allowed code, 1..MAX_CODE_LEN; must satisfy
        ``2**max_len >= number of present symbols``.
    engine : {"auto", "numpy"}
        "auto" runs the numba twin of the NumPy package-merge when numba is
        installed (same merge order, same lengths; ~20x less fixed cost).

    Returns
    -------
    numpy.ndarray
        uint8 lengths, 0 for absent symbols; minimal ``sum(counts * lengths)``
        over all prefix codes within the limit. One present symbol gets 1.
    """
    counts = np.asarray(counts)
    if counts.ndim != 1:
        raise ValueError("counts must be 1-D")
    if counts.size and counts.min() < 0:
        raise ValueError("counts must be non-negative")
    if not 1 <= max_len <= MAX_CODE_LEN:
        raise ValueError(f"max_len must be in 1..{MAX_CODE_LEN}, got {max_len}")
    counts = counts.astype(np.int64)
    out = np.zeros(counts.size, np.uint8)
    used = np.flatnonzero(counts)
    m = used.size
    if m == 0:
        return out
    if m == 1:
        out[used] = 1
        return out
    if m > (1 << max_len):
        raise ValueError(f"{m} symbols cannot be coded in at most {max_len} bits")
    # Leaves ascending by weight, ties by symbol (stable): the leaves selected
    # at any level are then always a prefix of this order.
    order = used[np.argsort(counts[used], kind="stable")]
    leaves = counts[order]
    run = _numba_package_merge() if engine != "numpy" else None
    lens_sorted = run(leaves, int(max_len)) if run is not None else _package_merge(leaves, int(max_len))
    out[order] = lens_sorted
    return out


def _package_merge(leaves: np.ndarray, max_len: int) -> np.ndarray:
    """Package-merge over ascending ``leaves`` (NumPy reference); lengths in that order."""
    m = leaves.size
    # Build the merged lists from the deepest level up, remembering for each
    # list how many leaves lie in every prefix. A package of the list below
    # is the sum of an adjacent pair.
    cum_leaf = [np.arange(1, m + 1)]  # per level (deepest first)
    prev = leaves
    for _ in range(max_len - 1):
        pk = prev[: prev.size // 2 * 2].reshape(-1, 2).sum(axis=1)
        w = np.concatenate([leaves, pk])
        is_leaf = np.concatenate([np.ones(m, bool), np.zeros(pk.size, bool)])
        srt = np.argsort(w, kind="stable")  # leaves win ties: still optimal
        prev = w[srt]
        cum_leaf.append(np.cumsum(is_leaf[srt]))
    # Walk back from the top level (level 1): take the first 2m-2 items; a
    # selected package means its two children are selected one level deeper.
    take = 2 * m - 2
    nleaf = np.empty(max_len, np.int64)
    for lev, cl in enumerate(reversed(cum_leaf)):
        nl = int(cl[take - 1]) if take else 0
        nleaf[lev] = nl
        take = 2 * (take - nl)
    # Leaf j's code length = number of levels whose selected prefix covers it.
    lens = np.zeros(m + 1, np.int64)
    np.add.at(lens, nleaf, 1)
    return np.cumsum(lens[::-1])[::-1][1:]


@lazy_numba
def _numba_package_merge(numba):
    """numba twin of :func:`_package_merge` (None without numba)."""

    @numba.njit(cache=True, nogil=True)
    def run(leaves, max_len):  # pragma: no cover - compiled
        m = leaves.size
        cl = np.zeros((max_len, 2 * m), np.int64)
        for i in range(m):
            cl[0, i] = i + 1
        prev = np.empty(2 * m, np.int64)
        cur = np.empty(2 * m, np.int64)
        prev[:m] = leaves
        psize = m
        for lev in range(1, max_len):
            npk = psize // 2
            i = 0
            j = 0
            k = 0
            nl = 0
            while i < m or j < npk:
                if j >= npk or (i < m and leaves[i] <= prev[2 * j] + prev[2 * j + 1]):
                    cur[k] = leaves[i]  # leaves win ties, as the stable sort does
                    i += 1
                    nl += 1
                else:
                    cur[k] = prev[2 * j] + prev[2 * j + 1]
                    j += 1
                cl[lev, k] = nl
                k += 1
            prev[:k] = cur[:k]
            psize = k
        lens = np.zeros(m, np.int64)
        take = 2 * m - 2
        for lev in range(max_len - 1, -1, -1):
            nl = cl[lev, take - 1] if take > 0 else 0
            for j in range(nl):
                lens[j] += 1
            take = 2 * (take - nl)
        return lens

    return run


def _check_lengths(lengths: np.ndarray) -> tuple[np.ndarray, int]:
    """Validate stored code lengths; return (symbols in canonical order, max length)."""
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or lengths.dtype != np.uint8:
        raise CorruptDataError("Huffman lengths must be a 1-D uint8 array")
    if lengths.size > MAX_SYMBOLS:
        raise CorruptDataError(f"Huffman table has {lengths.size} symbols (> {MAX_SYMBOLS})")
    L = int(lengths.max()) if lengths.size else 0
    if L > MAX_CODE_LEN:
        raise CorruptDataError(f"Huffman code length {L} exceeds {MAX_CODE_LEN}")
    used = np.flatnonzero(lengths)
    if used.size == 0:
        return used, 0
    if used.size == 1:
        if L != 1:
            raise CorruptDataError("a single-symbol Huffman code must have length 1")
        return used, 1
    kraft = int((np.int64(1) << (L - lengths[used].astype(np.int64))).sum())
    if kraft != (1 << L):
        raise CorruptDataError("Huffman code lengths do not form a complete prefix code")
    order = used[np.lexsort((used, lengths[used]))]
    return order, L


def canonical_codes(lengths) -> np.ndarray:
    """Canonical codes (uint32, right-aligned) for valid ``lengths``; 0 where absent.

    Symbols sorted by ``(length, symbol)`` get consecutive codes: the code of
    the i-th is the Kraft prefix sum of the previous ones, scaled to its length.
    """
    lengths = np.asarray(lengths, np.uint8)
    order, L = _check_lengths(lengths)
    codes = np.zeros(lengths.size, np.uint32)
    if order.size == 0:
        return codes
    ln = lengths[order].astype(np.int64)
    span = np.int64(1) << (L - ln)
    start = np.concatenate([[0], np.cumsum(span)[:-1]])
    codes[order] = (start >> (L - ln)).astype(np.uint32)
    return codes


def decode_table(lengths) -> tuple[np.ndarray, int]:
    """The 2**L lookup table ``(length << 16) | symbol`` (uint32) and L.

    Canonical codes occupy consecutive ranges of the L-bit table, so the table
    is a repeat of the sorted symbols. Entries no code reaches (only possible
    for a single-symbol code) hold length 0.
    """
    order, L = _check_lengths(np.asarray(lengths))
    if order.size == 0:
        return np.zeros(1, np.uint32), 0
    lengths = np.asarray(lengths)
    ln = lengths[order].astype(np.int64)
    entry = (ln.astype(np.uint32) << 16) | order.astype(np.uint32)
    table = np.zeros(1 << L, np.uint32)
    rep = np.repeat(entry, np.int64(1) << (L - ln))
    table[: rep.size] = rep
    return table, L


def coded_bits(counts, lengths) -> int:
    """Total payload bits of a stream with these symbol ``counts`` and code ``lengths``."""
    return int((np.asarray(counts, np.int64) * np.asarray(lengths, np.int64)).sum())
