"""Dependent (trellis-coded) quantisation onto a uniform grid.

Two interleaved scalar quantisers share the grid ``m * step``: ``Q0`` holds
the even multiples (``m = 2k``), ``Q1`` the odd ones and zero (``m = 2k -
sign(k)``). A four-state machine picks the quantiser of each weight from the
parities of the indices before it (states 0, 1 use ``Q0``; 2, 3 use ``Q1``;
``next = TRANSITION[state][k & 1]``), so the decoder follows the encoder
with no side information, and the encoder chooses the whole index sequence
by a Viterbi search for the least squared error. The indices ``k`` span
about half the range of a plain grid of the same step, while the union of
the two quantisers fills the grid: at equal weight error the indices carry
~0.15 bit less each (measured on zoo blobs: 2-3 % fewer bytes at the
data-free rule's rates). This is the dependent quantisation of MPEG NNR and
VVC.

The flat blob is cut into segments of ``seg`` weights; each starts in state
0, so segments are independent (the NumPy twin runs them side by side).

Bit-identical twins: the numba loop and the NumPy lock-step version do the
same float64 operations in the same order (``t = x / (2*step)``, ``floor``,
``d = x - m*step``, ``d*d``, sums along the path) and break ties the same
way (the first source state, then the first candidate, in a fixed order),
so they return the same indices. Everything runs on the host.

A level whose float32 restoration would overflow (``|m*step| >=``
:data:`F32_OVERFLOW`, reachable only for weights within ~0.05 % of float32's
largest value, as a chosen level may lie up to ``2*step`` past the weight)
is no candidate, so finite weights never restore as infinities; the
candidate towards zero and zero itself always remain.

Functions
---------
:func:`quantize` - the Viterbi choice of indices.
:func:`levels` - the grid multiples ``m`` the indices stand for (the decoder's scan).
:func:`values` - the restored float32 values of a piece of labels (the scan fused).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .grid import Twins, worker_threads
from .uniform import F32_OVERFLOW, MAX_LEVEL, checked_step_and_max

__all__ = ["TRANSITION", "SEGMENT", "MAX_MULTIPLE", "F32_OVERFLOW", "grid_step_for", "quantize", "levels", "values",
           "have_compiled"]

#: ``TRANSITION[state, k & 1]``: the next state.
TRANSITION = np.array([[0, 2], [2, 0], [1, 3], [3, 1]], np.int64)
#: Weights per segment (each starts in state 0).
SEGMENT = 4096
_LANE_BLOCK = 1 << 21  # weights per NumPy lock-step block (traceback ~20 bytes a weight)

_CHUNK = 1 << 20  # weights per chunk of the encoder (float64 copy ~8 MiB)




def have_compiled() -> bool:
    """True when numba is installed (the compiled twins run)."""
    return _twins.have()


# ---------------------------------------------------------------- encoder

def _py_viterbi(x, step, seg, out):
    """Sequential Viterbi (the numba twin's source; also runs as plain Python).

    Each weight's three candidates per quantiser (and their squared errors)
    are computed once and shared by the two states that use the quantiser;
    the relaxation order (source state, then candidate) is the NumPy twin's.
    """
    n = x.size
    inf = np.inf
    tr = np.array([[0, 2], [2, 0], [1, 3], [3, 1]], np.int64)
    bk = np.zeros((seg, 4), np.int64)
    bs = np.zeros((seg, 4), np.int64)
    cost = np.zeros(4)
    new = np.zeros(4)
    ck = np.zeros((2, 3), np.int64)  # [quantiser, candidate] -> index
    cd = np.zeros((2, 3))  # its squared error
    two = 2.0 * step
    big = 2.0**128 - 2.0**103  # F32_OVERFLOW, spelt out here as tr is
    for s0 in range(0, n, seg):
        s1 = min(s0 + seg, n)
        cost[:] = inf
        cost[0] = 0.0
        for i in range(s0, s1):
            xi = x[i]
            k0 = np.int64(np.floor(xi / two))
            ck[0, 0] = k0
            ck[0, 1] = k0 + 1
            m0 = np.int64(np.floor(xi / step))
            if m0 % 2 == 0:
                m0 -= 1
            m1 = m0 + 2
            ck[1, 0] = (m0 + 1) // 2 if m0 > 0 else (m0 - 1) // 2
            ck[1, 1] = (m1 + 1) // 2 if m1 > 0 else (m1 - 1) // 2
            ck[0, 2] = 0
            ck[1, 2] = 0
            for c in range(3):
                k = ck[0, c]
                lv = (2 * k) * step
                d = xi - lv
                cd[0, c] = d * d if abs(lv) < big else inf
                k = ck[1, c]
                lv = (2 * k - (1 if k > 0 else (-1 if k < 0 else 0))) * step
                d = xi - lv
                cd[1, c] = d * d if abs(lv) < big else inf
            new[:] = inf
            for s in range(4):
                cs = cost[s]
                if cs == inf:
                    continue
                q = 0 if s < 2 else 1
                for c in range(3):
                    k = ck[q, c]
                    v = cs + cd[q, c]
                    t = tr[s, k & 1]
                    if v < new[t]:
                        new[t] = v
                        bk[i - s0, t] = k
                        bs[i - s0, t] = s
            cost[:] = new
        best = 0
        for s in range(1, 4):
            if cost[s] < cost[best]:
                best = s
        st = best
        for i in range(s1 - 1, s0 - 1, -1):
            out[i] = bk[i - s0, st]
            st = bs[i - s0, st]


def _lockstep(X, step):
    """The NumPy twin: Viterbi over the rows of ``X`` (lanes x seg, NaN-padded) side by side."""
    L, S = X.shape
    inf = np.inf
    cost = np.full((L, 4), inf)
    cost[:, 0] = 0.0
    bk = np.zeros((S, L, 4), np.int64)
    bs = np.zeros((S, L, 4), np.int8)
    two = 2.0 * step
    src = np.repeat(np.arange(4), 3)  # option order: source state, then candidate
    for i in range(S):
        pad = np.isnan(X[:, i])
        xi = np.where(pad, 0.0, X[:, i])  # padding past a short last segment: cost kept below
        k0 = np.floor(xi / two).astype(np.int64)
        m0 = np.floor(xi / step).astype(np.int64)
        m0 = np.where(m0 % 2 == 0, m0 - 1, m0)
        m1 = m0 + 2
        c10 = np.where(m0 > 0, (m0 + 1) // 2, (m0 - 1) // 2)
        c11 = np.where(m1 > 0, (m1 + 1) // 2, (m1 - 1) // 2)
        z = np.zeros(L, np.int64)
        cq0 = np.stack([k0, k0 + 1, z], 1)
        cq1 = np.stack([c10, c11, z], 1)
        K = np.concatenate([cq0, cq0, cq1, cq1], 1)  # (L, 12)
        M = np.concatenate([2 * cq0, 2 * cq0, 2 * cq1 - np.sign(cq1), 2 * cq1 - np.sign(cq1)], 1)
        lv = M * step
        d = xi[:, None] - lv
        v = cost[:, src] + d * d
        v = np.where(np.isinf(cost[:, src]) | (np.abs(lv) >= F32_OVERFLOW), inf, v)
        dst = TRANSITION[src[None, :], K & 1]
        for t in range(4):
            vt = np.where(dst == t, v, inf)
            j = np.argmin(vt, axis=1)
            cost_t = vt[np.arange(L), j]
            bk[i, :, t] = K[np.arange(L), j]
            bs[i, :, t] = src[j]
            if t == 0:
                newc = np.empty((L, 4))
            newc[:, t] = cost_t
        cost = np.where(pad[:, None], cost, newc)
    return cost, bk, bs


def _numpy_viterbi(x, step, seg, out):
    n = x.size
    lanes_per_block = max(1, _LANE_BLOCK // seg)
    nseg = -(-n // seg)
    for g0 in range(0, nseg, lanes_per_block):
        g1 = min(g0 + lanes_per_block, nseg)
        a, b = g0 * seg, min(g1 * seg, n)
        X = np.full((g1 - g0) * seg, np.nan)
        X[: b - a] = x[a:b]
        X = X.reshape(g1 - g0, seg)
        cost, bk, bs = _lockstep(X, step)
        L = g1 - g0
        lens = np.minimum(seg, n - (np.arange(g0, g1) * seg))
        # first minimum over the states, as the sequential loop takes it
        st = np.argmin(cost, axis=1)
        K = np.zeros((L, seg), np.int64)
        rows = np.arange(L)
        for i in range(seg - 1, -1, -1):
            live = i < lens
            K[:, i] = np.where(live, bk[i, rows, st], 0)
            st = np.where(live, bs[i, rows, st].astype(np.int64), st)
        out[a:b] = K.reshape(-1)[: b - a]


#: ``max|x| / step`` a dependent-quantisation grid may reach: the candidates
#: of a weight are ``k <= (x/step + 3) / 2``, so indices stay within
#: ``+-(MAX_LEVEL - 1)`` (the plain grid's symbol range).
MAX_MULTIPLE = 2 * MAX_LEVEL - 4


def grid_step_for(x, step: float, *, xp=np) -> float:
    """``step``, made coarser where ``max|x| / step`` would exceed :data:`MAX_MULTIPLE`.

    The dependent-quantisation twin of
    :func:`caffecompress.engine.uniform.grid_step_for` (same screening, same
    float64 host arithmetic); 1.0 for an all-zero blob.
    """
    step, m = checked_step_and_max(x, step, xp=xp)
    if m == 0.0:
        return 1.0
    s = max(step, float(np.float64(m) / np.float64(MAX_MULTIPLE)))
    while m / s > MAX_MULTIPLE:
        s = math.nextafter(s, math.inf)
    return s


def quantize(x, step: float, *, seg: int = SEGMENT, engine: str = "auto") -> np.ndarray:
    """Dependent-quantisation indices of ``x`` on the grid of ``step`` (host).

    Parameters
    ----------
    x : array_like
        Finite weights (float32 or float64, any shape; taken flat as float64).
    step : float
        The grid step (> 0).
    seg : int
        Weights per segment (each starts in state 0).
    engine : {"auto", "numpy", "compiled"}
        The numba loop or the NumPy lock-step twin (same indices).

    Returns
    -------
    numpy.ndarray of int16
        The indices ``k`` (within ``+-MAX_LEVEL`` on a step from
        :func:`grid_step_for`; a finer step overflows: ValueError); :func:`levels` gives the grid multiples they stand for.
    """
    flat = np.asarray(x).reshape(-1)
    out = np.zeros(flat.size, np.int16)  # |k| <= MAX_LEVEL once the step is grid_step_for's
    step, seg = float(step), int(seg)
    fn = _twins.get("viterbi") if engine != "numpy" else None
    if engine == "compiled" and fn is None:
        raise RuntimeError("the compiled trellis needs numba (pip install 'caffecompress[fast]')")
    # whole segments at a time (a float64 copy of a chunk, not of the blob);
    # segments are independent, so the chunks run on threads (numba releases
    # the GIL) and give the same indices in any order
    width = seg * max(1, (_CHUNK if fn is not None else _LANE_BLOCK) // seg)

    def run(s0):
        a = np.ascontiguousarray(flat[s0 : s0 + width], np.float64)
        o = np.zeros(a.size, np.int64)
        if fn is not None:
            fn(a, step, seg, o)
        else:
            _numpy_viterbi(a, step, seg, o)
        if o.size and max(-int(o.min()), int(o.max())) > MAX_LEVEL:
            raise ValueError(f"step {step!r} is too fine for these weights (use grid_step_for)")
        out[s0 : s0 + a.size] = o

    starts = range(0, flat.size, width)
    if fn is not None and len(starts) > 1:
        with ThreadPoolExecutor(max_workers=min(len(starts), worker_threads())) as ex:
            list(ex.map(run, starts))
    else:
        for s0 in starts:
            run(s0)
    return out


# ---------------------------------------------------------------- decoder

def _py_scan(lab, qmin, step, seg, m, out, to_float):
    """The decoder's state walk over labels ``lab`` (indices minus ``qmin``)
    from a segment boundary: the grid multiples into ``m``, or with
    ``to_float`` straight to ``out = float32(m * step)`` (no temporaries)."""
    tr = np.array([0, 2, 2, 0, 1, 3, 3, 1], np.int64)
    n = lab.size
    i = 0
    while i < n:
        end = min(n, i + seg)
        st = 0
        for j in range(i, end):
            kj = np.int64(lab[j]) + qmin
            if st < 2:
                mj = 2 * kj
            else:
                mj = 2 * kj - (1 if kj > 0 else (-1 if kj < 0 else 0))
            if to_float:
                out[j] = np.float32(np.float64(mj) * step)
            else:
                m[j] = mj
            st = tr[2 * st + (kj & 1)]
        i = end


def values(lab, qmin: int, step: float, *, start: int = 0, seg: int = SEGMENT, engine: str = "auto") -> np.ndarray:
    """The restored float32 values of labels ``lab`` (indices ``k - qmin``) of a
    piece starting at flat position ``start`` (a segment boundary):
    ``float32(m * step)``, the product in float64, as :func:`levels` gives ``m``."""
    if int(start) % int(seg):
        raise ValueError("a piece of dependent-quantisation indices must start at a segment boundary")
    lab = np.ascontiguousarray(np.asarray(lab).reshape(-1))
    fn = _twins.get("scan") if engine != "numpy" else None
    if fn is None:
        m = levels(lab.astype(np.int64) + int(qmin), start=start, seg=seg, engine="numpy")
        return (m.astype(np.float64) * float(step)).astype(np.float32)
    out = np.empty(lab.size, np.float32)
    width = int(seg) * max(1, _CHUNK // int(seg))
    starts = range(0, lab.size, width)
    nom = np.zeros(0, np.int64)

    def run(s0):  # whole segments a chunk: independent, any order
        fn(lab[s0 : s0 + width], np.int64(qmin), float(step), int(seg), nom, out[s0 : s0 + width], True)

    if len(starts) > 1:
        with ThreadPoolExecutor(max_workers=min(len(starts), worker_threads())) as ex:
            list(ex.map(run, starts))
    else:
        run(0)
    return out


def _numpy_scan(k, start, seg, m):
    # segments side by side: pad the piece to whole segments, scan the columns
    off = start % seg
    n = k.size
    tot = off + n
    L = -(-tot // seg)
    K = np.zeros(L * seg, np.int64)
    K[off : off + n] = k
    K = K.reshape(L, seg)
    M = np.empty_like(K)
    st = np.zeros(L, np.int64)
    for i in range(seg):
        c = K[:, i]
        M[:, i] = np.where(st < 2, 2 * c, 2 * c - np.sign(c))
        st = TRANSITION[st, c & 1]
    m[:] = M.reshape(-1)[off : off + n]


def levels(k, *, start: int = 0, seg: int = SEGMENT, engine: str = "auto") -> np.ndarray:
    """The grid multiples ``m`` (int64) of dependent-quantisation indices.

    ``k`` may be a piece of the blob's index sequence beginning at flat
    position ``start``; it must then begin at a segment boundary
    (``start % seg == 0``), since the state is not carried in.
    """
    k = np.ascontiguousarray(np.asarray(k, np.int64).reshape(-1))
    if int(start) % int(seg):
        raise ValueError("a piece of dependent-quantisation indices must start at a segment boundary")
    m = np.empty(k.size, np.int64)
    fn = _twins.get("scan") if engine != "numpy" else None
    if fn is not None:
        fn(k, np.int64(0), 1.0, int(seg), m, np.zeros(0, np.float32), False)
    else:
        _numpy_scan(k, int(start), int(seg), m)
    return m


_twins = Twins(globals())  # the numba twins, compiled on first use
