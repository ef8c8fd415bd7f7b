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

from dataclasses import dataclass

import numpy as np

__all__ = ["nearest_labels", "HessianFactor", "hessian_factor", "gptq_round", "output_sse", "bias_shift"]

_BLOCK = 128


def nearest_labels(w: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Index of the nearest codebook entry for each value (ties to the lower entry).

    ``codebook`` must be sorted ascending.
    """
    cb = np.asarray(codebook, np.float64)
    if cb.size == 1:
        return np.zeros(np.shape(w), np.int32)
    mid = (cb[1:] + cb[:-1]) * 0.5
    return np.searchsorted(mid, np.asarray(w, np.float64), side="left").astype(np.int32)


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
               block: int = _BLOCK) -> np.ndarray:
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
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1 = W[:, :, i1:i2].copy()
        E1 = np.empty_like(W1)
        U1 = U[:, i1:i2, i1:i2]
        for j in range(i2 - i1):
            col = W1[:, :, j]
            lab = nearest_labels(col, cb)
            labels[:, :, i1 + j] = lab
            err = (col - cb[lab]) / U1[:, j, j][:, None]
            W1[:, :, j:] -= err[:, :, None] * U1[:, j, j:][:, None, :]
            E1[:, :, j] = err
        if i2 < cols:
            W[:, :, i2:] -= np.matmul(E1, U[:, i1:i2, i2:])
    labels = np.take_along_axis(labels, f.inv[:, None, :], axis=2)
    return labels[0] if single else labels


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
