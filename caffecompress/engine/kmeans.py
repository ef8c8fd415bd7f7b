"""Weight sharing by 1-D k-means on the integer grid.

The blob is mapped to a fine integer grid and histogrammed exactly
(:mod:`~caffecompress.engine.grid`); clustering then runs on the host (NumPy,
or its numba twin) on the histogram alone, and the labels come back from a
gather through a host-built (coarse) table of grid value -> cluster plus
integer compares, or for small device blobs from an integer
``searchsorted`` on the cell edges. The device never takes a float
decision, so ``xp=numpy`` and ``xp=cupy`` give the same codebook and labels
byte for byte; with numba, the host's histogram, Lloyd run, SSE and labels
run as compiled twins of the NumPy code, parity-tested bit for bit.

Rules (all deterministic)
-------------------------
- Assignment: a grid value goes to the nearest centroid; a value exactly at
  the midpoint of two centroids goes to the lower one.
- Lloyd iterations on the histogram cost O(k log bins) each (cluster sums
  are differences of exact int64 prefix sums) and stop at the exact fixed
  point (no cell changes) or after ``max_iter``
  (:mod:`~caffecompress.engine.lloyd`).
- Empty clusters: when Lloyd reaches a fixed point with ``e`` empty
  clusters, they are dropped and the ``e`` cells whose best two-way split
  lowers the SSE most are split (see :mod:`~caffecompress.engine.lloyd`);
  Lloyd resumes. Clusters still
  empty when ``max_iter`` stops the run are dropped from the codebook
  (``k_eff <= k``),
  except the pinned zero of ``keep_zero``; dropping one never moves an
  occupied value to another cluster (the merged midpoint lies inside the
  empty gap).
- ``keep_zero``: the init places ``k - 1`` centroids and 0.0 is added as a
  fixed one (if the init already put one at 0.0, the missing cluster is
  created by a split). With ``optimal`` that is the optimal ``k - 1``
  clustering plus zero, refined by Lloyd: the best answer when no kept value
  sits near zero (pruned blobs), otherwise not a proven optimum.
- ``density`` init: quantiles that coincide are merged; the missing
  clusters are then created like relocated empty ones.
- ``mask``: only kept (True) elements are clustered and count in ``sse``;
  labels of masked-out positions are the label of grid value 0, i.e. the
  zero centroid with ``keep_zero``, else the centroid nearest zero (lower on
  a tie). Restore pruned positions from the mask, not from these labels.
- ``exact``: when the kept values (plus 0.0 with ``keep_zero``) take at most
  ``k`` distinct float32 values, the codebook is those values and restoring
  is bit exact (subnormals and -0.0 restore as +0.0).
- A blob with no kept element gets the codebook ``[0.0]``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from . import grid as _grid
from . import lloyd as _lloyd
from .labels import _kept_label_counts, _label_blocks_on_grid, _labels_on_grid
from .lloyd import NUMBA, assign_cuts, lloyd_histogram
from .grid import (
    GridHistogram,
    float_keys,
    grid_histogram,
    iter_blocks,
    keys_to_float,
)

__all__ = ["INITS", "SharedWeights", "share_weights", "default_bits", "lloyd_histogram"]

INITS = ("linear", "density", "random", "optimal")
K_MIN, K_MAX = 2, 4096
DEFAULT_MAX_ITER = 20_000


@dataclasses.dataclass(frozen=True)
class SharedWeights:
    """Result of :func:`share_weights`.

    Attributes
    ----------
    codebook : ndarray of float32, shape (k,)
        Shared values, strictly ascending.
    labels : xp array, same shape as the input
        Index into ``codebook`` per element; uint8 when the requested
        ``k <= 256``, else uint16.
    sse : float
        Sum of squared errors over the kept elements, evaluated on the host
        from the histogram (grid values against the float32 codebook); 0.0
        when ``exact``.
    sqnr_db : float
        ``10 log10(sum x^2 / sse)`` over the kept elements; ``inf`` when
        ``sse == 0``.
    k : int
        Codebook length (``k_eff``; at most the requested k).
    exact : bool
        True when the codebook holds the kept values exactly.
    init : str
        Initialisation used.
    iterations : int
        Lloyd iterations run (0 for exact blobs).
    converged : bool
        True when Lloyd reached its fixed point (always True when exact).
    bits : int
        Grid resolution used.
    step : float
        Grid step (weight units).
    """

    codebook: np.ndarray
    labels: object
    sse: float
    sqnr_db: float
    k: int
    exact: bool
    init: str = "linear"
    iterations: int = 0
    converged: bool = True
    bits: int = 0
    step: float = 1.0

    def restore(self):
        """Dense float32 weights ``codebook[labels]`` (host NumPy array)."""
        from ..backend import to_host  # noqa: PLC0415

        return self.codebook[to_host(self.labels)]


def default_bits(k: int, n: int = 0) -> int:
    """Grid bits used when ``bits`` is not given: 22 up to k = 64, else 24;
    two fewer for blobs over 4M elements, whose histogram would otherwise
    occupy millions of bins (time and host memory for little gain; VGG-16's
    fc6 at 22 bits lifts the engine's peak from 1.47x to over 1.5x the
    weights).

    Lloyd converges slowly in 1-D: centroids keep drifting by tiny amounts
    for thousands of iterations. On a grid, a drift smaller than half a step
    moves no value between cells, so the run can stop early at a "grid
    fixed point", or take another path than Lloyd on the original floats.
    Measured on the 146 conv/fc blobs of ``benchmarks/bench_kmeans.py``
    against float Lloyd from the same linear init (SSE more than 0.1 %
    above it): at k = 32, 20 bits leave 2 blobs (0.64 % and 0.12 %), 22
    and 24 bits none (k = 16: none at 20 to 24 bits); at k = 256, 20 bits
    leave single blobs up to 11 % apart, 24 bits one blob at 0.19 % (51
    blobs end lower than float Lloyd).
    """
    bits = 22 if int(k) <= 64 else 24
    return bits if int(n) <= (1 << 22) else bits - 2


def _label_dtype(k: int):
    return np.uint8 if k <= 256 else np.uint16


# --------------------------------------------------------------------------
# host-side clustering on the histogram (grid units, float64)


def _init_linear(v, w, k):
    lo, hi = float(v[0]), float(v[-1])
    frac = np.arange(k, dtype=np.float64) / np.float64(k - 1)
    return lo + (hi - lo) * frac


def _init_density(v, w, k):
    # value at the (j + 1/2)/k quantile: first bin with cum*2k >= (2j+1)*n,
    # in exact integers
    cum = np.cumsum(w)
    n = int(cum[-1])
    target = (2 * np.arange(k, dtype=np.int64) + 1) * n
    pos = np.searchsorted(cum * (2 * k), target, side="left")
    return np.unique(v[np.minimum(pos, v.size - 1)]).astype(np.float64)


def _init_random(v, w, k, seed):
    rng = np.random.default_rng(seed)
    p = w.astype(np.float64) / float(w.sum())
    idx = rng.choice(v.size, size=k, replace=False, p=p)
    return np.sort(v[idx]).astype(np.float64)


def _optimal_centroids(v, w, k, max_bins):
    from .optimal import optimal_partition  # noqa: PLC0415

    cuts = optimal_partition(v, w, k, max_bins=max_bins)
    W = np.concatenate([[0], np.cumsum(w)])
    S1 = np.concatenate([[0], np.cumsum(w * v)])
    cnt = W[cuts[1:]] - W[cuts[:-1]]
    sm = S1[cuts[1:]] - S1[cuts[:-1]]
    return sm.astype(np.float64) / cnt.astype(np.float64)


def _cluster(h: GridHistogram, k, init, keep_zero, seed, max_iter, optimal_bins, refine=False):
    """Centroids (grid units, strictly ascending), iterations, converged."""
    v, w = h.values, h.counts
    # keep_zero: k - 1 free centroids from the init, plus the pinned 0.0
    kf = k - 1 if keep_zero else k
    if init == "linear":
        c = _init_linear(v, w, kf) if kf > 1 else np.array([(float(v[0]) + float(v[-1])) * 0.5])
    elif init == "density":
        c = _init_density(v, w, kf)
    elif init == "random":
        c = _init_random(v, w, kf, seed)
    else:
        c = _optimal_centroids(v, w, kf, optimal_bins)
    pinned = None
    if keep_zero:
        c = np.union1d(c, [0.0])
        pinned = int(np.flatnonzero(c == 0.0)[0])
    c, cuts, it, conv = lloyd_histogram(v, w, c, pinned=pinned, max_iter=max_iter, k=k)
    if refine and conv:
        from .refine import refine_histogram  # noqa: PLC0415

        if keep_zero:
            pinned = int(np.flatnonzero(c == 0.0)[0])
        c, cuts, _, it2, conv = refine_histogram(v, w, c, cuts, pinned=pinned, max_iter=max_iter, k=k)
        it += it2
    # drop clusters still empty (only if max_iter stopped the run), never the pinned zero
    keep = cuts[1:] > cuts[:-1]
    if keep_zero:
        keep[c == 0.0] = True
    return c[keep], it, conv


def _distinct_keys(a, m, xp, limit):
    """Sorted distinct float keys of the kept elements, or None if > limit."""
    D = np.zeros(0, np.int32)
    for s in iter_blocks(a.size):
        keys = float_keys(a[s], xp=xp)
        if m is not None:
            keys = keys[m[s]]
        if keys.size == 0:
            continue
        # seed with a small sample so a big quantised blob needs no full sort
        if D.size == 0:
            D = np.asarray(_to_host(xp.unique(keys[:65536])), np.int32)
            if D.size > limit:
                return None
        Dd = xp.asarray(D)
        pos = xp.searchsorted(Dd, keys, side="left")
        xp.clip(pos, 0, D.size - 1, out=pos)
        miss = Dd[pos] != keys
        if bool(miss.any()):
            new = np.asarray(_to_host(xp.unique(keys[miss])), np.int32)
            D = np.union1d(D, new).astype(np.int32)
            if D.size > limit:
                return None
    return D


def _to_host(a):
    from ..backend import to_host  # noqa: PLC0415

    return to_host(a)


def _exact_labels(a, m, D, zlab, xp, dtype):
    out = xp.empty(a.size, dtype=dtype)
    Dd = xp.asarray(D)
    for s in iter_blocks(a.size):
        keys = float_keys(a[s], xp=xp)
        lab = xp.searchsorted(Dd, keys, side="left")
        xp.clip(lab, 0, D.size - 1, out=lab)
        lab = lab.astype(dtype)
        if m is not None:
            lab = xp.where(m[s], lab, dtype(zlab))
        out[s] = lab
    return out


def _sse(h: GridHistogram, c_grid: np.ndarray, codebook: np.ndarray):
    """SSE and signal power of the kept elements, on the host from the
    histogram (grid values against the float32 codebook).

    Sums run in bin order, one addition after another (``np.cumsum``), so
    the compiled twin adds in the same order and gives the same bits.
    """
    if h.nbins == 0:
        return 0.0, 0.0
    if NUMBA:
        sse, signal = _sse_numba(h.values, h.counts, np.asarray(c_grid, np.float64),
                                 np.asarray(codebook).astype(np.float64), float(h.step))
        return float(sse), float(signal)
    vf = h.values.astype(np.float64)
    cuts = assign_cuts(vf, c_grid)
    lab = np.repeat(np.arange(c_grid.size), np.diff(cuts))
    xv = vf * h.step
    d = xv - codebook[lab].astype(np.float64)
    wf = h.counts.astype(np.float64)
    return float(np.cumsum(wf * d * d)[-1]), float(np.cumsum(wf * xv * xv)[-1])


if NUMBA:
    import numba as _numba  # noqa: PLC0415

    from . import refine as _refine
    from .labels import _host_labels_numba

    @_numba.njit(cache=True, nogil=True)
    def _sse_numba(v, counts, c, cb, step):  # pragma: no cover - compiled
        # _sse's NumPy expressions, element by element, in bin order
        m = v.size
        sse = 0.0
        sig = 0.0
        j = 0
        t = (c[0] + c[1]) * 0.5 if c.size > 1 else np.inf
        for i in range(m):
            vf = np.float64(v[i])
            # cells as assign_cuts: a value at a midpoint goes to the lower one
            while j < c.size - 1 and vf > t:
                j += 1
                t = (c[j] + c[j + 1]) * 0.5 if j < c.size - 1 else np.inf
            xv = vf * step
            d = xv - cb[j]
            wf = np.float64(counts[i])
            sse += wf * d * d
            sig += wf * xv * xv
        return sse, sig

    @_numba.njit(cache=True, nogil=True)
    def _small_share_numba(a, m, use_mask, levels, k, max_iter, refine, out):  # pragma: no cover - compiled
        # share_weights(init="linear", keep_zero=False) of one small host
        # blob in one call, composed of the same compiled twins in the same
        # order as _share: histogram, linear init (_init_linear's
        # expressions), Lloyd (and swap refinement with ``refine``, as
        # _cluster calls it), empty clusters dropped, codebook, SSE, labels.
        # Status 1: back to the general path (non-finite weights, nothing
        # kept, or no more occupied bins than clusters).
        empty = np.zeros(0, np.float32)
        bad, _, step, q, v, w, n = _grid._small_grid_numba(a, m, use_mask, levels)
        if bad or n == 0 or v.size <= k:
            return 1, empty, 0.0, 0.0, 0, True, step
        lo, hi = np.float64(v[0]), np.float64(v[-1])
        frac = np.arange(k).astype(np.float64) / np.float64(k - 1)
        vf, W, S1 = _lloyd._moments_numba(v, w)
        c, cuts, it, conv = _lloyd._lloyd_numba(vf, W, S1, lo + (hi - lo) * frac, -1, max_iter, k)
        if refine and conv:
            c, cuts, _, it2, conv = _refine._refine_numba(v, w, c, cuts, -1, max_iter, 4 * k, k)
            it += it2
        keep = cuts[1:] > cuts[:-1]
        c = c[keep]
        cb = (c * step).astype(np.float32)
        sse, sig = _sse_numba(v, w, c, cb.astype(np.float64), step)
        _host_labels_numba(q, m, use_mask, c, min(v[0], 0), max(v[-1], 0), out)
        return 0, cb, sse, sig, it, conv, step


def _sqnr(signal, sse):
    if sse <= 0.0:
        return math.inf
    if signal <= 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / sse)


# --------------------------------------------------------------------------


def share_weights(
    x,
    *,
    k: int,
    init: str = "linear",
    keep_zero: bool = False,
    mask=None,
    seed: int = 0,
    max_iter: int = DEFAULT_MAX_ITER,
    bits: int | None = None,
    optimal_bins="auto",
    xp=np,
    refine: bool = False,
    labels: bool = True,
) -> SharedWeights:
    """Share the weights of one blob among ``k`` values by 1-D k-means.

    Parameters
    ----------
    x : array (numpy or ``xp``)
        The blob, any shape; float32 (other float types are rounded to it).
    k : int
        Number of shared values, 2..4096.
    init : {"linear", "density", "random", "optimal"}
        ``linear``: evenly spaced over [min, max] (Deep Compression);
        ``density``: the (j + 1/2)/k quantiles (duplicates merged);
        ``random``: k distinct grid values drawn with probability
        proportional to their counts by ``np.random.default_rng(seed)`` on
        the host; ``optimal``: the minimum-SSE clustering of the grid values
        by dynamic programme (:mod:`~caffecompress.engine.optimal`; exact
        with ``optimal_bins=None``). Every init is followed by Lloyd
        iterations to a fixed point.
    keep_zero : bool
        Make 0.0 an exact, fixed centroid (pruned blobs).
    mask : bool array, optional
        True = kept. Only kept elements are clustered.
    seed : int
        Seed of the ``random`` init.
    max_iter : int
        Lloyd iteration cap.
    bits : int, optional
        Grid resolution; default :func:`default_bits` (k, size).
    optimal_bins : int, None or "auto"
        For ``init="optimal"``: place the programme's cuts between at most
        this many groups of adjacent grid bins (exact costs; then Lloyd on
        the full grid). ``"auto"`` (default) is
        :func:`~caffecompress.engine.optimal.auto_max_bins`; ``None`` runs the
        programme on every occupied bin, the exact optimum of the grid values
        (up to the 128 MiB back-pointer cap; see
        :func:`~caffecompress.engine.optimal.optimal_partition`).
    xp : module
        ``numpy`` or ``cupy``: where the per-element work runs.
    refine : bool
        After Lloyd's fixed point, swap-refine it
        (:mod:`~caffecompress.engine.refine`: merge the cheapest adjacent
        pair, split the cell that gains most, Lloyd again, while the SSE
        drops). Not the plain Lloyd result any more: lower SSE, more time.
    labels : bool
        False: leave the labels out (``labels=None``) where the blob is
        clustered, for a caller that needs only the codebook (the labels of a
        large blob cost as much time as its clustering).

    Returns
    -------
    SharedWeights

    Raises
    ------
    NonFiniteWeightsError
        NaN or Inf among the weights.
    ValueError
        ``k`` or ``init`` out of range, or a mask of the wrong size.
    """
    sw, _ = _share(x, k, init, keep_zero, mask, seed, max_iter, bits, optimal_bins, xp, lazy=not labels,
                   refine=refine)
    return sw


def _share(x, k, init, keep_zero, mask, seed, max_iter, bits, optimal_bins, xp, *, lazy, refine=False):
    """:func:`share_weights`; with ``lazy`` and a clustered (not exact) blob,
    the labels are left out (``labels=None``) and ``(blocks, counts)`` comes
    back beside the result: ``blocks(size)`` yields every element's label
    block by block, ``counts`` how many kept elements each label has."""
    k = int(k)
    if not K_MIN <= k <= K_MAX:
        raise ValueError(f"k must be in {K_MIN}..{K_MAX}, got {k}")
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    shape = tuple(np.shape(x)) if not hasattr(x, "shape") else tuple(x.shape)
    bits = default_bits(k, math.prod(shape)) if bits is None else int(bits)
    a = _grid._flat32(x, xp)
    m = _grid._flat_mask(mask, a.size, xp)
    dtype = _label_dtype(k)
    if init == "linear" and not keep_zero and NUMBA and _grid.NUMBA and xp is np and a.size <= _grid.SMALL:
        fast = _share_small(a, m, k, bits, max_iter, dtype, shape, lazy, refine)
        if fast is not None:
            return fast
    h, qcache = grid_histogram(a, bits=bits, mask=m, xp=xp, keep_index=True)

    def result(codebook, labels, sse, signal, exact, it=0, conv=True):
        return SharedWeights(
            codebook=np.ascontiguousarray(codebook, np.float32),
            labels=None if labels is None else labels.reshape(shape),
            sse=float(sse),
            sqnr_db=_sqnr(signal, sse),
            k=int(codebook.size),
            exact=bool(exact),
            init=init,
            iterations=int(it),
            converged=bool(conv),
            bits=bits,
            step=h.step,
        )

    if h.n == 0:
        # nothing kept: one zero centroid, every label 0
        return result(np.zeros(1, np.float32), xp.zeros(a.size, dtype=dtype), 0.0, 0.0, True), None

    iz = int(np.searchsorted(h.values, 0))  # values are sorted
    has_zero = iz < h.nbins and int(h.values[iz]) == 0
    need_zero = keep_zero and not has_zero
    if h.nbins + need_zero <= k:
        D = _distinct_keys(a, m, xp, k)
        if D is not None and keep_zero:
            D = np.union1d(D, np.zeros(1, np.int32)).astype(np.int32)
        if D is not None and D.size <= k:
            codebook = keys_to_float(D)
            _, signal = _sse(h, h.values.astype(np.float64), h.values * h.step)
            # label of grid value 0 for masked positions: nearest to zero
            zlab = int(np.argmin(np.abs(codebook.astype(np.float64))))
            labels = _exact_labels(a, m, D, zlab, xp, dtype)
            return result(codebook, labels, 0.0, signal, True), None
        # distinct floats share grid bins: one centroid per occupied bin
        c_grid = h.values.astype(np.float64)
        if need_zero:
            c_grid = np.union1d(c_grid, [0.0])
        it, conv = 0, True
    else:
        c_grid, it, conv = _cluster(h, k, init, keep_zero, seed, max_iter, optimal_bins, refine)

    codebook = (c_grid * h.step).astype(np.float32)
    sse, signal = _sse(h, c_grid, codebook)
    qc = qcache if a.size <= _grid.BLOCK else None
    if lazy:
        counts = _kept_label_counts(h, c_grid, codebook.size)
        # the labels need only the grid and the histogram's ends: the bins
        # (up to 16 bytes each) are let go before the labels are made
        ends = dataclasses.replace(h, values=h.values[[0, -1]], counts=h.counts[[0, -1]])

        def blocks(block=None):
            return _label_blocks_on_grid(a, m, ends, c_grid, qc, xp, dtype, block)

        return result(codebook, None, sse, signal, False, it, conv), (blocks, counts)
    labels = _labels_on_grid(a, m, h, c_grid, qc, xp, dtype)
    return result(codebook, labels, sse, signal, False, it, conv), None


def _share_small(a, m, k, bits, max_iter, dtype, shape, lazy, refine=False):
    """:func:`_share` for a small host blob with the linear init and no
    pinned zero: one compiled call (the same twins in the same order, so
    the same result; parity-tested), where the general path makes a dozen.
    None when the general path must decide (exact storage, nothing kept,
    non-finite weights)."""
    use_mask = m is not None
    mm = np.ascontiguousarray(m[:]) if use_mask else _grid._NO_MASK
    labels = np.empty(a.size, dtype)
    status, codebook, sse, signal, it, conv, step = _small_share_numba(
        np.ascontiguousarray(a), mm, use_mask, _grid.grid_levels(bits), k, int(max_iter), bool(refine), labels)
    if status:
        return None
    sw = SharedWeights(codebook=codebook, labels=None if lazy else labels.reshape(shape), sse=float(sse),
                       sqnr_db=_sqnr(float(signal), float(sse)), k=int(codebook.size), exact=False,
                       init="linear", iterations=int(it), converged=bool(conv), bits=int(bits), step=float(step))
    if not lazy:
        return sw, None
    counts = np.bincount(labels[mm] if use_mask else labels, minlength=codebook.size).astype(np.int64)

    def blocks(block=None):
        for s in iter_blocks(labels.size, block):
            yield labels[s]

    return sw, (blocks, counts)
