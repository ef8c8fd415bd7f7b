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

import numpy as np

__all__ = ["nearest_labels", "gptq_round", "output_sse", "bias_shift"]

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


def gptq_round(w: np.ndarray, H: np.ndarray, codebook: np.ndarray, *, damp: float = 0.01,
               block: int = _BLOCK) -> np.ndarray:
    """Labels of ``w`` on ``codebook`` chosen with the input Hessian ``H``.

    Parameters
    ----------
    w : numpy.ndarray
        ``(rows, cols)`` weights.
    H : numpy.ndarray
        ``(cols, cols)`` sum of ``x x^T`` over calibration input rows.
    codebook : numpy.ndarray
        Sorted reconstruction levels.
    damp : float
        Added to the diagonal, as a fraction of its mean (keeps a
        rank-deficient ``H`` invertible).
    block : int
        Columns per lazy block.

    Returns
    -------
    numpy.ndarray
        ``(rows, cols)`` int32 labels.
    """
    W = np.array(w, dtype=np.float64, copy=True)
    rows, cols = W.shape
    H = np.array(H, dtype=np.float64, copy=True)
    d = np.diag(H).copy()
    dead = d <= 0
    # a column no calibration row ever excites: its rounding costs nothing
    # at the output, so it is rounded to the nearest level and left out
    H[dead, dead] = 1.0
    perm = np.argsort(-np.diag(H), kind="stable")
    inv = np.empty_like(perm)
    inv[perm] = np.arange(cols)
    W = W[:, perm]
    H = H[np.ix_(perm, perm)]
    H[np.diag_indices(cols)] += damp * float(np.mean(np.diag(H)))
    try:
        L = np.linalg.cholesky(np.linalg.inv(H))
    except np.linalg.LinAlgError:
        H[np.diag_indices(cols)] += 0.1 * float(np.mean(np.diag(H)))
        L = np.linalg.cholesky(np.linalg.inv(H))
    U = L.T  # upper factor of H^-1
    cb = np.asarray(codebook, np.float64)
    labels = np.empty((rows, cols), np.int32)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1 = W[:, i1:i2].copy()
        E1 = np.empty_like(W1)
        U1 = U[i1:i2, i1:i2]
        for j in range(i2 - i1):
            col = W1[:, j]
            lab = nearest_labels(col, cb)
            labels[:, i1 + j] = lab
            err = (col - cb[lab]) / U1[j, j]
            W1[:, j:] -= np.outer(err, U1[j, j:])
            E1[:, j] = err
        if i2 < cols:
            W[:, i2:] -= E1 @ U[i1:i2, i2:]
    return labels[:, inv]


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
