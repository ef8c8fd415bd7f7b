"""Positions of the kept weights of a pruned blob.

Methods (every one stores only plain arrays and ints; the flat mask length is
given back at decode time):

``gaps``
    Deep Compression's relative index, entropy coded. Each kept weight is
    preceded by the number of pruned weights skipped since the previous one.
    With ``b``-bit symbols, ``M = 2**b - 1`` is a filler ("skip M, keep
    nothing": DC's padding entry, without the padding weight) and ``0..M-1``
    mean "skip that many, then keep one". The symbols are Huffman coded; ``b``
    (1..8) is chosen per blob from exact code sizes computed from the counts.
    ``b = 1`` is a bitmask read up to the last kept weight.
``bitmask``
    The packed keep-mask (``np.packbits``), Huffman coded over byte values.
``gap4``
    Deep Compression's fixed 4-bit gaps with filler entries, not entropy
    coded (two symbols per byte): the baseline.
``all``
    Nothing kept out: no data at all.

``method="auto"`` (the default) computes every candidate's exact stored size
and keeps the smallest. On real zoo blobs pruned by magnitude at 50-90 %
``gaps`` wins (see benchmarks/bench_coding.py).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import CorruptDataError
from . import huffman as H
from .packedmask import PackedMask

__all__ = ["SparsePositions", "METHODS", "encode_positions", "decode_positions", "candidate_sizes"]

METHODS = ("gaps", "bitmask", "gap4", "all")
GAP_BITS = tuple(range(1, 9))


@dataclasses.dataclass(frozen=True)
class SparsePositions:
    """Coded positions of the kept weights.

    Attributes
    ----------
    method : str
        One of :data:`METHODS`.
    meta : dict
        Plain ints (``count`` of kept weights, gap ``bits``, stream sizes).
    parts : dict
        Name -> 1-D NumPy array.
    """

    method: str
    meta: dict
    parts: dict

    @property
    def nbytes(self) -> int:
        """Bytes of the parts plus 8 per meta entry."""
        return int(sum(p.nbytes for p in self.parts.values()) + 8 * len(self.meta))


def _flat_mask(mask):
    if isinstance(mask, PackedMask):  # read block by block, never unpacked whole
        return mask
    m = np.asarray(mask)
    if m.dtype != np.bool_:
        raise TypeError(f"mask must be boolean, got {m.dtype}")
    return m.reshape(-1)


def _gap_symbols(pos: np.ndarray, b: int) -> np.ndarray:
    """Gap stream with fillers for kept positions ``pos`` (ascending)."""
    M = (1 << b) - 1
    gaps = np.diff(pos, prepend=-1) - 1
    nfill = gaps // M
    ends = np.cumsum(nfill + 1) - 1
    out = np.full(int(ends[-1]) + 1 if ends.size else 0, M, np.uint8)
    out[ends] = (gaps - nfill * M).astype(np.uint8)
    return out


def _gap_positions(sym: np.ndarray, b: int, size: int, count: int) -> np.ndarray:
    """Inverse of :func:`_gap_symbols`, validated against ``size`` and ``count``."""
    M = (1 << b) - 1
    s = sym.astype(np.int64)
    if s.size and int(s.max()) > M:
        raise CorruptDataError("sparse gap symbol out of range")
    keep = s != M
    pos = (np.cumsum(s + keep) - 1)[keep]
    if pos.size != count:
        raise CorruptDataError(f"sparse positions: {pos.size} kept weights decoded, {count} expected")
    if pos.size and int(pos[-1]) >= size:
        raise CorruptDataError("sparse positions run past the end of the blob")
    return pos


def _gap_fill(out: np.ndarray, sym: np.ndarray, b: int, count: int) -> None:
    """Set ``out`` at the kept positions a gap stream describes, block by block
    (the checks of :func:`_gap_positions`, without int64 copies of the stream)."""
    M = (1 << b) - 1
    size = out.size
    base = 0  # position the next symbol starts from
    seen = 0
    for s in range(0, sym.size, _BLOCK):
        blk = sym[s : s + _BLOCK].astype(np.int64)
        if blk.size and int(blk.max()) > M:
            raise CorruptDataError("sparse gap symbol out of range")
        keep = blk != M
        blk += keep
        np.cumsum(blk, out=blk)
        blk += base - 1
        base = int(blk[-1]) + 1 if blk.size else base
        pos = blk[keep]
        seen += pos.size
        if seen > count:
            break
        if pos.size and int(pos[-1]) >= size:
            raise CorruptDataError("sparse positions run past the end of the blob")
        out[pos] = True
    if seen != count:
        raise CorruptDataError(f"sparse positions: {seen} kept weights decoded, {count} expected")


def _gap_counts(pos: np.ndarray, b: int) -> tuple[np.ndarray, int]:
    """Symbol counts of the gap stream without building it."""
    M = (1 << b) - 1
    gaps = np.diff(pos, prepend=-1) - 1
    nfill = gaps // M
    counts = np.bincount(gaps - nfill * M, minlength=M + 1)
    counts[M] += int(nfill.sum())
    return counts, int(counts.sum())


_BLOCK = 1 << 18  # mask elements per block: int64 temporaries stay at 2 MiB


def _gap_blocks(m: np.ndarray):
    """Yield the gaps (pruned weights before each kept one) block by block,
    as ``np.diff(np.flatnonzero(m), prepend=-1) - 1`` would give them, without
    an int64 copy of every kept position."""
    last = -1
    for s in range(0, m.size, _BLOCK):
        pos = np.flatnonzero(m[s : s + _BLOCK])
        if pos.size == 0:
            continue
        pos += s
        gaps = np.diff(pos, prepend=last) - 1
        last = int(pos[-1])
        yield gaps


def _all_gap_counts(m: np.ndarray, bits) -> dict:
    """``{b: (counts, n)}`` of the gap stream for every width ``b``, in one pass."""
    acc = {b: np.zeros((1 << b), np.int64) for b in bits}
    for gaps in _gap_blocks(m):
        for b in bits:
            M = (1 << b) - 1
            nfill = gaps // M
            c = np.bincount(gaps - nfill * M, minlength=M + 1)
            c[M] += int(nfill.sum())
            acc[b] += c
    return {b: (c, int(c.sum())) for b, c in acc.items()}


def _gap_stream(m: np.ndarray, b: int) -> np.ndarray:
    """The whole gap stream of width ``b`` (what ``_gap_symbols`` gives), built block by block."""
    pieces = [_gap_symbols_from_gaps(g, b) for g in _gap_blocks(m)]
    return np.concatenate(pieces) if pieces else np.zeros(0, np.uint8)


def _gap_symbols_from_gaps(gaps: np.ndarray, b: int) -> np.ndarray:
    M = (1 << b) - 1
    nfill = gaps // M
    ends = np.cumsum(nfill + 1) - 1
    out = np.full(int(ends[-1]) + 1 if ends.size else 0, M, np.uint8)
    out[ends] = (gaps - nfill * M).astype(np.uint8)
    return out


def _packbits(m) -> np.ndarray:
    """``np.packbits`` of a flat mask (a :class:`PackedMask` already is)."""
    return m.packed if isinstance(m, PackedMask) else np.packbits(m)


def _byte_counts(packed: np.ndarray) -> np.ndarray:
    c = np.zeros(256, np.int64)
    for s in range(0, packed.size, _BLOCK):
        c += np.bincount(packed[s : s + _BLOCK], minlength=256)
    return c


def _huff_size(counts: np.ndarray, n: int, chunk: int) -> int:
    lengths = H.code_lengths(counts, H.auto_max_len(int(np.count_nonzero(counts))))
    return H.stream_nbytes(counts, lengths, n, chunk)


def candidate_sizes(mask, *, chunk: int = 4096) -> dict:
    """Exact stored bytes of every method for ``mask`` (``gaps`` at its best ``b``).

    Returns
    -------
    dict
        ``{"gaps": (bytes, b), "bitmask": bytes, "gap4": bytes}`` (+ ``"all"``: 0
        when nothing is pruned). Meta entries are not counted (same for all).
    """
    return _candidate_sizes(_flat_mask(mask), chunk)[0]


def _candidate_sizes(m, chunk):
    """:func:`candidate_sizes` and the gap counts of every width behind it."""
    out = {}
    best = None
    gc = _all_gap_counts(m, GAP_BITS)
    for b in GAP_BITS:
        counts, n = gc[b]
        sz = _huff_size(counts, n, chunk)
        if best is None or sz < best[0]:
            best = (sz, b)
    out["gaps"] = best
    packed = _packbits(m)
    out["bitmask"] = _huff_size(_byte_counts(packed), packed.size, chunk)
    del packed
    out["gap4"] = (gc[4][1] + 1) // 2
    if m.all():
        out["all"] = 0
    return out, gc


def encode_positions(mask, *, method: str = "auto", chunk: int = 4096) -> SparsePositions:
    """Code which elements of a blob were kept.

    Parameters
    ----------
    mask : bool array or PackedMask
        True = kept; any shape (flattened in C order).
    method : {"auto", "gaps", "bitmask", "gap4", "all"}
        "auto" takes the smallest exact size.
    chunk : int
        Symbols per Huffman chunk.
    """
    m = _flat_mask(mask)
    count = m.count if isinstance(m, PackedMask) else int(np.count_nonzero(m))
    b = None
    gc = None
    if method == "auto":
        sizes, gc = _candidate_sizes(m, chunk)
        flat = {k: (v[0] if isinstance(v, tuple) else v) for k, v in sizes.items()}
        method = min(flat, key=lambda k: (flat[k], METHODS.index(k)))
        b = sizes["gaps"][1] if method == "gaps" else None
    if method == "all":
        if count != m.size:
            raise ValueError("method 'all' needs a mask with nothing pruned")
        return SparsePositions("all", {"count": count}, {})
    if method == "gaps":
        if b is None:
            b = candidate_sizes(m, chunk=chunk)["gaps"][1]
        counts, n = _all_gap_counts(m, [b])[b] if gc is None else gc[b]
        # the stream is packed piece by piece, never held whole
        s = H.encode_blocks((_gap_symbols_from_gaps(g, b) for g in _gap_blocks(m)),
                            n=n, counts=counts, nsym=1 << b, chunk=chunk)
        meta, parts = H.stream_parts(s)
        meta.update(count=count, bits=b)
        return SparsePositions("gaps", meta, parts)
    if method == "bitmask":
        s = H.encode(_packbits(m), nsym=256, chunk=chunk)
        meta, parts = H.stream_parts(s)
        meta.update(count=count)
        return SparsePositions("bitmask", meta, parts)
    if method == "gap4":
        sym = _gap_stream(m, 4)
        meta = {"count": count, "n": int(sym.size)}
        if sym.size % 2:
            sym = np.concatenate([sym, np.zeros(1, np.uint8)])
        return SparsePositions("gap4", meta, {"nibbles": (sym[0::2] << 4) | sym[1::2]})
    raise ValueError(f"unknown sparse method {method!r}; choose one of auto, {', '.join(METHODS)}")


def decode_positions(sp: SparsePositions, size: int) -> np.ndarray:
    """Flat boolean keep-mask of ``size`` elements from :func:`encode_positions`' output.

    Raises
    ------
    CorruptDataError
        The stored data does not describe ``meta["count"]`` kept positions
        inside ``size`` elements.
    """
    size = int(size)
    try:
        count = int(sp.meta["count"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptDataError("sparse positions lack their count") from exc
    if not 0 <= count <= size:
        raise CorruptDataError(f"sparse positions claim {count} kept of {size}")
    out = np.zeros(size, bool)
    if sp.method == "all":
        if count != size:
            raise CorruptDataError("sparse method 'all' with a partial count")
        out[:] = True
        return out
    if sp.method == "gaps":
        b = int(sp.meta.get("bits", 0))
        if b not in GAP_BITS:
            raise CorruptDataError(f"bad sparse gap width {b}")
        s = H.stream_from_parts(sp.meta, sp.parts)
        if s.nsym != 1 << b:
            raise CorruptDataError("sparse gap table has the wrong alphabet")
        if s.n > size + count:  # every symbol advances by >= 1, or is a kept one
            raise CorruptDataError("sparse gap stream longer than the blob allows")
        _gap_fill(out, H.decode(s), b, count)
        return out
    if sp.method == "bitmask":
        s = H.stream_from_parts(sp.meta, sp.parts)
        if s.n != (size + 7) // 8 or s.nsym != 256:
            raise CorruptDataError("sparse bitmask does not match the blob size")
        allbits = np.unpackbits(H.decode(s)).view(bool)
        bits = allbits[:size]
        if int(np.count_nonzero(bits)) != count or allbits[size:].any():
            raise CorruptDataError("sparse bitmask count mismatch")
        return bits.copy()
    if sp.method == "gap4":
        nib = np.asarray(sp.parts.get("nibbles", np.zeros(0, np.uint8)))
        n = int(sp.meta.get("n", -1))
        if nib.dtype != np.uint8 or not 0 <= n <= 2 * nib.size or nib.size != (n + 1) // 2 or n > size + count:
            raise CorruptDataError("sparse gap4 stream has the wrong size")
        sym = np.empty(2 * nib.size, np.uint8)
        sym[0::2], sym[1::2] = nib >> 4, nib & 15
        _gap_fill(out, sym[:n], 4, count)
        return out
    raise CorruptDataError(f"unknown sparse method {sp.method!r}")
