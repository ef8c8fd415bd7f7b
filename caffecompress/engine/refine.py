"""Swap refinement of a 1-D k-means fixed point (host only).

Lloyd stops at a local optimum; in 1-D a common one wastes two clusters on
neighbours that differ little while another cell holds a wide spread. A
*swap* merges the adjacent pair whose merge costs least and splits the cell
whose best two-way split gains most, when the gain exceeds the cost (by a
relative 1e-12, so rounding cannot loop); Lloyd (with its empty-cluster
rule, :mod:`~caffecompress.engine.lloyd`) then runs again to a fixed point.
Each swap strictly lowers the SSE, so the refinement ends; ``max_swaps``
caps it for time.

Costs and gains are the exact between-group terms from int64 prefix sums,
in float64: merging cells ``a`` and ``b`` costs
``(W_a * W_b / (W_a + W_b)) * (mean_b - mean_a)**2``; split gains are
:func:`~caffecompress.engine.lloyd.split_gains`. Ties: the lowest pair, the
lowest cell. The split cell is never one of the merged pair, and a pinned
centroid (``keep_zero``) is neither merged nor split. As with Lloyd, a
NumPy driver is the reference and a numba-compiled twin gives the same
bits (parity-tested).

Not used by the presets: measured on the zoo, it lowered the SSE of every
blob (below scikit-learn's too) but gave larger files and no closer outputs
through OpenCV (benchmarks/README.md, "Clustering").
"""

from __future__ import annotations

import numpy as np

from . import lloyd as _lloyd
from .lloyd import NUMBA, split_gains

__all__ = ["refine_histogram"]

_REL = 1e-12  # a swap must gain more than (1 + _REL) x its cost


def _swap_numpy(W, S1, c, cuts, p):
    """Centroids after the best swap, or None when no swap gains."""
    k = c.size
    if k < 3:
        return None
    cnt = W[cuts[1:]] - W[cuts[:-1]]
    sm = S1[cuts[1:]] - S1[cuts[:-1]]
    cf = cnt.astype(np.float64)
    mu = sm.astype(np.float64) / np.maximum(cf, 1.0)
    d = mu[1:] - mu[:-1]
    cost = (cf[:-1] * cf[1:] / np.maximum(cf[:-1] + cf[1:], 1.0)) * d * d
    bad = (cnt[:-1] == 0) | (cnt[1:] == 0)
    if p >= 0:
        bad[max(p - 1, 0) : p + 1] = True
    cost[bad] = np.inf
    jm = int(np.argmin(cost))
    if not np.isfinite(cost[jm]):
        return None
    gain, pos = split_gains(W, S1, cuts, p)
    gain[jm] = gain[jm + 1] = -1.0
    js = int(np.argmax(gain))
    if not gain[js] > cost[jm] * (1.0 + _REL):
        return None
    a, b, q = cuts[js], cuts[js + 1], pos[js]
    mL = np.float64(S1[q] - S1[a]) / np.float64(W[q] - W[a])
    mR = np.float64(S1[b] - S1[q]) / np.float64(W[b] - W[q])
    merged = np.float64(sm[jm] + sm[jm + 1]) / np.float64(cnt[jm] + cnt[jm + 1])
    keep = np.ones(k, bool)
    keep[[jm, jm + 1, js]] = False
    return np.sort(np.concatenate([c[keep], [merged, mL, mR]]))


def _refine_numpy(v, w, c, cuts, p, max_iter, max_swaps, k):
    vf, W, S1 = _lloyd._moments(v, w)
    swaps = it = 0
    conv = True
    while swaps < max_swaps:
        new = _swap_numpy(W, S1, c, cuts, p)
        if new is None:
            break
        p = int(np.flatnonzero(new == 0.0)[0]) if p >= 0 else -1
        c, cuts, steps, conv = _lloyd._lloyd_numpy(vf, W, S1, new, p, max_iter, k)
        swaps += 1
        it += steps
        if not conv:
            break
    return c, cuts, swaps, it, conv


if NUMBA:
    import numba as _numba  # noqa: PLC0415

    @_numba.njit(cache=True, nogil=True)
    def _refine_numba(v, w, c, cuts, p, max_iter, max_swaps, k):  # pragma: no cover - compiled
        # _refine_numpy with _swap_numpy's expressions, compiled
        vf, W, S1 = _lloyd._moments_numba(v, w)
        swaps = 0
        it = 0
        conv = True
        while swaps < max_swaps:
            kk = c.size
            if kk < 3:
                break
            jm = -1
            best = np.inf
            for j in range(kk - 1):
                na = W[cuts[j + 1]] - W[cuts[j]]
                nb = W[cuts[j + 2]] - W[cuts[j + 1]]
                if na == 0 or nb == 0 or (p >= 0 and (j == p or j + 1 == p)):
                    continue
                fa, fb = np.float64(na), np.float64(nb)
                ma = np.float64(S1[cuts[j + 1]] - S1[cuts[j]]) / fa
                mb = np.float64(S1[cuts[j + 2]] - S1[cuts[j + 1]]) / fb
                d = mb - ma
                cost = (fa * fb / (fa + fb)) * d * d
                if cost < best:
                    best = cost
                    jm = j
            if jm < 0:
                break
            gain, pos = _lloyd._split_gains_numba(W, S1, cuts, p)
            gain[jm] = -1.0
            gain[jm + 1] = -1.0
            js = 0
            for j in range(1, kk):
                if gain[j] > gain[js]:
                    js = j
            if not gain[js] > best * (1.0 + 1e-12):
                break
            a, b, q = cuts[js], cuts[js + 1], pos[js]
            new = np.empty(kk, np.float64)
            n = 0
            for j in range(kk):
                if j != jm and j != jm + 1 and j != js:
                    new[n] = c[j]
                    n += 1
            new[n] = np.float64(S1[cuts[jm + 2]] - S1[cuts[jm]]) / np.float64(W[cuts[jm + 2]] - W[cuts[jm]])
            new[n + 1] = np.float64(S1[q] - S1[a]) / np.float64(W[q] - W[a])
            new[n + 2] = np.float64(S1[b] - S1[q]) / np.float64(W[b] - W[q])
            new = np.sort(new)
            if p >= 0:
                p = np.flatnonzero(new == 0.0)[0]
            c, cuts, steps, conv = _lloyd._lloyd_numba(vf, W, S1, new, p, max_iter, k)
            swaps += 1
            it += steps
            if not conv:
                break
        return c, cuts, swaps, it, conv


def refine_histogram(values, counts, centroids, cuts, *, pinned=None, max_iter=20_000,
                     max_swaps=None, k=None, use_numba=None):
    """Swap-refine a Lloyd fixed point of a weighted 1-D histogram.

    Parameters
    ----------
    values, counts : int64 arrays
        The histogram (as for :func:`~caffecompress.engine.lloyd.lloyd_histogram`).
    centroids, cuts :
        A fixed point from :func:`~caffecompress.engine.lloyd.lloyd_histogram`.
    pinned : int, optional
        Index of a centroid fixed at 0.0.
    max_iter : int
        Lloyd iteration cap of each run after a swap.
    max_swaps : int, optional
        Cap on swaps (default: ``4 * k``).
    k : int, optional
        Target cluster count for the Lloyd runs (default: ``len(centroids)``).
    use_numba : bool, optional
        Force or forbid the compiled twin (same result).

    Returns
    -------
    centroids, cuts, swaps, iterations, converged
        ``swaps`` made and Lloyd ``iterations`` spent; ``converged`` False
        when a Lloyd run hit ``max_iter``.
    """
    v = np.asarray(values, np.int64)
    w = np.asarray(counts, np.int64)
    c = np.array(centroids, np.float64)
    cuts = np.array(cuts, np.int64)
    p = -1 if pinned is None else int(pinned)
    k = c.size if k is None else int(k)
    max_swaps = 4 * k if max_swaps is None else int(max_swaps)
    use_numba = NUMBA if use_numba is None else (bool(use_numba) and NUMBA)
    fn = _refine_numba if use_numba else _refine_numpy
    c, cuts, swaps, it, conv = fn(v, w, c, cuts, p, int(max_iter), max_swaps, k)
    return c, cuts, int(swaps), int(it), bool(conv)
