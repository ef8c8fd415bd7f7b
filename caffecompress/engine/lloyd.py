"""Lloyd's algorithm on a weighted 1-D histogram (host only).

The data are the occupied grid values ``v`` (strictly ascending int64) with
counts ``w``. Cluster cells are contiguous runs of bins, found by
binary-searching the midpoints between sorted centroids, and a cell's count
and sum are differences of exact int64 prefix sums, so one iteration costs
``O(k log m)`` however many weights the blob has.

Rules (deterministic)
---------------------
- A value exactly at the midpoint of two centroids goes to the lower one.
- The new centroid is ``sum / count`` of its cell (exact int64 sums, one
  correctly rounded float64 division); a pinned centroid (the zero of
  ``keep_zero``) never moves.
- **Empty clusters** keep their centroid while Lloyd runs. When it reaches
  a fixed point with ``e`` empty (unpinned) clusters, they are dropped and
  the ``e`` cells whose best two-way split lowers the SSE most are split
  in two (centroids at the halves' means; gain formula in
  :func:`split_gains`; ties by lower cell); then Lloyd resumes. Each such
  step strictly lowers the SSE and keeps ``k`` clusters (fewer only if
  fewer cells can be split). Greedy splitting uses an empty cluster where
  it helps most; moving it onto the farthest point (scikit-learn's rule)
  spends most of a large k on a heavy-tailed blob's outliers. Relocating
  only at fixed points keeps the run insensitive to the grid's rounding.
- Iteration stops at a fixed point without empty clusters, or after
  ``max_iter`` centroid updates.

The whole run (iterations and relocations) is NumPy, or, when numba is
installed, a compiled twin with the same floating-point expressions (so the
same bits, cells and iteration count; parity-tested). The twin is
incremental: once every centroid is its cell's mean, a step recomputes only
the cells whose bounds moved and searches only the midpoints next to a
centroid that changed, starting from the old bound, so a late step costs
what changes, not ``O(k log m)``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["lloyd_histogram", "assign_cuts", "split_gains", "NUMBA"]

try:  # optional accelerator; the NumPy path is the reference and fallback
    import numba as _numba  # noqa: PLC0415
except Exception:  # pragma: no cover - numba absent or broken
    _numba = None

NUMBA = _numba is not None

_CONVERGED, _MAXITER = 0, 2
_SPLIT_CHUNK = 1 << 18  # split positions per step (chunking does not change the result)


def assign_cuts(vf: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Bin positions splitting sorted values ``vf`` among sorted centroids ``c``.

    Cluster ``j`` holds bins ``cuts[j]:cuts[j+1]``; a value at a midpoint goes
    to the lower cluster (``side='right'`` on the midpoints).
    """
    t = (c[:-1] + c[1:]) * 0.5
    cuts = np.empty(c.size + 1, np.int64)
    cuts[0], cuts[-1] = 0, vf.size
    cuts[1:-1] = np.searchsorted(vf, t, side="right")
    return cuts


def _steps_numpy(vf, W, S1, c, cuts, pinned, max_steps):
    steps = 0
    while steps < max_steps:
        cnt = W[cuts[1:]] - W[cuts[:-1]]
        sm = S1[cuts[1:]] - S1[cuts[:-1]]
        new = np.where(cnt > 0, sm.astype(np.float64) / np.maximum(cnt, 1).astype(np.float64), c)
        if pinned >= 0:
            new[pinned] = 0.0
        steps += 1
        c = new
        nxt = assign_cuts(vf, c)
        if np.array_equal(nxt, cuts):
            return c, nxt, steps, _CONVERGED
        cuts = nxt
    return c, cuts, steps, _MAXITER


if NUMBA:

    @_numba.njit(cache=True, nogil=True)
    def _search_right(vf, t, hint):  # pragma: no cover - compiled
        """``np.searchsorted(vf, t, side='right')``, galloping out from
        ``hint`` (boundaries move little between Lloyd steps); any correct
        search gives the same position."""
        n = vf.size
        if hint < 0:
            hint = 0
        elif hint > n:
            hint = n
        if hint < n and vf[hint] <= t:
            lo, step = hint + 1, 1  # answer > hint
            hi = lo
            while hi < n and vf[hi] <= t:
                lo = hi + 1
                hi = lo + step
                step <<= 1
            if hi > n:
                hi = n
        else:
            hi, step = hint, 1  # answer <= hint
            lo = hi
            while lo > 0 and vf[lo - 1] > t:
                hi = lo - 1
                lo = hi - step
                step <<= 1
            if lo < 0:
                lo = 0
        while lo < hi:
            mid = (lo + hi) >> 1
            if vf[mid] <= t:
                lo = mid + 1
            else:
                hi = mid
        return lo

    @_numba.njit(cache=True, nogil=True)
    def _steps_numba(vf, W, S1, c, cuts, pinned, max_steps):  # pragma: no cover - compiled
        # The same iterations as _steps_numpy, but incremental: after the
        # first step every occupied centroid is its cell's mean, so only
        # cells whose bounds moved get a new centroid, and only midpoints
        # next to a centroid that changed are searched again. Work lists
        # (not scans over k) carry both, so a late step costs what changes.
        # Skipped work would recompute identical values, and within a
        # phase no update reads another's result, so the result (bits,
        # cuts, step count) is the full iteration's.
        k = c.size
        c = c.copy()
        cuts = cuts.copy()
        in_dirty = np.ones(k, np.bool_)
        dirty = np.arange(k)
        nd = k
        in_bnd = np.zeros(k + 1, np.bool_)
        bnd = np.empty(k + 1, np.int64)  # boundary b separates cells b - 1 and b
        steps = 0
        while steps < max_steps:
            nb = 0
            for t in range(nd):
                j = dirty[t]
                in_dirty[j] = False
                n = W[cuts[j + 1]] - W[cuts[j]]
                if n > 0:
                    v = np.float64(S1[cuts[j + 1]] - S1[cuts[j]]) / np.float64(n)
                    if j == pinned:
                        v = 0.0
                    if v != c[j]:
                        for b in (j, j + 1):
                            if 0 < b < k and not in_bnd[b]:
                                in_bnd[b] = True
                                bnd[nb] = b
                                nb += 1
                    # assigned even when equal: the first step must
                    # give -0.0 inits the NumPy step's +0.0 bits
                    c[j] = v
            if pinned >= 0:
                if c[pinned] != 0.0:
                    for b in (pinned, pinned + 1):
                        if 0 < b < k and not in_bnd[b]:
                            in_bnd[b] = True
                            bnd[nb] = b
                            nb += 1
                c[pinned] = 0.0
            steps += 1
            nd = 0
            for t in range(nb):
                b = bnd[t]
                in_bnd[b] = False
                p = _search_right(vf, (c[b - 1] + c[b]) * 0.5, cuts[b])
                if p != cuts[b]:
                    cuts[b] = p
                    for j in (b - 1, b):
                        if not in_dirty[j]:
                            in_dirty[j] = True
                            dirty[nd] = j
                            nd += 1
            if nd == 0:
                return c, cuts, steps, 0
        return c, cuts, steps, 2

    @_numba.njit(cache=True, nogil=True)
    def _split_gains_numba(W, S1, cuts, pinned):  # pragma: no cover - compiled
        # split_gains' loop: same float expressions, lowest position on ties
        k = cuts.size - 1
        gain = np.full(k, -1.0)
        pos = np.zeros(k, np.int64)
        for j in range(k):
            if j == pinned:
                continue
            a, b = cuts[j], cuts[j + 1]
            for p in range(a + 1, b):
                WL, WR = W[p] - W[a], W[b] - W[p]
                SL, SR = S1[p] - S1[a], S1[b] - S1[p]
                d = np.float64(SR) / np.float64(WR) - np.float64(SL) / np.float64(WL)
                G = (np.float64(WL) * np.float64(WR) / np.float64(WL + WR)) * d * d
                if G > gain[j]:
                    gain[j] = G
                    pos[j] = p
        return gain, pos

    @_numba.njit(cache=True, nogil=True)
    def _relocate_numba(W, S1, c, cuts, pinned, missing):  # pragma: no cover - compiled
        # _relocate without its sorts. Which cells split: the e largest
        # gains, lower cell on ties, i.e. every gain above the e-th largest
        # and the lowest cells holding exactly that gain (the set the
        # NumPy twin's stable sort takes). The new centroids come out in
        # order from one walk over the cells: at a fixed point an occupied
        # centroid is its cell's mean and a split cell's two means lie
        # inside that cell, so cell order is value order (the pinned zero
        # sits between its neighbours' cells too), the array np.sort gives.
        k = c.size
        e = missing
        for j in range(k):
            if cuts[j + 1] == cuts[j] and j != pinned:
                e += 1
        gain, pos = _split_gains_numba(W, S1, cuts, pinned)
        ncand = 0
        for j in range(k):
            if gain[j] > 0:
                ncand += 1
        split = gain > 0
        if e == 0:
            split[:] = False
        elif ncand > e:
            # the e-th largest positive gain
            pool = gain[split]
            thr = np.partition(pool, ncand - e)[ncand - e]
            ties = e
            for j in range(k):
                if gain[j] > thr:
                    ties -= 1
            for j in range(k):
                if gain[j] < thr:
                    split[j] = False
                elif gain[j] == thr:
                    split[j] = ties > 0
                    ties -= 1
        nsplit = min(e, ncand)
        new = np.empty(k - e + missing + nsplit, np.float64)
        i = 0
        pz = -1
        for j in range(k):
            a, b = cuts[j], cuts[j + 1]
            if split[j]:
                p = pos[j]
                new[i] = np.float64(S1[p] - S1[a]) / np.float64(W[p] - W[a])
                new[i + 1] = np.float64(S1[b] - S1[p]) / np.float64(W[b] - W[p])
                i += 2
            elif b > a or j == pinned:
                if j == pinned:
                    pz = i
                new[i] = c[j]
                i += 1
        return new, pz

    @_numba.njit(cache=True, nogil=True)
    def _assign_cuts_numba(vf, c):  # pragma: no cover - compiled
        cuts = np.empty(c.size + 1, np.int64)
        cuts[0] = 0
        cuts[c.size] = vf.size
        for j in range(c.size - 1):
            # midpoints ascend: gallop from the previous cut
            cuts[j + 1] = _search_right(vf, (c[j] + c[j + 1]) * 0.5, cuts[j])
        return cuts

    @_numba.njit(cache=True, nogil=True)
    def _lloyd_numba(vf, W, S1, c, p, max_iter, k):  # pragma: no cover - compiled
        # _lloyd_numpy's driver loop, compiled; the caller computes the
        # moments once (refinement runs Lloyd again after every swap)
        cuts = _assign_cuts_numba(vf, c)
        it = 0
        while it < max_iter:
            c, cuts, steps, status = _steps_numba(vf, W, S1, c, cuts, p, max_iter - it)
            it += steps
            if status != 0:
                break
            n_empty = 0
            for j in range(c.size):
                if cuts[j + 1] == cuts[j] and j != p:
                    n_empty += 1
            missing = max(0, k - c.size)
            if n_empty == 0 and missing == 0:
                return c, cuts, it, True
            if it >= max_iter:
                break
            new, p2 = _relocate_numba(W, S1, c, cuts, p, missing)
            if n_empty == 0 and new.size == c.size:
                return c, cuts, it, True
            c, p = new, p2
            it += 1
            cuts = _assign_cuts_numba(vf, c)
        return c, cuts, it, False


def split_gains(W, S1, cuts, pinned=-1):
    """Best two-way split of every cell: ``(gain, position)`` per cluster.

    Splitting bins ``a:b`` at ``p`` lowers the SSE by
    ``G = (W_L * W_R / W) * (mean_R - mean_L)**2`` (the between-halves
    term; ``W`` counts, means from exact int64 sums), evaluated in float64 as
    ``(float(W_L) * float(W_R) / float(W)) * d * d`` with
    ``d = S_R / W_R - S_L / W_L``. The best ``p`` maximises ``G`` (lowest
    ``p`` on ties). Cells with fewer than two bins, and the pinned one, get
    gain ``-1``.
    """
    k = cuts.size - 1
    m = int(cuts[-1])
    gain = np.full(k, -1.0)
    pos = np.zeros(k, np.int64)
    # in chunks of split positions so temporaries stay small on huge
    # histograms; a later chunk wins only on a strictly larger gain, which
    # keeps the lowest position on ties
    for lo in range(1, m, _SPLIT_CHUNK):
        p = np.arange(lo, min(m, lo + _SPLIT_CHUNK), dtype=np.int64)
        lab = np.searchsorted(cuts, p, side="right") - 1  # cell holding bin p
        a, b = cuts[lab], cuts[lab + 1]
        ok = p > a
        if pinned >= 0:
            ok &= lab != pinned
        p, lab, a, b = p[ok], lab[ok], a[ok], b[ok]
        if p.size == 0:
            continue
        WL, WR = W[p] - W[a], W[b] - W[p]
        SL, SR = S1[p] - S1[a], S1[b] - S1[p]
        d = SR.astype(np.float64) / WR.astype(np.float64) - SL.astype(np.float64) / WL.astype(np.float64)
        G = (WL.astype(np.float64) * WR.astype(np.float64) / (WL + WR).astype(np.float64)) * d * d
        starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
        best = np.maximum.reduceat(G, starts)
        hit = np.flatnonzero(G == np.repeat(best, np.diff(np.r_[starts, G.size])))
        first = hit[np.searchsorted(hit, starts, side="left")]
        cells = lab[starts]
        better = best > gain[cells]
        gain[cells[better]] = best[better]
        pos[cells[better]] = p[first[better]]
    return gain, pos


def _relocate(vf, W, S1, c, cuts, pinned, missing=0):
    """At a fixed point with empty clusters (or ``missing`` ones): drop the
    empty ones and split the cells whose best split lowers the SSE most
    (see :func:`split_gains`)."""
    cnt = W[cuts[1:]] - W[cuts[:-1]]
    empty = cnt == 0
    if pinned >= 0:
        empty[pinned] = False
    e = int(empty.sum()) + int(missing)
    gain, pos = split_gains(W, S1, cuts, pinned)
    cand = np.flatnonzero(gain > 0)
    cand = cand[np.lexsort((cand, -gain[cand]))][:e]  # largest gain, then lower cell
    keep = ~empty
    keep[cand] = False
    j = cand
    a, b, p = cuts[j], cuts[j + 1], pos[j]
    mL = (S1[p] - S1[a]).astype(np.float64) / (W[p] - W[a]).astype(np.float64)
    mR = (S1[b] - S1[p]).astype(np.float64) / (W[b] - W[p]).astype(np.float64)
    new = np.sort(np.concatenate([c[keep], mL, mR]))
    pz = int(np.flatnonzero(new == 0.0)[0]) if pinned >= 0 else -1
    return new, pz


def lloyd_histogram(
    values, counts, centroids, *, pinned=None, max_iter=20_000, use_numba=None, k=None
):
    """Lloyd's algorithm on a weighted 1-D histogram, to its exact fixed point.

    Parameters
    ----------
    values : int64 array
        Strictly ascending grid values (more of them than centroids).
    counts : int64 array
        Positive weights.
    centroids : float64 array
        Strictly ascending initial centroids (grid units).
    pinned : int, optional
        Index of a centroid fixed at 0.0 (the zero of ``keep_zero``); the
        initial value there must be 0.0.
    max_iter : int
        Cap on centroid updates (relocation steps included).
    use_numba : bool, optional
        Force (True) or forbid (False) the compiled iterations; default: use
        them when numba is installed. Results are identical.
    k : int, optional
        Target number of clusters when fewer initial centroids are given
        (e.g. merged duplicate quantiles): the missing ones are created like
        relocated empty ones, by splitting cells at fixed points.

    Returns
    -------
    centroids : float64 array (strictly ascending)
    cuts : int64 array (k+1)
        Final cells as bin positions (consistent with ``centroids``).
    iterations : int
    converged : bool
    """
    v = np.asarray(values, np.int64)
    w = np.asarray(counts, np.int64)
    c = np.array(centroids, np.float64)
    p = -1 if pinned is None else int(pinned)
    use_numba = NUMBA if use_numba is None else (bool(use_numba) and NUMBA)
    k = c.size if k is None else int(k)
    if use_numba:
        vf, W, S1 = _moments_numba(v, w)
        c, cuts, it, conv = _lloyd_numba(vf, W, S1, c, p, int(max_iter), k)
        return c, cuts, int(it), bool(conv)
    vf, W, S1 = _moments(v, w)
    return _lloyd_numpy(vf, W, S1, c, p, int(max_iter), k)


def _moments(v, w):
    """``float64(v)`` and the exact int64 prefix sums of ``w`` and ``w * v``
    (``_moments_numba`` is its compiled twin for the compiled drivers)."""
    W = np.zeros(v.size + 1, np.int64)
    S1 = np.zeros(v.size + 1, np.int64)
    W[1:] = np.cumsum(w)
    S1[1:] = np.cumsum(w * v)
    return v.astype(np.float64), W, S1


if NUMBA:

    @_numba.njit(cache=True, nogil=True)
    def _moments_numba(v, w):  # pragma: no cover - compiled
        # _moments in one pass (exact integers, so the same arrays); the
        # array expressions compiled made five passes and a temporary
        # (4k bins: 8.7 -> 3.6 us)
        m = v.size
        vf = np.empty(m, np.float64)
        W = np.empty(m + 1, np.int64)
        S1 = np.empty(m + 1, np.int64)
        W[0] = 0
        S1[0] = 0
        for i in range(m):
            W[i + 1] = W[i] + w[i]
            S1[i + 1] = S1[i] + w[i] * v[i]
            vf[i] = np.float64(v[i])
        return vf, W, S1


def _lloyd_numpy(vf, W, S1, c, p, max_iter, k):
    """The driver: Lloyd steps to a fixed point, then relocation of empty
    (or missing) clusters, until a fixed point needs none (NumPy reference
    of ``_lloyd_numba``)."""
    cuts = assign_cuts(vf, c)
    it = 0
    while it < max_iter:
        c, cuts, steps, status = _steps_numpy(vf, W, S1, c, cuts, p, max_iter - it)
        it += steps
        if status != _CONVERGED:
            break
        empty = cuts[1:] == cuts[:-1]
        if p >= 0:
            empty[p] = False
        missing = max(0, k - c.size)
        if not empty.any() and not missing:
            return c, cuts, it, True
        if it >= max_iter:
            break
        new, p2 = _relocate(vf, W, S1, c, cuts, p, missing)
        if not empty.any() and new.size == c.size:
            return c, cuts, it, True  # nothing left to split
        c, p = new, p2
        it += 1
        cuts = assign_cuts(vf, c)
    return c, cuts, it, False
