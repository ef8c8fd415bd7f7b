"""Canonical, length-limited Huffman coding of symbol streams, decodable in parallel.

The stream format (all bit strings MSB first):

* ``lengths`` -- uint8[nsym], the code length of every symbol (0 = absent).
  Only lengths are stored: codes are rebuilt canonically (sorted by
  ``(length, symbol)``, consecutive integers, left-aligned), so a decoding
  table is one ``np.repeat``.
* ``payload`` -- the concatenated codes, packed into bytes, zero padded to a
  whole byte.
* ``offsets`` -- uint64[nchunks + 1]: the bit offset where every chunk of
  ``chunk`` symbols starts, plus the total bit count as a sentinel. Chunks are
  contiguous (a chunk ends exactly where the next begins), so the offsets cost
  nothing but their own bytes and let every chunk be decoded independently.

Decoders, all with the same checks and the same output:

* :func:`decode_numpy` -- all chunks advance one symbol per step (lock-step);
  the NumPy twin of the CUDA kernel (:mod:`.huffman_cuda`, one thread per
  chunk). Its cost is ``chunk`` steps whatever the size, so it is fast on
  long streams (many chunks) and slow on short ones;
* :func:`decode_doubling` -- NumPy for short streams: every bit position
  decoded as a code start, chains listed by pointer doubling;
* a numba-compiled sequential loop (the ``fast`` extra), the default host
  decoder when numba is installed (~150-250 MB/s on one core).

Encoding is a table lookup, a cumsum of lengths and word assembly (NumPy, or
CuPy with integer atomics), or the numba loop; both write identical bytes.
:func:`stream_parts` gives the compact stored form: code lengths as
zigzag deltas under a fixed prefix code (:func:`pack_lengths`), uint32
offsets without the leading 0.

Code lengths, canonical codes and decoding tables come from
:mod:`~caffecompress.engine.huffman_code` (re-exported here). A stream with
one distinct symbol gets a 1-bit code; an empty stream has an empty payload
and ``offsets == [0]``.

Decoding validates everything it reads before trusting it: the lengths form a
complete prefix code (Kraft sum exactly one) or a single 1-bit code, the
offsets start at zero, increase within the bounds the lengths allow, the
payload has exactly the bytes the sentinel needs, and every chunk ends
exactly at the next chunk's offset. Any failure raises
:class:`~caffecompress.errors.CorruptDataError`; damage that still passes
these checks (a flipped payload bit that happens to keep every chunk's
length) decodes to wrong symbols without crashing -- the container's CRC32
catches those.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..errors import CorruptDataError
from . import huffman_code as _code
from .huffman_code import (
    MAX_CODE_LEN,
    MAX_SYMBOLS,
    auto_max_len,
    canonical_codes,
    code_lengths,
    coded_bits,
    decode_table,
    lazy_numba,
)

__all__ = [
    "HuffmanStream",
    *_code.__all__,  # re-exported: the code construction
    "encode",
    "encode_blocks",
    "decode",
    "decode_numpy",
    "decode_doubling",
    "decode_blocks",
    "have_compiled",
    "stream_parts",
    "stream_from_parts",
    "stream_nbytes",
    "pack_lengths",
    "unpack_lengths",
]



@dataclasses.dataclass(frozen=True)
class HuffmanStream:
    """A Huffman-coded symbol stream (all fields plain NumPy).

    Attributes
    ----------
    lengths : numpy.ndarray
        uint8[nsym], code length per symbol, 0 for an absent symbol.
    payload : numpy.ndarray
        uint8 bit stream, MSB first, zero padded to a byte.
    offsets : numpy.ndarray
        uint64[ceil(n / chunk) + 1], bit offset of every chunk start followed
        by the total bit count.
    n : int
        Number of symbols.
    chunk : int
        Symbols per chunk (the last chunk may be shorter).
    """

    lengths: np.ndarray
    payload: np.ndarray
    offsets: np.ndarray
    n: int
    chunk: int

    @property
    def nsym(self) -> int:
        """Alphabet size."""
        return int(self.lengths.size)

    @property
    def nbytes(self) -> int:
        """Bytes of everything stored: lengths + payload + offsets (+ two ints)."""
        return int(self.lengths.nbytes + self.payload.nbytes + self.offsets.nbytes + 16)

    @property
    def nbits(self) -> int:
        """Payload bits actually used (the sentinel offset)."""
        return int(self.offsets[-1]) if self.offsets.size else 0


# --------------------------------------------------------------------------
# encoding (vectorised; table lookup, cumsum, word assembly)
# --------------------------------------------------------------------------


def _host(a):
    return a if isinstance(a, np.ndarray) else a.get()


def encode(
    symbols, *, nsym: int, max_len: int | None = None, chunk: int = 4096, xp=np, engine: str = "auto"
) -> HuffmanStream:
    """Huffman-code a stream of integer symbols in ``[0, nsym)``.

    Parameters
    ----------
    symbols : array_like
        1-D integer symbols (NumPy, or CuPy when ``xp`` is cupy).
    nsym : int
        Alphabet size, 1..4096.
    max_len : int, optional
        Code length limit (default :func:`auto_max_len` of the symbols present).
    chunk : int
        Symbols per independently decodable chunk.
    xp : module
        numpy or cupy; the code table is built on the host either way.
    engine : {"auto", "numpy", "compiled"}
        Host packer: the vectorised NumPy reference, or the numba-compiled
        loop ("auto": compiled when numba is installed). Same bytes either way.

    Returns
    -------
    HuffmanStream
        Plain NumPy arrays, identical for both backends.
    """
    if not 1 <= nsym <= MAX_SYMBOLS:
        raise ValueError(f"nsym must be in 1..{MAX_SYMBOLS}, got {nsym}")
    if chunk < 1 or chunk > (1 << 30):
        raise ValueError(f"chunk must be in 1..2**30, got {chunk}")
    sym = xp.asarray(symbols)
    if sym.ndim != 1:
        sym = sym.reshape(-1)
    if sym.dtype.kind not in "ui":
        raise TypeError(f"symbols must be integers, got {sym.dtype}")
    n = int(sym.size)
    if n == 0:
        return HuffmanStream(
            np.zeros(nsym, np.uint8), np.zeros(0, np.uint8), np.zeros(1, np.uint64), 0, chunk
        )
    if sym.dtype.kind == "i" and int(sym.min()) < 0:
        raise ValueError(f"symbols must lie in [0, {nsym})")
    counts = _symbol_counts(sym, nsym, xp)
    nused = int(np.count_nonzero(counts))
    lim = auto_max_len(nused) if max_len is None else int(max_len)
    lengths = code_lengths(counts, lim, engine="numpy" if engine == "numpy" else "auto")
    codes = canonical_codes(lengths)
    nbits = coded_bits(counts, lengths)
    run = _numba_part_encoder() if (xp is np and engine != "numpy") else None
    if engine == "compiled" and run is None:
        raise RuntimeError("the compiled encoder needs numba (pip install 'caffecompress[fast]')")
    if run is not None:
        payload = np.zeros((nbits + 7) // 8, np.uint8)
        offsets = np.empty(-(-n // chunk) + 1, np.uint64)
        offsets[-1] = nbits
        state = np.zeros(5, np.int64)
        run(np.ascontiguousarray(sym), lengths, codes, int(chunk), payload, offsets, state)
        _flush(payload, state)
    else:
        payload, offsets = _pack(sym, lengths, codes, n, nbits, int(chunk), xp)
    return HuffmanStream(lengths, payload, offsets, n, int(chunk))


_COUNT_BLOCK = 1 << 18  # symbols per host bincount: its intp copy stays at 2 MiB
_DEVICE_COUNT_BLOCK = 1 << 22  # on a GPU, fewer launches and syncs


def _symbol_counts(sym, nsym: int, xp) -> np.ndarray:
    """int64 count of every symbol, block by block (bincount copies its input
    to intp: on a whole 100M-symbol stream that would be 800 MB)."""
    counts = np.zeros(nsym, np.int64)
    step = _COUNT_BLOCK if xp is np else _DEVICE_COUNT_BLOCK
    for s in range(0, int(sym.size), step):
        blk = sym[s : s + step]
        c = _host(xp.bincount(blk if xp is np and blk.dtype.kind == "u" else blk.astype(xp.int64), minlength=nsym))
        if c.size > nsym:
            raise ValueError(f"symbols must lie in [0, {nsym})")
        counts += c
    return counts


def _pack(sym, lengths, codes, n: int, nbits: int, chunk: int, xp):
    """Vectorised packing (NumPy reference, also the CuPy path); return (payload, offsets).

    On the host the stream is packed in pieces of :data:`_PACK_PIECE`
    symbols (:class:`_Packer`), so the per-symbol temporaries (~22 bytes a
    symbol) stay at a piece's size; on a device in one piece.
    """
    pk = _Packer(lengths, codes, n, nbits, chunk, xp)
    pk.add(sym)
    return pk.finish()


_PACK_PIECE = 1 << 20  # host symbols packed at a time by the NumPy packer


class _Packer:
    """The vectorised packer, fed piece by piece (any piece sizes; the same
    payload and offsets as one piece)."""

    def __init__(self, lengths, codes, n, nbits, chunk, xp):
        self.xp, self.n, self.nbits, self.chunk = xp, int(n), int(nbits), int(chunk)
        self.pdt = xp.uint32 if nbits < (1 << 32) - 64 else xp.uint64
        self.lengths = xp.asarray(lengths)
        self.shift0 = xp.asarray((64 - lengths.astype(np.int64)).astype(np.uint8))
        self.codes = xp.asarray(codes.astype(np.uint64))
        # 32-bit words, MSB first, plus one spare for the last window's low half
        self.out = xp.zeros((self.nbits + 31) // 32 + 2, xp.uint32)
        self.offsets = np.empty(-(-self.n // self.chunk) + 1, np.uint64)
        self.offsets[-1] = self.nbits
        self.bit = 0  # where the next piece starts
        self.done = 0  # symbols packed so far

    def add(self, sym) -> None:
        """Pack the next symbols (on the host in pieces of :data:`_PACK_PIECE`)."""
        step = _PACK_PIECE if self.xp is np else max(int(sym.size), 1)
        for s0 in range(0, int(sym.size), step):
            self._add_piece(sym[s0 : s0 + step])

    def _add_piece(self, sym) -> None:
        xp, pdt, m = self.xp, self.pdt, int(sym.size)
        if m == 0:
            return
        ln = self.lengths[sym]
        pos = xp.empty(m + 1, pdt)
        pos[0] = self.bit
        xp.cumsum(ln, dtype=pdt, out=pos[1:])
        pos[1:] += pdt(self.bit)
        del ln
        starts = pos[:-1]
        # chunk starts among this piece's symbols (global index % chunk == 0)
        first = (-self.done) % self.chunk
        self.offsets[(self.done + first) // self.chunk : -(-(self.done + m) // self.chunk)] = \
            _host(starts[first :: self.chunk]).astype(np.uint64)
        # Each code (<= 20 bits) starting at bit p lies inside the 64-bit
        # window that begins at 32-bit word p >> 5. Codes do not overlap, so
        # summing the shifted codes of a word equals OR-ing them, and so
        # does adding a piece's words to its neighbours' (disjoint bits).
        shift = self.shift0[sym]
        shift -= (starts & pdt(31)).astype(xp.uint8)
        v = self.codes[sym] << shift.astype(xp.uint64)
        del shift
        word = starts >> pdt(5)
        w0 = int(word[0])
        nw = int(word[-1]) - w0 + 1
        if xp is np:
            # every word of the piece holds at least one code start (codes
            # are shorter than a word): the groups are words w0..w0+nw-1
            grp = np.zeros(nw, np.int64)
            np.cumsum(np.bincount(word - pdt(w0), minlength=nw)[:-1], out=grp[1:])
            g = np.add.reduceat(v, grp)
        else:  # device: integer atomics are order-free, so this is deterministic
            g = xp.zeros(nw, xp.uint64)
            xp.add.at(g, (word - pdt(w0)).astype(xp.int64), v)
        del v, word
        self.out[w0 : w0 + nw] += (g >> xp.uint64(32)).astype(xp.uint32)
        self.out[w0 + 1 : w0 + nw + 1] += (g & xp.uint64(0xFFFFFFFF)).astype(xp.uint32)
        self.bit = int(pos[-1])
        self.done += m

    def finish(self):
        nw32 = (self.nbits + 31) // 32
        payload = _host(self.out[:nw32]).astype(">u4").view(np.uint8)[: (self.nbits + 7) // 8].copy()
        return payload, self.offsets


def encode_blocks(blocks, *, n: int, counts, nsym: int, max_len: int | None = None,
                  chunk: int = 4096) -> HuffmanStream:
    """Huffman-code a stream handed over in pieces, with its symbol counts known.

    Gives the same :class:`HuffmanStream` as ``encode(np.concatenate(list(blocks)),
    nsym=nsym, ...)`` without the whole stream in memory: ``counts`` fixes the
    code (and the payload size), then every piece is packed where the last
    one stopped.

    Parameters
    ----------
    blocks : iterable of 1-D host integer arrays
        The symbols in order, any piece sizes; ``n`` in all.
    n : int
        Total number of symbols.
    counts : array_like of int
        Occurrences of every symbol in the whole stream (length ``nsym``).
    nsym, max_len, chunk
        As :func:`encode`.

    Raises
    ------
    ValueError
        The pieces do not hold ``n`` symbols with exactly these ``counts``.
    """
    if not 1 <= nsym <= MAX_SYMBOLS:
        raise ValueError(f"nsym must be in 1..{MAX_SYMBOLS}, got {nsym}")
    if chunk < 1 or chunk > (1 << 30):
        raise ValueError(f"chunk must be in 1..2**30, got {chunk}")
    counts = np.asarray(counts, np.int64)
    if counts.shape != (nsym,) or int(counts.sum()) != n or (counts < 0).any():
        raise ValueError("counts must give every symbol's count and sum to n")
    run = _numba_part_encoder()
    if n == 0:
        pieces = [np.asarray(b).reshape(-1) for b in blocks]
        if sum(p.size for p in pieces):
            raise ValueError(f"the blocks hold more than {n} symbols")
        return encode(np.zeros(0, np.uint8), nsym=nsym, max_len=max_len, chunk=chunk)
    nused = int(np.count_nonzero(counts))
    lim = auto_max_len(nused) if max_len is None else int(max_len)
    lengths = code_lengths(counts, lim)
    codes = canonical_codes(lengths)
    nbits = coded_bits(counts, lengths)
    if run is None:  # NumPy: the vectorised packer, piece by piece
        packer = _Packer(lengths, codes, n, nbits, int(chunk), np)
    else:
        payload = np.zeros((nbits + 7) // 8, np.uint8)
        offsets = np.empty(-(-n // chunk) + 1, np.uint64)
        offsets[-1] = nbits
    state = np.zeros(5, np.int64)  # acc, bits in acc, bit position, byte position, symbols done
    seen = np.zeros(nsym, np.int64)
    for b in blocks:
        b = np.ascontiguousarray(np.asarray(b).reshape(-1))
        if b.dtype.kind not in "ui":
            raise TypeError(f"symbols must be integers, got {b.dtype}")
        if b.size == 0:
            continue
        if int(state[4]) + b.size > n:
            raise ValueError(f"the blocks hold more than {n} symbols")
        seen += _symbol_counts(b, nsym, np)  # also rejects symbols >= nsym
        if b.dtype.kind == "i" and int(b.min()) < 0:
            raise ValueError(f"symbols must lie in [0, {nsym})")
        if run is None:
            packer.add(b)
            state[4] += b.size
        else:
            run(b, lengths, codes, int(chunk), payload, offsets, state)
    if int(state[4]) != n or not np.array_equal(seen, counts):
        raise ValueError("the blocks do not hold the stated symbols")
    if run is None:
        payload, offsets = packer.finish()
    else:
        _flush(payload, state)
    return HuffmanStream(lengths, payload, offsets, n, int(chunk))


def _flush(payload, state) -> None:
    """Write the packer's last partial byte (its bits left-aligned, zero-padded)."""
    if state[1]:
        payload[state[3]] = np.uint8((int(state[0]) << (8 - int(state[1]))) & 0xFF)


@lazy_numba
def _numba_part_encoder(numba):
    """numba packer for one piece of a stream, resuming from ``state`` (None without numba)."""

    @numba.njit(cache=True, nogil=True)
    def run(sym, lengths, codes, chunk, payload, offsets, state):  # pragma: no cover - compiled
        acc = np.uint64(state[0])
        have = state[1]
        bit = state[2]
        o = state[3]
        base = state[4]
        for j in range(sym.size):
            i = base + j
            if i % chunk == 0:
                offsets[i // chunk] = bit
            s = sym[j]
            ln = np.int64(lengths[s])
            acc = (acc << np.uint64(ln)) | np.uint64(codes[s])
            have += ln
            bit += ln
            while have >= 8:
                have -= 8
                payload[o] = np.uint8((acc >> np.uint64(have)) & np.uint64(0xFF))
                o += 1
        # keep only the bits not yet written (fewer than 8)
        state[0] = np.int64(acc & ((np.uint64(1) << np.uint64(have)) - np.uint64(1)))
        state[1] = have
        state[2] = bit
        state[3] = o
        state[4] = base + sym.size

    return run


# --------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------


def _validate(stream: HuffmanStream):
    """Check a stream's structure; return (table, L, starts, ends, out dtype)."""
    if not isinstance(stream, HuffmanStream):
        raise TypeError("decode expects a HuffmanStream")
    n, chunk = int(stream.n), int(stream.chunk)
    if n < 0 or chunk < 1:
        raise CorruptDataError(f"bad Huffman stream header (n={n}, chunk={chunk})")
    payload = np.asarray(stream.payload)
    offsets = np.asarray(stream.offsets)
    if payload.ndim != 1 or payload.dtype != np.uint8:
        raise CorruptDataError("Huffman payload must be a 1-D uint8 array")
    if offsets.ndim != 1 or offsets.dtype != np.uint64:
        raise CorruptDataError("Huffman offsets must be a 1-D uint64 array")
    lengths = np.asarray(stream.lengths)
    table, L = decode_table(lengths)
    nch = -(-n // chunk)
    if offsets.size != nch + 1:
        raise CorruptDataError(f"Huffman stream has {offsets.size} offsets, expected {nch + 1}")
    if offsets[0] != 0:
        raise CorruptDataError("first Huffman chunk offset is not 0")
    nbits = int(offsets[-1])
    if (nbits + 7) // 8 != payload.size:
        raise CorruptDataError(
            f"Huffman payload has {payload.size} bytes, offsets say {nbits} bits"
        )
    if n == 0:
        return table, L, offsets, nch
    if L == 0:
        raise CorruptDataError("non-empty Huffman stream with an empty code")
    # every chunk spans at least min_len and at most L bits per symbol
    sizes = np.full(nch, chunk, np.int64)
    sizes[-1] = n - (nch - 1) * chunk
    span = np.diff(offsets.astype(np.int64)) if nbits < (1 << 62) else None
    lmin = int(lengths[lengths > 0].min())
    if span is None or (span < sizes * lmin).any() or (span > sizes * L).any():
        raise CorruptDataError("Huffman chunk offsets are out of order or out of range")
    return table, L, offsets, nch


def _out_dtype(nsym: int):
    return np.uint8 if nsym <= 256 else np.uint16


def _windows(payload: np.ndarray) -> np.ndarray:
    """uint32 big-endian window starting at every byte (zero past the end)."""
    p = np.concatenate([payload, np.zeros(4, np.uint8)]).astype(np.uint32)
    return (p[:-3] << 24) | (p[1:-2] << 16) | (p[2:-1] << 8) | p[3:]


def decode_numpy(stream: HuffmanStream) -> np.ndarray:
    """Reference decoder: all chunks advance one symbol per step (lock-step).

    This is the NumPy twin of the CUDA kernel: the same table, the same
    window read, the same end-of-chunk check. Steps = chunk length, so its
    speed grows with the number of chunks.
    """
    table, L, offsets, nch = _validate(stream)
    dt = _out_dtype(stream.nsym)
    n, chunk = int(stream.n), int(stream.chunk)
    if n == 0:
        return np.zeros(0, dt)
    win = _windows(np.asarray(stream.payload)).astype(np.int64)
    last = win.size - 1
    tab = table.astype(np.int64)
    # an unreachable table entry (single-symbol code) jumps far past every
    # chunk end, so the final position check fails instead of looping forever
    bad = np.int64(8 * win.size + 1) << 16
    tab[(tab >> 16) == 0] = bad
    tsym = (tab & 0xFFFF).astype(dt)
    tlen = tab >> 16
    pos = offsets[:-1].astype(np.int64)
    sh = np.int64(32 - L)
    mask = np.int64((1 << L) - 1)
    out = np.zeros((chunk, nch), dt)
    tail = n - (nch - 1) * chunk
    for step in range(chunk):
        p = pos if step < tail else pos[: nch - 1]
        w = win[np.minimum(p >> 3, last)]
        idx = (w >> (sh - (p & 7))) & mask
        out[step, : p.size] = tsym[idx]
        p += tlen[idx]
    if not np.array_equal(pos, offsets[1:].astype(np.int64)):
        raise CorruptDataError("Huffman chunk does not end where the next begins")
    return np.ascontiguousarray(out.T).reshape(-1)[:n]


def decode_doubling(stream: HuffmanStream) -> np.ndarray:
    """NumPy decoder for short streams: every bit decoded as a code start, chains by pointer doubling.

    The lock-step decoder needs ``chunk`` steps whatever the stream's size,
    so on a host its fixed cost dominates small blobs. Here each bit position
    is decoded as if a code began there (one table lookup per bit), each
    position points at the next code start, and the chains from every chunk
    offset are listed by doubling (``log2(chunk)`` rounds over the bits).
    The checks are those of :func:`decode_numpy`.
    """
    table, L, offsets, nch = _validate(stream)
    dt = _out_dtype(stream.nsym)
    n, chunk = int(stream.n), int(stream.chunk)
    if n == 0:
        return np.zeros(0, dt)
    nbits = int(offsets[-1])
    sink = nbits + 1
    p = np.arange(nbits, dtype=np.int64)
    win = _windows(np.asarray(stream.payload))
    ent = table[(win[p >> 3] >> (32 - L - (p & 7)).astype(np.uint32)) & np.uint32((1 << L) - 1)]
    nxt = p + (ent >> 16)
    # a code past the end, or no code at all (single-symbol tables), leads
    # to the sink, which no chunk offset equals
    bad = (nxt == p) | (nxt > nbits)
    jump = np.empty(nbits + 2, np.int64)
    jump[:nbits] = np.where(bad, sink, nxt)
    jump[nbits:] = sink
    sym = np.zeros(nbits + 2, dt)
    sym[:nbits] = ent & 0xFFFF
    del ent, nxt, bad, p, win
    steps = min(chunk, n)
    pos = offsets[:-1].astype(np.int64)[:, None]
    jk = jump
    while pos.shape[1] < steps:
        pos = np.concatenate([pos, jk[pos]], axis=1)
        if pos.shape[1] < steps:
            jk = jk[jk]
    del jk
    pos = pos[:, :steps]
    tail = n - (nch - 1) * chunk
    last = np.full(nch, steps - 1)
    last[-1] = tail - 1
    if not np.array_equal(jump[pos[np.arange(nch), last]], offsets[1:].astype(np.int64)):
        raise CorruptDataError("Huffman chunk does not end where the next begins")
    return sym[pos].reshape(-1)[:n]


def _numpy_decoder(stream: HuffmanStream):
    """Pick the cheaper NumPy decoder from the stream's shape (both give the same result)."""
    n, chunk = int(stream.n), max(int(stream.chunk), 1)
    nch = -(-n // chunk)
    nbits = int(stream.offsets[-1]) if np.asarray(stream.offsets).size else 0
    steps = min(chunk, n)
    # measured on one core: ~4.5 us per lock-step step plus ~10 ns per chunk
    # and step; doubling costs ~3.5 ns per bit and round
    lockstep = steps * (4.5e-6 + 10e-9 * nch)
    doubling = 3.5e-9 * nbits * max(1, math.ceil(math.log2(max(steps, 2))))
    return decode_doubling if doubling < lockstep and nbits < (1 << 31) else decode_numpy


@lazy_numba
def _numba_decoder(numba):
    """Compile the sequential per-chunk decoder with numba (None without numba)."""

    @numba.njit(cache=True, nogil=True)
    def run(payload, starts, ends, table, L, n, chunk, out):  # pragma: no cover - compiled
        nb = payload.size
        nch = starts.size
        mask = (1 << L) - 1
        for c in range(nch):
            pos = np.int64(starts[c])
            i0 = c * chunk
            i1 = min(i0 + chunk, n)
            # a 64-bit bit buffer refilled a byte at a time
            b = pos >> 3
            acc = np.uint64(0)
            have = 0
            while have <= 48:
                byte = payload[b] if b < nb else 0
                acc = (acc << np.uint64(8)) | np.uint64(byte)
                b += 1
                have += 8
            drop = pos & 7
            have -= drop
            acc &= (np.uint64(1) << np.uint64(have)) - np.uint64(1)
            for i in range(i0, i1):
                if have < L:
                    while have <= 48:
                        byte = payload[b] if b < nb else 0
                        acc = (acc << np.uint64(8)) | np.uint64(byte)
                        b += 1
                        have += 8
                e = table[np.int64(acc >> np.uint64(have - L)) & mask]
                ln = e >> 16
                if ln == 0:
                    return c
                out[i] = e & 0xFFFF
                have -= ln
                acc &= (np.uint64(1) << np.uint64(have)) - np.uint64(1)
                pos += ln
            if pos != np.int64(ends[c]):
                return c
        return -1

    return run


def have_compiled() -> bool:
    """True when the compiled (numba) CPU decoder is available."""
    return _numba_decoder() is not None


def decode(stream: HuffmanStream, *, xp=np, engine: str = "auto"):
    """Decode a :class:`HuffmanStream` to its symbols (uint8, or uint16 past 256 symbols).

    Parameters
    ----------
    stream : HuffmanStream
        As made by :func:`encode` (possibly read back from a file).
    xp : module
        numpy: decode on the host; cupy: the raw CUDA kernel, one thread per
        chunk, result left on the device.
    engine : {"auto", "numpy", "compiled"}
        Host decoder: NumPy (the lock-step reference for long streams, the
        pointer-doubling one for short streams, by estimated cost), or the
        numba-compiled sequential loop ("auto": compiled when numba is
        installed).

    Raises
    ------
    CorruptDataError
        Any structural check fails (see the module docstring).
    """
    if xp is not np:
        from .huffman_cuda import decode_gpu  # noqa: PLC0415

        return decode_gpu(stream, xp=xp)
    if engine not in ("auto", "numpy", "compiled"):
        raise ValueError(f"unknown engine {engine!r}")
    run = _numba_decoder() if engine != "numpy" else None
    if engine == "compiled" and run is None:
        raise RuntimeError("the compiled decoder needs numba (pip install 'caffecompress[fast]')")
    if run is None:
        return _numpy_decoder(stream)(stream)
    table, L, offsets, nch = _validate(stream)
    dt = _out_dtype(stream.nsym)
    n = int(stream.n)
    out = np.empty(n, dt)
    if n == 0:
        return out
    offs = offsets.astype(np.int64)
    bad = run(np.asarray(stream.payload), offs[:-1], offs[1:], table, L, n, int(stream.chunk), out)
    if bad >= 0:
        raise CorruptDataError(f"Huffman chunk {bad} does not decode to its stated end")
    return out


def decode_blocks(stream: HuffmanStream, block: int = 1 << 22):
    """Decode a stream piece by piece: yield its symbols in consecutive arrays.

    Each piece holds ``block`` symbols (rounded up to whole chunks; the last
    may be shorter), so a long stream is never held decoded in full. The
    checks are those of :func:`decode`; a damaged chunk raises
    :class:`~caffecompress.errors.CorruptDataError` when its piece is reached.
    Without numba each piece is cut out as a stream of its own (its bits
    shifted to start at bit 0) for the NumPy decoder.
    """
    run = _numba_decoder()
    table, L, offsets, nch = _validate(stream)
    dt = _out_dtype(stream.nsym)
    n, chunk = int(stream.n), int(stream.chunk)
    per = max(1, int(block) // chunk)  # chunks per piece
    offs = offsets.astype(np.int64)
    payload = np.asarray(stream.payload)
    for c0 in range(0, nch, per):
        c1 = min(c0 + per, nch)
        i0 = c0 * chunk
        m = min(c1 * chunk, n) - i0
        if run is None:
            try:
                yield decode(_piece(stream, payload, offs, c0, c1, m), engine="numpy")
            except CorruptDataError as exc:
                raise CorruptDataError(f"Huffman chunks {c0}..{c1 - 1}: {exc}") from exc
            continue
        out = np.empty(m, dt)
        bad = run(payload, offs[c0:c1], offs[c0 + 1 : c1 + 1], table, L, m, chunk, out)
        if bad >= 0:
            raise CorruptDataError(f"Huffman chunk {c0 + bad} does not decode to its stated end")
        yield out


def _piece(stream, payload, offs, c0, c1, m):
    """Chunks ``c0..c1-1`` of a stream as a stream of their own: the payload
    bits from ``offs[c0]`` on, shifted to bit 0, and offsets rebased."""
    b0, b1 = int(offs[c0]), int(offs[c1])
    r, lo, nout = b0 & 7, b0 >> 3, (b1 - b0 + 7) >> 3
    seg = np.zeros(nout + 1, np.uint16)  # zero past the payload's end
    part = payload[lo : lo + nout + 1]
    seg[: part.size] = part
    # byte i of the piece: bits r.. of byte lo+i and the first r of the next
    data = ((seg[:-1] << r) | (seg[1:] >> (8 - r))).astype(np.uint8)
    return HuffmanStream(stream.lengths, data, (offs[c0 : c1 + 1] - b0).astype(np.uint64), m,
                         int(stream.chunk))


# --------------------------------------------------------------------------
# flat storage (for codecs that keep parts as plain arrays + scalar meta)
# --------------------------------------------------------------------------


# The code lengths of a table are stored as zigzag deltas from the previous
# symbol's length under one fixed, complete prefix code over the 41 possible
# deltas (-20..20): 1 bit for "same as before", 3 bits for +-1, 5 for +-2/3,
# 8-9 bits beyond. Neighbouring codebook entries have similar frequencies, so
# a 256-entry table costs ~60-100 bytes instead of 256.
_ZZ_LENGTHS = np.array([1, 3, 3, 5, 5, 5, 5] + [8] * 30 + [9] * 4, np.uint8)
_ZZ_CODES = canonical_codes(_ZZ_LENGTHS)
_ZZ_TABLE = decode_table(_ZZ_LENGTHS)


def pack_lengths(lengths) -> np.ndarray:
    """Code a table's code lengths compactly (see ``_ZZ_LENGTHS``); uint8 bytes."""
    ln = np.asarray(lengths, np.int64)
    if ln.size and (ln.min() < 0 or ln.max() > MAX_CODE_LEN):
        raise ValueError("code lengths out of range")
    d = np.diff(ln, prepend=0)
    zz = (d << 1) ^ (d >> 63)
    if zz.size == 0:
        return np.zeros(0, np.uint8)
    nbits = int(_ZZ_LENGTHS[zz].astype(np.int64).sum())
    payload, _ = _pack(zz.astype(np.uint8), _ZZ_LENGTHS, _ZZ_CODES, zz.size, nbits, 1 << 30, np)
    return payload


def unpack_lengths(data, nsym: int) -> np.ndarray:
    """Inverse of :func:`pack_lengths`; CorruptDataError unless exactly ``nsym`` lengths fill ``data``.

    Vectorised without a loop per symbol: every bit position is decoded as if
    a code started there, then the chain of real code starts is listed by
    pointer doubling (``log2(nsym)`` rounds).
    """
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 1:
        raise CorruptDataError("packed code lengths must be 1-D uint8")
    if not 0 <= nsym <= MAX_SYMBOLS or data.size > (9 * nsym + 7) // 8:
        raise CorruptDataError(f"packed code lengths: {data.size} bytes for {nsym} symbols")
    if nsym == 0:
        if data.size:
            raise CorruptDataError("packed code lengths: bytes for an empty table")
        return np.zeros(0, np.uint8)
    table, L = _ZZ_TABLE
    nb = 8 * data.size
    p = np.arange(nb + 1)
    win = _windows(data).astype(np.int64)
    ent = table[(win[np.minimum(p >> 3, win.size - 1)] >> (32 - L - (p & 7))) & ((1 << L) - 1)].astype(np.int64)
    nxt = np.minimum(p + (ent >> 16), nb)  # nb is a sink
    nxt[nb] = nb
    chain = np.zeros(1, np.int64)
    jump = nxt
    while chain.size < nsym:
        chain = np.concatenate([chain, jump[chain]])
        jump = jump[jump]
    chain = chain[:nsym]
    end = int(chain[-1] + (ent[chain[-1]] >> 16))
    if chain[-1] >= nb or end > nb or (end + 7) // 8 != data.size or int(data[-1]) & ((1 << (nb - end)) - 1):
        raise CorruptDataError("packed code lengths do not fill their bytes exactly")
    zz = ent[chain] & 0xFFFF
    ln = np.cumsum((zz >> 1) ^ -(zz & 1))
    if ln.min() < 0 or ln.max() > MAX_CODE_LEN:
        raise CorruptDataError("packed code lengths out of range")
    return ln.astype(np.uint8)


def stream_parts(stream: HuffmanStream, prefix: str = "") -> tuple[dict, dict]:
    """Split a stream into ``(meta, parts)``: plain ints and 1-D arrays, compactly.

    The code lengths are packed (:func:`pack_lengths`); the offsets lose the
    leading 0 and are stored as uint32 when the stream is shorter than 2**32
    bits (always, in practice).
    """
    off = stream.offsets[1:]
    if stream.nbits < (1 << 32):
        off = off.astype(np.uint32)
    meta = {prefix + "n": int(stream.n), prefix + "chunk": int(stream.chunk), prefix + "nsym": stream.nsym}
    parts = {prefix + "lengths": pack_lengths(stream.lengths), prefix + "payload": stream.payload,
             prefix + "offsets": off}
    return meta, parts


def stream_from_parts(meta: dict, parts: dict, prefix: str = "") -> HuffmanStream:
    """Inverse of :func:`stream_parts`; raises CorruptDataError on missing or mistyped parts."""
    try:
        n, chunk = int(meta[prefix + "n"]), int(meta[prefix + "chunk"])
        nsym = int(meta[prefix + "nsym"])
        packed = np.asarray(parts[prefix + "lengths"])
        payload = np.asarray(parts[prefix + "payload"])
        off = np.asarray(parts[prefix + "offsets"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptDataError(f"Huffman stream {prefix!r} is incomplete: {exc}") from exc
    if off.dtype not in (np.uint32, np.uint64) or off.ndim != 1:
        raise CorruptDataError(f"Huffman offsets must be 1-D uint32/uint64, got {off.dtype}")
    off = np.concatenate([np.zeros(1, np.uint64), off.astype(np.uint64)])
    return HuffmanStream(unpack_lengths(packed, nsym), payload, off, n, chunk)


def stream_nbytes(counts, lengths, n: int, chunk: int = 4096) -> int:
    """Stored bytes of a stream as :func:`stream_parts` keeps it, without encoding it."""
    nbits = coded_bits(counts, lengths)
    return (nbits + 7) // 8 + pack_lengths(lengths).size + 4 * (-(-n // chunk))
