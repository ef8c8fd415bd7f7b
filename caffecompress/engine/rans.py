"""Context-adaptive interleaved rANS for a grid blob's indices.

The flat labels (``k - qmin``) are cut into lanes of ``seg`` consecutive
values (``lanes = ceil(n / SEG)``, ``seg = ceil(n / lanes)``; the last lane
may be shorter); lanes are gathered into groups of :data:`GROUP_LANES`.
Each group is coded alone: its own adaptive model, its own word stream.

Model. One frequency table per (group, context). Two context rules (meta
``ctx``, 0 when absent):

- ``ctx = 0`` (format 1.2): the context of a value is the class
  ``min(|k_prev|, NCTX - 1)`` of the index before it in its lane (0 at a
  lane's start): small indices follow small ones in a filter row.
- ``ctx = 1`` (format 2.2, what the encoder writes): a running magnitude
  per lane, ``m = 0`` at the lane's start and after each value ``m += ((a
  << EMA_FRAC) - m) >> EMA_SHIFT`` (arithmetic shift), ``a`` the value's
  magnitude ``min(|k|, EMA_MAG_MAX)``; the context of a value is ``min(
  NCTX_EMA - 1, bit_length(((16 + m)**2) >> 8) - 1)`` of the ``m`` before
  it: about ``2 log2(1 + mean |k|)`` over the last few values, 16 classes.
  The scale of a filter row's weights varies from row to row, and the
  recent magnitudes tell it (mtcnn/det3's fc layer: 2.7 % fewer bytes
  than ``ctx = 0``, lenet-mnist-v1's ip1 4.1 %).

Counts start at 1 and grow by :data:`INC` per coded value; every
:data:`REFRESH` steps (a step codes one value of every live lane of the
group, lanes in order) a context whose count total exceeds :data:`LIMIT`
is halved (``(c + 1) >> 1``) and the tables are renormalised to ``M =
2**PREC``: ``f = 1 + (c * (M - nsym)) // total``, the remainder to the
first most frequent symbol. Between refreshes the tables stay fixed, so
every lane of a step codes with the same table: the lanes can run side by
side (the NumPy twin) or one after the other (the numba twin) and give the
same bytes. All of it is integer arithmetic.

Coder. rANS with a 32-bit state (``[2**16, 2**32)``) and 16-bit words:
before coding a value of frequency ``f`` the encoder writes the low word
while ``x >= f << 16`` (at most once), then ``x = (x // f << 16) + x % f +
cum``. The encoder runs backwards; a group's words are stored in the order
the decoder reads them (steps ascending, lanes ascending within a step),
and each lane's final state is stored. The decoder ends every lane in the
initial state ``2**16`` having read exactly the group's words: both are
checked (a damaged stream fails there, or earlier on a short stream).

Stream parts (prefix ``a_``): ``a_w`` uint16 words of all groups in order,
``a_n`` uint32 words per group, ``a_x`` uint32 final state per lane; meta
``seg`` (the lane length).

Everything runs on the host: an adaptive coder is sequential within a
lane, so the GPU quantises and the host codes (the GPU path writes the same
file by construction).

Functions
---------
:func:`encode` - labels to (meta, parts).
:func:`check` - validate meta/parts against the blob before decoding.
:func:`decode_groups` - the labels back, a group at a time.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import CorruptDataError
from .grid import Twins, worker_threads

__all__ = ["SEG", "GROUP_LANES", "NCTX", "NCTX_EMA", "CTX_EMA", "encode", "estimate_nbytes", "check", "decode_groups", "lane_shape", "have_compiled"]

SEG = 4096  #: values per lane (at most)
GROUP_LANES = 256  #: lanes per group (one model and one word stream a group)
NCTX = 4  #: context classes: |previous index| 0, 1, 2, >= 3
PREC = 16  #: table precision: frequencies sum to 2**PREC
M = 1 << PREC
REFRESH = 16  #: steps between table refreshes
INC = 16  #: count added per coded value
LIMIT = 1 << 24  #: a context's count total above which it is halved at a refresh
LOW = 1 << 16  #: the state's lower bound (and the encoder's start state)
MAX_SYMBOLS = 4096
CTX_EMA = 1  #: meta ``ctx`` of the running-magnitude context rule
NCTX_EMA = 16  #: its context classes
EMA_SHIFT = 2  #: its running magnitude moves 1 / 2**EMA_SHIFT of the way to each new value
EMA_FRAC = 4  #: fractional bits of the running magnitude
EMA_MAG_MAX = 2047  #: magnitudes are capped here before they enter it




def have_compiled() -> bool:
    """True when numba is installed (the compiled twins run)."""
    return _twins.have()


def lane_shape(n: int, seg: int = SEG) -> tuple[int, int]:
    """``(lanes, lane length)`` of ``n`` values cut into lanes of at most ``seg``."""
    if n <= 0:
        return 0, 0
    lanes = -(-n // seg)
    return lanes, -(-n // lanes)


def _ctx_table(nsym: int, qmin: int) -> np.ndarray:
    k = np.arange(nsym, dtype=np.int64) + qmin
    return np.minimum(np.abs(k), NCTX - 1).astype(np.int64)


#: the ``ctx = 1`` class of each running magnitude ``m`` (integers only)
_EMA_LUT = np.array([min(NCTX_EMA - 1, (((16 + m) ** 2) >> 8).bit_length() - 1)
                     for m in range((EMA_MAG_MAX << EMA_FRAC) + 1)], np.int64)


def _model(nsym_c: int, qmin: int, tok: bool, ctx: int):
    """``(nctx, stab, lut, ema)`` of a context rule over the coded alphabet.

    Rule 0: ``stab`` maps a symbol to its class, the lane state is that
    class and ``lut`` is the identity. Rule 1: ``stab`` maps a symbol to its
    magnitude (a token to ``1.5 * 2**(c - 1)`` for its class ``c``, the raw
    bits being coded apart), the state is the running magnitude and ``lut``
    its class."""
    if ctx == 0:
        if tok:
            stab = np.minimum((np.arange(nsym_c, dtype=np.int64) + 1) // 2, NCTX - 1)
        else:
            stab = _ctx_table(nsym_c, qmin)
        return NCTX, stab, np.arange(NCTX, dtype=np.int64), 0
    if tok:
        c = (np.arange(nsym_c, dtype=np.int64) + 1) // 2
        mag = np.where(c == 0, 0, (3 << np.maximum(c - 1, 0)) >> 1)
    else:
        mag = np.abs(np.arange(nsym_c, dtype=np.int64) + qmin)
    return NCTX_EMA, np.minimum(mag, EMA_MAG_MAX).astype(np.int64), _EMA_LUT, 1


# ------------------------------------------------------------ sequential twin
# (plain scalar code: numba compiles it; it also runs as Python in tests)

def _py_refresh(counts, freq, cum, nsym, t):
    nrow = counts.shape[0]
    for r in range(nrow):
        tot = 0
        for s in range(nsym):
            tot += counts[r, s]
        if t > 0 and tot > LIMIT:
            tot = 0
            for s in range(nsym):
                counts[r, s] = (counts[r, s] + 1) >> 1
                tot += counts[r, s]
        acc = 0
        best = 0
        for s in range(nsym):
            f = 1 + (counts[r, s] * (M - nsym)) // tot
            freq[r, s] = f
            acc += f
            if counts[r, s] > counts[r, best]:
                best = s
        freq[r, best] += M - acc
        c = 0
        for s in range(nsym):
            cum[r, s] = c
            c += freq[r, s]


def _py_encode_group(XT, lens, nsym, nctx, stab, lut, ema, words, states):
    """One group: ``XT`` (seg, lanes) labels (step-major: a step's values are
    adjacent in memory), ``lens`` live values per lane, the context rule
    ``(nctx, stab, lut, ema)`` of :func:`_model`;
    writes the group's words in decoding order into ``words`` (returns their
    count) and each lane's final state into ``states``."""
    seg, nl = XT.shape
    counts = np.ones((nctx, nsym), np.int64)
    freq = np.zeros((nctx, nsym), np.int64)
    cum = np.zeros((nctx, nsym), np.int64)
    F = np.ones((seg, nl), np.int64)
    C = np.zeros((seg, nl), np.int64)
    prev = np.zeros(nl, np.int64)
    top = lut.size - 1
    for t in range(seg):
        if t % REFRESH == 0:
            _refresh(counts, freq, cum, nsym, t)
        for j in range(nl):
            if t < lens[j]:
                s = XT[t, j]
                r = lut[min(prev[j], top)]
                F[t, j] = freq[r, s]
                C[t, j] = cum[r, s]
                counts[r, s] += INC
                if ema:
                    prev[j] += ((stab[s] << EMA_FRAC) - prev[j]) >> EMA_SHIFT
                else:
                    prev[j] = stab[s]
    x = np.full(nl, LOW, np.int64)
    nw = 0
    for t in range(seg - 1, -1, -1):
        for j in range(nl - 1, -1, -1):
            if t < lens[j]:
                f = F[t, j]
                v = x[j]
                if v >= (f << 16):
                    words[nw] = v & 0xFFFF
                    nw += 1
                    v >>= 16
                x[j] = ((v // f) << PREC) + v % f + C[t, j]
    for i in range(nw // 2):
        a = words[i]
        words[i] = words[nw - 1 - i]
        words[nw - 1 - i] = a
    for j in range(nl):
        states[j] = x[j]
    return nw


def _py_decode_group(words, states, lens, seg, nsym, nctx, stab, lut, ema, out):
    """Decode one group into ``out`` (seg, lanes: step-major); returns 0 when the stream
    ends in the start states having read every word, else 1 (damaged)."""
    nl = states.size
    counts = np.ones((nctx, nsym), np.int64)
    freq = np.zeros((nctx, nsym), np.int64)
    cum = np.zeros((nctx, nsym), np.int64)
    x = states.astype(np.int64)
    prev = np.zeros(nl, np.int64)
    top = lut.size - 1
    p = 0
    nw = words.size
    for t in range(seg):
        if t % REFRESH == 0:
            _refresh(counts, freq, cum, nsym, t)
        for j in range(nl):
            if t < lens[j]:
                r = lut[min(prev[j], top)]
                v = x[j]
                slot = v & (M - 1)
                lo, hi = 0, nsym - 1  # the last symbol whose start is <= slot
                while lo < hi:
                    mid = (lo + hi + 1) >> 1
                    if cum[r, mid] <= slot:
                        lo = mid
                    else:
                        hi = mid - 1
                s = lo
                v = freq[r, s] * (v >> PREC) + slot - cum[r, s]
                if v < LOW:
                    if p >= nw:
                        return 1
                    v = (v << 16) | words[p]
                    p += 1
                x[j] = v
                out[t, j] = s
                counts[r, s] += INC
                if ema:
                    prev[j] += ((stab[s] << EMA_FRAC) - prev[j]) >> EMA_SHIFT
                else:
                    prev[j] = stab[s]
    if p != nw:
        return 1
    for j in range(nl):
        if x[j] != LOW:
            return 1
    return 0


_refresh = _py_refresh  # the compiled one once numba has been asked for


# ------------------------------------------------------------ NumPy twin

def _np_refresh(counts, nsym, t):
    """Vectorised :func:`_py_refresh` over rows: returns (freq, cum)."""
    tot = counts.sum(1)
    if t > 0:
        big = tot > LIMIT
        if big.any():
            counts[big] = (counts[big] + 1) >> 1
            tot = counts.sum(1)
    freq = 1 + (counts * (M - nsym)) // tot[:, None]
    rows = np.arange(counts.shape[0])
    freq[rows, np.argmax(counts, 1)] += M - freq.sum(1)
    cum = np.cumsum(freq, 1) - freq
    return freq, cum


def _np_next_state(prev, s, stab, ema, act):
    """The lanes' context states after coding ``s`` (lanes not ``act`` keep theirs)."""
    nxt = prev + (((stab[s] << EMA_FRAC) - prev) >> EMA_SHIFT) if ema else stab[s]
    return np.where(act, nxt, prev)


def _np_encode_groups(X, lens, gl, nsym, model):
    """Groups of ``gl`` lanes of ``X`` side by side: (words per group list, states)."""
    nctx, stab, lut, ema = model
    nl, seg = X.shape
    ng = -(-nl // gl)
    grp = np.arange(nl) // gl
    counts = np.ones((ng * nctx, nsym), np.int64)
    F = np.ones((seg, nl), np.int64)
    C = np.zeros((seg, nl), np.int64)
    prev = np.zeros(nl, np.int64)
    for t in range(seg):
        if t % REFRESH == 0:
            freq, cum = _np_refresh(counts, nsym, t)
        act = t < lens
        s = X[:, t].astype(np.int64)
        row = grp * nctx + lut[np.minimum(prev, lut.size - 1)]
        F[t] = np.where(act, freq[row, s], 1)
        C[t] = np.where(act, cum[row, s], 0)
        flat = (row * nsym + s)[act]
        counts += INC * np.bincount(flat, minlength=counts.size).reshape(counts.shape)
        prev = _np_next_state(prev, s, stab, ema, act)
    x = np.full(nl, LOW, np.int64)
    ws, ts, ls = [], [], []
    lanes = np.arange(nl)
    for t in range(seg - 1, -1, -1):
        act = t < lens
        f = F[t]
        emit = act & (x >= (f << 16))
        if emit.any():
            ws.append((x[emit] & 0xFFFF).astype(np.uint16))
            ts.append(np.full(int(emit.sum()), t, np.int64))
            ls.append(lanes[emit])
            x = np.where(emit, x >> 16, x)
        x = np.where(act, ((x // f) << PREC) + x % f + C[t], x)
    if ws:
        w, tt, ll = np.concatenate(ws), np.concatenate(ts), np.concatenate(ls)
        order = np.lexsort((ll, tt, grp[ll]))  # decoding order: group, step, lane
        w, g = w[order], grp[ll][order]
    else:
        w, g = np.zeros(0, np.uint16), np.zeros(0, np.int64)
    per = np.bincount(g, minlength=ng)
    return w, per, x


def _np_decode_groups(words, per, states, lens, seg, gl, nsym, model):
    """Vectorised decoder of consecutive groups; returns labels (lanes, seg) or None if damaged."""
    nctx, stab, lut, ema = model
    nl = states.size
    ng = per.size
    grp = np.arange(nl) // gl
    counts = np.ones((ng * nctx, nsym), np.int64)
    x = states.astype(np.int64)
    prev = np.zeros(nl, np.int64)
    base = np.concatenate([[0], np.cumsum(per)[:-1]]).astype(np.int64)
    ptr = np.zeros(ng, np.int64)
    out = np.zeros((nl, seg), np.int64)
    rows_off = np.arange(ng * nctx, dtype=np.int64)[:, None] << 17
    w64 = words.astype(np.int64)
    # rank of a lane among the needing lanes of its group, in lane order
    gstart = np.arange(ng) * gl
    for t in range(seg):
        if t % REFRESH == 0:
            freq, cum = _np_refresh(counts, nsym, t)
            key = (rows_off + cum).reshape(-1)
        act = t < lens
        row = grp * nctx + lut[np.minimum(prev, lut.size - 1)]
        slot = x & (M - 1)
        idx = np.searchsorted(key, (row << 17) + slot, side="right") - 1
        s = idx - row * nsym
        f = freq.reshape(-1)[idx]
        c = cum.reshape(-1)[idx]
        v = f * (x >> PREC) + slot - c
        need = act & (v < LOW)
        if need.any():
            cs = np.cumsum(need)
            before = np.concatenate([[0], cs])[gstart]  # needing lanes before each group's first
            rank = cs - 1 - before[grp]
            pos = base[grp] + ptr[grp] + rank
            nn = np.bincount(grp[need], minlength=ng)
            if np.any(ptr + nn > per):
                return None
            safe = np.where(need, pos, 0)
            v = np.where(need, (v << 16) | w64[np.minimum(safe, max(w64.size - 1, 0))], v)
            ptr += nn
        x = np.where(act, v, x)
        out[:, t] = np.where(act, s, 0)
        flat = (row * nsym + s)[act]
        counts += INC * np.bincount(flat, minlength=counts.size).reshape(counts.shape)
        prev = _np_next_state(prev, np.where(act, s, 0), stab, ema, act)
    if np.any(ptr != per) or np.any(x != LOW):
        return None
    return out


# ------------------------------------------------------------ public

def _lanes(labels, n, ls):
    """``n`` labels as rows of exactly ``ls`` (the blob's lane length; the last row padded)."""
    lanes = -(-n // ls)
    X = np.zeros(lanes * ls, np.int64)
    X[:n] = labels
    lens = np.minimum(ls, n - np.arange(lanes, dtype=np.int64) * ls)
    return X.reshape(lanes, ls), lens


#: Alphabets larger than this are coded as tokens (see :func:`_tokens`).
TOKEN_NSYM = 256


def _coded_symbols(nsym: int, qmin: int) -> int:
    """Size of the alphabet the coder sees for indices ``qmin .. qmin+nsym-1``:
    ``nsym``, or over :data:`TOKEN_NSYM` the magnitude-class tokens (two per
    class and one for zero)."""
    if nsym <= TOKEN_NSYM:
        return nsym
    return 2 * max(abs(int(qmin)), abs(int(qmin) + nsym - 1)).bit_length() + 1


def _tokens(lab, qmin: int, group: int):
    """Labels as (tokens, [extra bytes per group of ``group`` values]).

    An index ``k`` becomes the token of its magnitude class ``c`` (the bit
    length of ``|k|``) and sign: ``0`` for ``k = 0``, ``2c - 1 + (k < 0)``
    otherwise, and ``c - 1`` raw bits of ``|k| - 2**(c-1)``, most significant
    first, packed per group (byte-aligned: a group's bits start a byte).
    """
    k = np.asarray(lab).astype(np.int64) + int(qmin)
    a = np.abs(k)
    c = np.frexp(a.astype(np.float64))[1].astype(np.int64)  # bit length (0 for 0)
    tok = np.where(a == 0, 0, 2 * c - 1 + (k < 0))
    nb = np.maximum(c - 1, 0)
    extra = a - np.where(c > 0, np.left_shift(1, np.maximum(c - 1, 0)), 0)
    out = []
    cols = np.arange(16)
    for g0 in range(0, k.size, group):
        b, e = nb[g0 : g0 + group], extra[g0 : g0 + group]
        # each value's 16 bits, big-endian; its last nb of them, row by row, are the stream
        bits16 = np.unpackbits(e.astype(">u2").view(np.uint8)).reshape(-1, 16)
        out.append(np.packbits(bits16[cols >= 16 - b[:, None]]))
    return tok, out


def _untokens(tok, raw: np.ndarray, qmin: int, nsym: int) -> np.ndarray | None:
    """Inverse of :func:`_tokens` for one group: labels (uint16), or None when
    ``raw`` does not hold exactly the group's bits or an index falls outside
    the blob's ``nsym`` labels."""
    tok = np.asarray(tok).astype(np.int64)
    c = (tok + 1) // 2
    nb = np.maximum(c - 1, 0)
    total = int(nb.sum())
    if (total + 7) // 8 != raw.size:
        return None
    # each value's bits from the 24-bit big-endian window at its byte (nb <= 12, shift <= 7)
    o = np.cumsum(nb) - nb
    r = np.concatenate([raw, np.zeros(3, np.uint8)]).astype(np.int64)
    i = o >> 3
    win = (r[i] << 16) | (r[i + 1] << 8) | r[i + 2]
    e = (win >> (24 - (o & 7) - nb)) & ((np.int64(1) << nb) - 1)
    a = np.where(c > 0, np.left_shift(1, nb) + e, 0)
    lab = np.where(tok % 2 == 0, -a, a) - int(qmin)
    if lab.size and (int(lab.min()) < 0 or int(lab.max()) >= nsym):
        return None
    return lab.astype(np.uint16)


def _py_ctx_counts(sym, stab, lut, nc, counts, m):
    """Add each symbol of ``sym`` to ``counts[context * nc + symbol]``, its
    context from the running magnitude ``m`` (the ``ctx = 1`` rule over the
    flat order, lanes ignored); returns the final ``m``."""
    top = lut.size - 1
    for i in range(sym.size):
        s = sym[i]
        counts[lut[min(m, top)] * nc + s] += 1
        m += ((stab[s] << EMA_FRAC) - m) >> EMA_SHIFT
    return m


def _np_ctx_counts(sym, stab, lut, nc, counts, tail):
    """The NumPy stand-in of :func:`_py_ctx_counts`: the running magnitude as a
    float filter of :data:`_EMA_TAPS` taps (``tail``: the magnitudes before
    ``sym``, newest last); returns the new tail."""
    taps = (2.0 ** (EMA_FRAC - EMA_SHIFT)) * (1.0 - 2.0 ** -EMA_SHIFT) ** np.arange(_EMA_TAPS)
    mag = np.concatenate([tail, stab[sym].astype(np.float64)])
    m = np.zeros(sym.size, np.float64)
    for i, w in enumerate(taps):
        m += w * mag[_EMA_TAPS - 1 - i : _EMA_TAPS - 1 - i + sym.size]
    ctx = lut[np.minimum(m.astype(np.int64), lut.size - 1)]
    counts += np.bincount(ctx * nc + sym, minlength=counts.size)
    return mag[-_EMA_TAPS:]


_EMA_TAPS = 24  # the NumPy estimate's filter length (the weight left past it: 0.75**24 = 0.1 %)


def estimate_nbytes(labels, nsym: int, qmin: int, *, block: int = 1 << 20) -> float:
    """A quick bound-like estimate of :func:`encode`'s bytes: the static
    entropy of the coded symbols given their ``ctx = 1`` context (over the
    flat order, lanes ignored), plus the raw bits of tokens. The adaptive
    coder lands near it (a little over: it learns its tables), so a blob
    whose estimate does not beat another code need not be coded to know.
    One compiled pass where numba runs (VGG-16's fc6: ~1 s), else a float
    filter in NumPy."""
    lab = np.asarray(labels).reshape(-1)
    tok = nsym > TOKEN_NSYM
    nc = _coded_symbols(nsym, qmin)
    _, stab, lut, _ = _model(nc, qmin, tok, CTX_EMA)
    fn = _twins.get("ctx_counts")
    counts = np.zeros(NCTX_EMA * nc, np.int64)
    raw = 0
    state = 0 if fn is not None else np.zeros(_EMA_TAPS, np.float64)
    for s0 in range(0, lab.size, block):
        if tok:
            sym, ex = _tokens(lab[s0 : s0 + block], qmin, block)
            raw += sum(e.size for e in ex)
        else:
            sym = lab[s0 : s0 + block].astype(np.int64)
        if fn is not None:
            state = fn(sym, stab, lut, nc, counts, state)
        else:
            state = _np_ctx_counts(sym, stab, lut, nc, counts, state)
    c = counts.reshape(NCTX_EMA, nc).astype(np.float64)
    tot = c.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        bits = -np.where(c > 0, c * np.log2(c / np.maximum(tot, 1)), 0.0).sum()
    return bits / 8.0 + raw


def encode(labels, nsym: int, qmin: int, *, seg: int = SEG, engine: str = "auto",
           prefix: str = "a_", ctx: int = CTX_EMA) -> tuple[dict, dict]:
    """Code ``labels`` (host ints in ``[0, nsym)``, the indices minus ``qmin``).

    Alphabets up to :data:`TOKEN_NSYM` are coded as they are; larger ones
    (fine grids) as magnitude-class tokens plus raw bits (meta ``tok``,
    parts ``a_e`` bytes and ``a_m`` bytes per group), so the adaptive model
    learns ~25 frequencies a context instead of thousands.

    Parameters
    ----------
    labels : ndarray
        Flat labels.
    nsym : int
        Alphabet size, 2..4096.
    qmin : int
        The index of label 0 (the contexts use ``|label + qmin|``).
    seg : int
        Lane length (a format parameter, stored in the meta).
    engine : {"auto", "numba", "numpy"}
        Which twin runs; both give the same bytes.
    ctx : {1, 0}
        The context rule (module docstring); 0 is format 1.2's, kept to
        write test streams of it.

    Returns
    -------
    (dict, dict)
        The meta entries (``seg``, ``tok``, ``ctx``) and the parts (``a_w``, ``a_n``,
        ``a_x``; ``a_e``, ``a_m`` with tokens).
    """
    lab = np.asarray(labels).reshape(-1)
    n = int(lab.size)
    if not 2 <= nsym <= MAX_SYMBOLS:
        raise ValueError(f"nsym must be in 2..{MAX_SYMBOLS}, got {nsym}")
    if ctx not in (0, CTX_EMA):
        raise ValueError(f"unknown context rule {ctx!r}")
    tok = nsym > TOKEN_NSYM
    nsym_c = _coded_symbols(nsym, qmin)
    model = _model(nsym_c, qmin, tok, ctx)
    lanes, ls = lane_shape(n, seg)
    ng = -(-lanes // GROUP_LANES)
    fn = _twins.get("encode_group") if engine in ("auto", "numba") else None
    if engine == "numba" and fn is None:
        raise RuntimeError("numba is not installed")
    per, states = np.zeros(ng, np.uint32), np.zeros(lanes, np.uint32)
    extras = [None] * ng
    # numba: one group a call (groups are independent: threads, same bytes);
    # NumPy: ~16M values of groups side by side
    block = 1 if fn is not None else max(1, (1 << 24) // max(ls * GROUP_LANES, 1))

    def run(g0):
        g1 = min(ng, g0 + block)
        a, b = g0 * GROUP_LANES * ls, min(n, g1 * GROUP_LANES * ls)
        sym = lab[a:b]
        if tok:
            sym, ex = _tokens(sym, qmin, GROUP_LANES * ls)
            extras[g0:g1] = ex
        X, lens = _lanes(np.asarray(sym).astype(np.int64), b - a, ls)
        l0, l1 = g0 * GROUP_LANES, g0 * GROUP_LANES + X.shape[0]
        if fn is not None:
            buf = np.zeros(X.size + 2, np.int64)
            st = np.zeros(X.shape[0], np.int64)
            nw = fn(np.ascontiguousarray(X.T), lens, nsym_c, *model, buf, st)
            w, pg = buf[:nw].astype(np.uint16), [nw]
        else:
            w, pg, st = _np_encode_groups(X, lens, GROUP_LANES, nsym_c, model)
        per[g0:g1] = pg
        states[l0:l1] = st
        return w

    starts = range(0, ng, block)
    if fn is not None and len(starts) > 1:
        with ThreadPoolExecutor(max_workers=min(len(starts), worker_threads())) as ex:
            words = list(ex.map(run, starts))
    else:
        words = [run(g0) for g0 in starts]
    w = np.concatenate(words) if words else np.zeros(0, np.uint16)
    meta = {"seg": int(seg)}
    if ctx:
        meta["ctx"] = int(ctx)
    parts = {prefix + "w": w, prefix + "n": per, prefix + "x": states}
    if tok:
        meta["tok"] = 1
        parts[prefix + "e"] = np.concatenate(extras) if extras else np.zeros(0, np.uint8)
        parts[prefix + "m"] = np.array([e.size for e in extras], np.uint32)
    return meta, parts


def check(meta: dict, parts: dict, n: int, nsym: int, prefix: str = "a_", *, qmin: int = 0) -> int:
    """Validate the stream of ``n`` labels before decoding; returns the lane length.

    Raises
    ------
    CorruptDataError
        Wrong dtypes or sizes, words that do not add up, states out of range.
    """
    seg = meta.get("seg")
    if isinstance(seg, bool) or not isinstance(seg, (int, np.integer)) or not 1 <= int(seg) <= 1 << 20:
        raise CorruptDataError(f"rANS lane length {seg!r} is not an integer in 1..{1 << 20}")
    if not 2 <= nsym <= MAX_SYMBOLS:
        raise CorruptDataError(f"rANS alphabet of {nsym} symbols is outside 2..{MAX_SYMBOLS}")
    lanes, _ = lane_shape(n, int(seg))
    ng = -(-lanes // GROUP_LANES)
    tok = meta.get("tok", 0)
    if tok not in (0, 1) or isinstance(tok, bool):
        raise CorruptDataError(f"rANS token flag {tok!r} is not 0 or 1")
    if bool(tok) != (nsym > TOKEN_NSYM):
        raise CorruptDataError(f"rANS token flag {tok} does not fit an alphabet of {nsym}")
    ctx = meta.get("ctx", 0)
    if type(ctx) not in (int, np.int64) or ctx not in (0, CTX_EMA):  # not bool, not float
        raise CorruptDataError(f"rANS context rule {ctx!r} is not 0 or {CTX_EMA}")
    w, per, st = (np.asarray(parts.get(prefix + k, np.zeros(0))) for k in "wnx")
    if w.dtype != np.uint16 or w.ndim != 1:
        raise CorruptDataError("rANS words must be 1-D uint16")
    if per.dtype != np.uint32 or per.shape != (ng,):
        raise CorruptDataError(f"rANS word counts must be {ng} uint32, got {per.size} {per.dtype}")
    if st.dtype != np.uint32 or st.shape != (lanes,):
        raise CorruptDataError(f"rANS states must be {lanes} uint32, got {st.size} {st.dtype}")
    if int(per.astype(np.int64).sum()) != w.size:
        raise CorruptDataError(f"rANS word counts add up to {int(per.astype(np.int64).sum())}, stream holds {w.size}")
    if lanes and int(st.min()) < LOW:
        raise CorruptDataError("rANS lane state under the coder's lower bound")
    if tok:
        e, m = (np.asarray(parts.get(prefix + k, np.zeros(0))) for k in "em")
        if e.dtype != np.uint8 or e.ndim != 1 or m.dtype != np.uint32 or m.shape != (ng,):
            raise CorruptDataError(f"rANS raw bits must be uint8 bytes with {ng} uint32 byte counts")
        if int(m.astype(np.int64).sum()) != e.size:
            raise CorruptDataError("rANS raw byte counts do not add up to the raw stream")
    elif prefix + "e" in parts or prefix + "m" in parts:
        raise CorruptDataError("rANS raw bits without the token flag")
    coded = _coded_symbols(nsym, qmin)
    # every value costs at least -log2(1 - (coded - 1) / M) bits (no frequency
    # exceeds M - coded + 1), and the words and final states hold 16 bits each
    least = n * -np.log2(1.0 - (coded - 1) / M)
    if 16.0 * (w.size + lanes) + 64.0 < least:
        raise CorruptDataError(f"rANS stream of {w.size} words cannot hold {n} values over {coded} symbols")
    return int(seg)


def decode_groups(meta: dict, parts: dict, n: int, nsym: int, qmin: int, *, engine: str = "auto",
                  prefix: str = "a_"):
    """Yield the ``n`` labels (uint16) in order, a block of groups at a time.

    Raises
    ------
    CorruptDataError
        As :func:`check`, or a stream that does not end where the encoder started.
    """
    seg = check(meta, parts, n, nsym, prefix, qmin=qmin)
    w = np.asarray(parts[prefix + "w"])
    per = np.asarray(parts[prefix + "n"]).astype(np.int64)
    st = np.asarray(parts[prefix + "x"])
    lanes, ls = lane_shape(n, seg)
    ng = per.size
    tok = bool(meta.get("tok", 0))
    nsym_c = _coded_symbols(nsym, qmin)
    if tok:
        raw = np.asarray(parts[prefix + "e"])
        rstart = np.concatenate([[0], np.cumsum(np.asarray(parts[prefix + "m"]).astype(np.int64))])
    model = _model(nsym_c, qmin, tok, int(meta.get("ctx", 0)))
    fn = _twins.get("decode_group") if engine in ("auto", "numba") else None
    starts = np.concatenate([[0], np.cumsum(per)])
    step = 1 if fn is not None else max(1, (1 << 24) // max(ls * GROUP_LANES, 1))

    def run(g0):
        g1 = min(ng, g0 + step)
        a, b = g0 * GROUP_LANES * ls, min(n, g1 * GROUP_LANES * ls)
        l0 = g0 * GROUP_LANES
        nl = -(-(b - a) // ls)
        lens = np.minimum(ls, (b - a) - np.arange(nl, dtype=np.int64) * ls)
        ww = w[starts[g0] : starts[g1]]
        if fn is not None:
            out = np.zeros((ls, nl), np.uint16)
            bad = fn(ww.astype(np.int64), st[l0 : l0 + nl].astype(np.int64), lens, ls, nsym_c, *model, out)
            out = None if bad else np.ascontiguousarray(out.T)
        else:
            out = _np_decode_groups(ww, per[g0:g1], st[l0 : l0 + nl], lens, ls, GROUP_LANES, nsym_c, model)
        if out is None:
            raise CorruptDataError(f"rANS stream of group {g0} does not decode to its start state")
        out = out.reshape(-1)[: b - a]
        if not tok:
            return out.astype(np.uint16, copy=False)
        gs = GROUP_LANES * ls
        labs = []
        for g in range(g0, g1):
            lab = _untokens(out[(g - g0) * gs : (g - g0 + 1) * gs], raw[rstart[g] : rstart[g + 1]], qmin, nsym)
            if lab is None:
                raise CorruptDataError(f"rANS raw bits of group {g} do not fit its tokens")
            labs.append(lab)
        return np.concatenate(labs)

    groups = range(0, ng, step)
    if fn is None or len(groups) == 1:
        for g0 in groups:
            yield run(g0)
        return
    # a few groups decoded ahead on threads, yielded in order (memory: a few groups)
    nt = worker_threads()
    with ThreadPoolExecutor(max_workers=nt) as ex:
        pending = deque()
        for g0 in groups:
            pending.append(ex.submit(run, g0))
            if len(pending) > nt:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


_twins = Twins(globals(), first=(("_refresh", "_py_refresh"),))  # the numba twins, compiled on first use
