"""Error-compensating rounding onto a codebook (GPTQ/OBQ-style) and bias correction.

Given a layer's weight matrix ``W`` (rows: outputs, columns: im2col'd
inputs), a codebook and the input Hessian ``H = X^T X`` of calibration rows,
:func:`gptq_round` rounds the columns one at a time onto the codebook and
spreads each column's rounding error over the columns not yet rounded, with
the update that minimises ``||X (W - Q)^T||`` (Frantar & Alistarh, 2022):
columns in order of decreasing ``H_ii`` (the inputs that carry most energy
first), the upper Cholesky factor of ``H^-1``, and lazy blocks of columns
whose updates of the remaining columns are applied as one matrix product.

All float work runs on the host in float64, in a fixed order, from exact
inputs: a CPU and a GPU run give the same labels. The codebook itself comes
from the engine's k-means (:mod:`.kmeans`), on ``xp``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .grid import Twins

__all__ = ["nearest_labels", "nearest_error", "HessianFactor", "hessian_factor", "gptq_round", "output_sse", "bias_shift"]

_BLOCK = 128


#: Values a call needs before the bucket table pays for itself (building it
#: costs one searchsorted over its edges).
_LUT_MIN = 1 << 15
#: Table buckets per codebook level.
_LUT_PER_LEVEL = 8


def _table(x: np.ndarray, mid: np.ndarray):
    """``(lut, lo, scale, nb)`` of the bucket table over the midpoints ``mid``
    for a call on ``x``, or None where the binary search is the better (or
    the only exact) way."""
    lo, span = float(mid[0]), float(mid[-1]) - float(mid[0])
    nb = _LUT_PER_LEVEL * (mid.size + 1)
    # the table needs a finite bucket width: no infinite level, no span that
    # overflows or is too narrow for its buckets
    if x.size < _LUT_MIN or mid.size < 16 or not (0.0 < span < math.inf) or not nb / span < math.inf:
        return None
    scale = nb / span
    # lut[b + 1]: the count of midpoints below bucket b's lower edge (a guess
    # only: the float bucket of a value may be off by one; both ways correct it)
    lut = np.concatenate(([0], np.searchsorted(mid, lo + np.arange(nb + 1) / scale, side="left"),
                          [mid.size])).astype(np.int32)
    return lut, lo, scale, nb


def nearest_labels(w: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Index of the nearest codebook entry for each value (ties to the lower entry).

    ``codebook`` must be sorted ascending. The result is
    ``searchsorted(midpoints, w, side="left")``; large calls on codebooks of
    many levels start from a table of uniform buckets over the midpoints and
    correct the guess exactly (compiled when numba is installed), which is
    2-10x faster than the binary search and gives the same labels.
    """
    cb = np.asarray(codebook, np.float64)
    if cb.size == 1:
        return np.zeros(np.shape(w), np.int32)
    mid = (cb[1:] + cb[:-1]) * 0.5
    x = np.asarray(w, np.float64)
    tab = _table(x, mid)
    if tab is None:
        return np.searchsorted(mid, x, side="left").astype(np.int32)
    lut, lo, scale, nb = tab
    shape = x.shape
    x = np.ascontiguousarray(x).reshape(-1)
    fn = _twins.get("nearest")
    if fn is not None:
        out = np.empty(x.size, np.int32)
        fn(x, mid, lut, lo, scale, nb, out)
        return out.reshape(shape)
    t = (x - lo) * scale
    np.floor(t, out=t)
    t += 1.0
    np.fmin(np.fmax(t, 0.0, out=t), nb + 1, out=t)  # fmax: NaN goes to bucket 0 (then searched)
    g = lut[t.astype(np.intp)]
    midx = np.concatenate(([-np.inf], mid, [np.inf]))
    bad = ~((midx[g] < x) & (x <= midx[g + 1]))
    if bad.any():
        g[bad] = np.searchsorted(mid, x[bad], side="left")
    return g.reshape(shape)


def nearest_error(w: np.ndarray, codebook: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rounding error to the nearest codebook entry, and each entry's count.

    Returns ``(delta, counts)``: ``delta = codebook[nearest_labels(w,
    codebook)] - w`` in float64 (``w``'s shape) and ``counts`` the labels'
    bincount over the codebook, without the labels: what a candidate's
    distortion and bytes need of a large blob. One compiled pass (``w`` read
    as it is, float32 or float64) where :func:`nearest_labels` would use its
    table; the same values either way.
    """
    cb = np.asarray(codebook, np.float64)
    a = np.asarray(w)
    fn = _twins.get("nearest_error") if cb.size > 1 and a.dtype in (np.float32, np.float64) else None
    if fn is not None:
        mid = (cb[1:] + cb[:-1]) * 0.5
        tab = _table(a, mid)
        if tab is not None:
            x = np.ascontiguousarray(a).reshape(-1)
            d = np.empty(x.size, np.float64)
            counts = np.zeros(cb.size, np.int64)
            fn(x, cb, mid, *tab, d, counts)
            return d.reshape(a.shape), counts
    lab = nearest_labels(a, cb)
    return cb[lab] - a.astype(np.float64), np.bincount(lab.reshape(-1), minlength=cb.size).astype(np.int64)


def _py_nearest_error(x, cb, mid, lut, lo, scale, nb, d, counts):
    """:func:`nearest_error`'s pass: :func:`_py_nearest`'s walk, then the error and the count.

    The walk is written out here as in :func:`_py_nearest`: as one compiled
    helper called per value, both loops ran 5x slower (20 -> 108 ms on 4M
    values)."""
    n = mid.size
    for i in range(x.size):
        v = np.float64(x[i])
        if v != v:
            g = n
        else:
            t = (v - lo) * scale
            if t < 0.0:
                b = 0
            elif t >= nb:
                b = nb + 1
            else:
                b = int(t) + 1
            g = lut[b]
            while g < n and mid[g] < v:
                g += 1
            while g > 0 and mid[g - 1] >= v:
                g -= 1
        d[i] = cb[g] - v
        counts[g] += 1


def _py_nearest(x, mid, lut, lo, scale, nb, out):
    """:func:`nearest_labels`' table walk (the numba twin's source)."""
    n = mid.size
    for i in range(x.size):
        v = x[i]
        if v != v:  # NaN sorts last, as in searchsorted
            out[i] = n
            continue
        t = (v - lo) * scale
        if t < 0.0:
            b = 0
        elif t >= nb:
            b = nb + 1
        else:
            b = int(t) + 1
        g = lut[b]
        while g < n and mid[g] < v:
            g += 1
        while g > 0 and mid[g - 1] >= v:
            g -= 1
        out[i] = g


@dataclass(frozen=True)
class HessianFactor:
    """What GPTQ-style rounding needs of an input Hessian, for any codebook.

    ``perm`` orders each group's columns by decreasing ``H_ii``; ``U`` is the
    upper Cholesky factor of the damped, permuted ``H^-1``.
    """

    perm: np.ndarray
    inv: np.ndarray
    U: np.ndarray


def hessian_factor(H: np.ndarray, *, damp: float = 0.01) -> HessianFactor:
    """Factor ``H`` (``(cols, cols)`` or ``(groups, cols, cols)``) once per layer.

    Parameters
    ----------
    H : numpy.ndarray
        Sum of ``x x^T`` over calibration input rows.
    damp : float
        Added to the diagonal, as a fraction of its mean (keeps a
        rank-deficient ``H`` invertible).
    """
    H = np.array(H, dtype=np.float64, copy=True)
    if H.ndim == 2:
        H = H[None]
    cols = H.shape[1]
    diag = np.diagonal(H, axis1=1, axis2=2).copy()
    dead = diag <= 0
    # a column no calibration row ever excites: its rounding costs nothing
    # at the output; a unit diagonal keeps the factor defined
    gi, ci = np.nonzero(dead)
    H[gi, ci, ci] = 1.0
    diag[dead] = 1.0
    # columns with the most input energy first (per group, ties in column order)
    perm = np.argsort(-diag, axis=1, kind="stable")
    inv = np.argsort(perm, axis=1, kind="stable")
    H = np.take_along_axis(np.take_along_axis(H, perm[:, :, None], axis=1), perm[:, None, :], axis=2)
    idx = np.arange(cols)
    H[:, idx, idx] += damp * diag.mean(axis=1, keepdims=True)
    try:
        L = np.linalg.cholesky(np.linalg.inv(H))
    except np.linalg.LinAlgError:
        H[:, idx, idx] += 0.1 * diag.mean(axis=1, keepdims=True)
        L = np.linalg.cholesky(np.linalg.inv(H))
    return HessianFactor(perm, inv, np.ascontiguousarray(np.swapaxes(L, 1, 2)))


def gptq_round(w: np.ndarray, H, codebook: np.ndarray, *, damp: float = 0.01,
               block: int = _BLOCK, thresholds: np.ndarray | None = None) -> np.ndarray:
    """Labels of ``w`` on ``codebook`` chosen with the input Hessian ``H``.

    Parameters
    ----------
    w : numpy.ndarray
        ``(rows, cols)`` weights, or ``(groups, rows, cols)`` for grouped
        convolutions (each group with its own Hessian, rounded together).
    H : numpy.ndarray or HessianFactor
        ``(cols, cols)`` (or ``(groups, cols, cols)``) sum of ``x x^T`` over
        calibration input rows, or its :func:`hessian_factor`.
    codebook : numpy.ndarray
        Sorted reconstruction levels.
    damp : float
        Diagonal damping when ``H`` is a matrix (see :func:`hessian_factor`).
    block : int
        Columns per lazy block.
    thresholds : numpy.ndarray, optional
        Sorted decision thresholds between neighbouring levels (one fewer
        than the levels): a value takes the level of the interval it falls
        in (``searchsorted(thresholds, v, "left")``). Default: the levels'
        midpoints, i.e. the nearest level. A zero bin wider than the others
        prunes small weights by magnitude, the rest of the row absorbing
        the change (``benchmarks/dev_pruning.py``).

    Returns
    -------
    numpy.ndarray
        int32 labels, shaped like ``w``.
    """
    f = H if isinstance(H, HessianFactor) else hessian_factor(H, damp=damp)
    single = np.ndim(w) == 2
    W = np.array(w, dtype=np.float64, copy=True)
    if single:
        W = W[None]
    G, rows, cols = W.shape
    W = np.take_along_axis(W, f.perm[:, None, :], axis=2)
    U = f.U
    cb = np.asarray(codebook, np.float64)
    labels = np.empty((G, rows, cols), np.int32)
    fn = _twins.get("gptq_block")
    custom = thresholds is not None
    mid = np.asarray(thresholds, np.float64) if custom else (cb[1:] + cb[:-1]) * 0.5
    if mid.shape != (cb.size - 1,):
        raise ValueError(f"thresholds: need {cb.size - 1} values, got shape {mid.shape}")
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1 = W[:, :, i1:i2].copy()
        E1 = np.empty_like(W1)
        U1 = np.ascontiguousarray(U[:, i1:i2, i1:i2])
        if fn is not None:
            L1 = np.empty(W1.shape, np.int32)
            fn(W1, E1, U1, cb, mid, L1)
            labels[:, :, i1:i2] = L1
        else:
            for j in range(i2 - i1):
                col = W1[:, :, j]
                lab = np.searchsorted(mid, col).astype(np.int32) if custom else nearest_labels(col, cb)
                labels[:, :, i1 + j] = lab
                err = (col - cb[lab]) / U1[:, j, j][:, None]
                W1[:, :, j:] -= err[:, :, None] * U1[:, j, j:][:, None, :]
                E1[:, :, j] = err
        if i2 < cols:
            W[:, :, i2:] -= np.matmul(E1, U[:, i1:i2, i2:])
    labels = np.take_along_axis(labels, f.inv[:, None, :], axis=2)
    return labels[0] if single else labels


def _py_gptq_block(W1, E1, U1, cb, mid, L1):
    """One lazy block of :func:`gptq_round`, column by column (the numba
    twin's source): the same products and differences, in the same order,
    as the NumPy loop, so both give the same labels and updates."""
    G, rows, B = W1.shape
    n = mid.size
    for j in range(B):
        for g in range(G):
            d = U1[g, j, j]
            for r in range(rows):
                v = W1[g, r, j]
                # searchsorted(mid, v, "left"): the midpoints below v (NaN: all)
                if v != v:
                    lab = n
                else:
                    a, b = 0, n
                    while a < b:
                        h = (a + b) >> 1
                        if mid[h] < v:
                            a = h + 1
                        else:
                            b = h
                    lab = a
                L1[g, r, j] = lab
                e = (v - cb[lab]) / d
                for c in range(j, B):
                    W1[g, r, c] -= e * U1[g, j, c]
                E1[g, r, j] = e


def output_sse(delta: np.ndarray, X: np.ndarray, shift: np.ndarray | None = None) -> float:
    """``sum ||(X @ delta^T) - shift||^2`` over rows: the output change a weight change makes.

    ``delta`` is ``(rows_out, cols)``, ``X`` ``(n, cols)``, ``shift`` an
    optional per-output offset (a bias correction's).
    """
    Y = np.asarray(X, np.float64) @ np.asarray(delta, np.float64).T
    if shift is not None:
        Y -= shift[None, :]
    return float(np.einsum("ij,ij->", Y, Y))


def bias_shift(delta: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """The mean output change ``delta @ E[x]`` a bias correction subtracts."""
    return np.asarray(delta, np.float64) @ np.asarray(mean, np.float64)


_twins = Twins(globals())  # the numba twins of _py_nearest, _py_nearest_error and _py_gptq_block, compiled on first use
