"""The fine integer grid every lossy stage works on.

A blob ``x`` is mapped to signed integers ``q = rint(x / step)`` on a
zero-anchored symmetric grid, ``step = max|x| / L`` with ``L = 2**(bits-1) - 1``
(computed in float64 on the host), so ``q`` lies in ``[-L, L]``, zero stays
exactly zero and a constant or all-zero blob never divides by zero. The
device only does integer and gather work on it: it computes ``q`` (one
correctly rounded float64 division and ``rint``, no fused multiply-add
possible), and counts an exact integer histogram of ``q`` (integer atomics are
order-free). Every float decision is then taken on the host in NumPy from the
integer bin values and counts, so NumPy and CuPy give the same bits.

Conventions shared by :mod:`~caffecompress.engine.prune` and
:mod:`~caffecompress.engine.kmeans`:

- weights are shared as float32: float64/float16 input is rounded to float32
  first;
- NaN/Inf are refused (:class:`~caffecompress.errors.NonFiniteWeightsError`,
  with the count; callers add the layer name);
- float32 subnormals and ``-0.0`` are canonicalised to ``+0.0`` (GPU kernels
  flush subnormals; doing it explicitly makes both backends agree);
- large blobs are processed in blocks of at most :data:`BLOCK` elements, so
  temporaries stay a small multiple of one block.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..backend import to_host
from ..errors import NonFiniteWeightsError
from .packedmask import PackedMask

__all__ = [
    "BLOCK",
    "DEFAULT_BITS",
    "GridHistogram",
    "canonicalize",
    "float_keys",
    "keys_to_float",
    "screen_finite",
    "max_abs",
    "grid_levels",
    "grid_step",
    "grid_index",
    "grid_histogram",
    "iter_blocks",
]

#: Elements per processing block (4M: float64 temporaries of 32 MiB).
BLOCK = 1 << 22
#: Default grid resolution in bits (levels = 2**(bits-1) - 1 per side).
DEFAULT_BITS = 18
_TINY32 = np.float32(np.finfo(np.float32).tiny)
# Bit patterns of float32 (as int32): exponent all ones = NaN/Inf;
# magnitudes below the smallest normal are zero or subnormal.
_EXP_MASK = np.int32(0x7F800000)
_ABS_MASK = np.int32(0x7FFFFFFF)
_MIN_NORMAL_BITS = np.int32(0x00800000)


def _step(xp, device: int) -> int:
    """Elements per step of element-wise work: :data:`_INDEX_STEP` on the
    host, where the temporaries add to the process's peak memory; ``device``
    on a GPU, where every step costs kernel launches and a host sync."""
    return _INDEX_STEP if xp is np else device


def iter_blocks(n: int, block: int | None = None):
    """Yield ``slice`` objects covering ``range(n)`` in blocks of ``block``
    (default: the module's :data:`BLOCK`, read at call time)."""
    block = BLOCK if block is None else int(block)
    for start in range(0, n, block):
        yield slice(start, min(start + block, n))


def _flat32(x, xp):
    """``x`` flattened as a float32 ``xp`` array (a view when possible)."""
    a = xp.asarray(x)
    if a.dtype != xp.float32:
        if a.dtype.kind != "f":
            raise TypeError(f"weights must be floating point, got dtype {a.dtype}")
        a = a.astype(xp.float32)
    return a.reshape(-1)


def _flat_mask(mask, size, xp):
    if mask is None:
        return None
    if isinstance(mask, PackedMask):  # host, flat, read block by block as it is
        if mask.size != size:
            raise ValueError(f"mask has {mask.size} elements, weights have {size}")
        return mask
    m = xp.asarray(mask)
    if m.dtype != xp.bool_:
        raise TypeError(f"mask must be boolean, got dtype {m.dtype}")
    if m.size != size:
        raise ValueError(f"mask has {m.size} elements, weights have {size}")
    return m.reshape(-1)


def _bits(a32, xp):
    """int32 bit patterns of a float32 array (subnormal-safe: no float op)."""
    return a32.view(xp.int32)


def screen_finite(x, *, xp=np) -> None:
    """Raise if ``x`` holds NaN or Inf.

    Integer test on the float32 bit patterns, so it is exact on both
    backends.

    Raises
    ------
    NonFiniteWeightsError
        Naming how many values are non-finite (callers add ``layer=``).
    """
    a = _flat32(x, xp)
    bad = 0
    for s in iter_blocks(a.size, _step(xp, BLOCK)):  # a count: any step gives it
        bad += int(((_bits(a[s], xp) & _ABS_MASK) >= _EXP_MASK).sum())
    if bad:
        raise NonFiniteWeightsError(
            f"{bad} of {a.size} weights are NaN or Inf; lossy compression refuses them"
        )


def canonicalize(x) -> np.ndarray:
    """Host copy of ``x`` as float32 with subnormals and -0.0 set to +0.0.

    Returns ``x`` itself (as float32) when nothing needs changing.
    """
    a = np.asarray(x)
    if a.dtype != np.float32:
        a = a.astype(np.float32)
    tiny = np.abs(a) < _TINY32
    if not tiny.any():
        return a
    a = a.copy()
    a[tiny] = 0.0
    return a


def float_keys(x, *, xp=np):
    """Order-preserving int32 keys of canonicalised float32 values.

    ``key(a) < key(b)`` iff ``a < b`` for finite, canonical floats; subnormals
    and ``-0.0`` get the key of ``+0.0`` (``0``). Pure integer work.
    """
    b = _bits(_flat32(x, xp), xp)
    mag = b & _ABS_MASK
    b = xp.where(mag < _MIN_NORMAL_BITS, xp.int32(0), b)
    # negative floats: flip the magnitude bits so larger magnitude sorts lower
    return b ^ ((b >> 31) & _ABS_MASK)


def keys_to_float(keys) -> np.ndarray:
    """Inverse of :func:`float_keys` (host): int32 keys -> float32 values."""
    k = np.asarray(keys, dtype=np.int32)
    return (k ^ ((k >> 31) & _ABS_MASK)).view(np.float32)


def _screen_and_max(a, m, xp, screen):
    """One pass: count NaN/Inf (if ``screen``) and the largest canonical |x|
    of the kept elements, both from integer bit patterns (order-free)."""
    bad, best = 0, 0
    # a count and a max (order-free), so in steps of any size
    for s in iter_blocks(a.size, _step(xp, BLOCK)):
        mag = _bits(a[s], xp) & _ABS_MASK
        if mag.size == 0:
            continue
        if screen:
            # exponent all ones <=> magnitude bits >= those of +inf
            bad += int((mag >= _EXP_MASK).sum())
        if m is not None:
            mag = xp.where(m[s], mag, xp.int32(0))
        best = max(best, int(mag.max()))
    if bad:
        raise NonFiniteWeightsError(
            f"{bad} of {a.size} weights are NaN or Inf; lossy compression refuses them"
        )
    if best < int(_MIN_NORMAL_BITS):  # zero or subnormal
        return 0.0
    return float(np.asarray(best, np.int32).view(np.float32))


def max_abs(x, mask=None, *, xp=np) -> float:
    """Largest canonical ``|x|`` over the kept (``mask``) elements; 0.0 if none.

    Taken on the float32 bit patterns (for non-negative floats they order
    like the values), so it is exact and identical on both backends.
    """
    a = _flat32(x, xp)
    return _screen_and_max(a, _flat_mask(mask, a.size, xp), xp, screen=False)


def grid_levels(bits: int) -> int:
    """``L = 2**(bits-1) - 1``: grid points per side of zero."""
    if not 2 <= int(bits) <= 30:
        raise ValueError(f"grid bits must be in 2..30, got {bits}")
    return (1 << (int(bits) - 1)) - 1


def grid_step(maxabs: float, bits: int) -> float:
    """Grid step ``max|x| / L`` in float64; 1.0 for an all-zero blob."""
    maxabs = float(maxabs)
    if maxabs <= 0.0:
        return 1.0
    return float(np.float64(maxabs) / np.float64(grid_levels(bits)))


def grid_index(x, step: float, levels: int, *, xp=np):
    """Signed int32 grid values ``clip(rint(x / step), -L, L)`` of one block.

    ``x`` is converted to float64 exactly; the division is correctly rounded
    on both backends and nothing can be fused with it. Subnormals and zero
    map to 0 by an integer test, not by the division.
    """
    a = _flat32(x, xp)
    istep = _step(xp, 1 << 20)
    if a.size <= istep:
        return _grid_index_part(a, step, levels, xp)
    # element-wise, so done in steps into one int32 result: the float64 and
    # mask temporaries stay at a step's size instead of 4.25x the block's
    q = xp.empty(a.size, xp.int32)
    for s in iter_blocks(a.size, istep):
        q[s] = _grid_index_part(a[s], step, levels, xp)
    return q


_INDEX_STEP = 1 << 18  # elements per host step of element-wise work: float64 temporaries of 2 MiB
_COUNT_STEP = 1 << 20  # least elements per histogram step (each step zeroes and adds the bins)


def _grid_index_part(a, step, levels, xp):
    t = a.astype(xp.float64)
    t /= xp.float64(step)
    xp.rint(t, out=t)
    xp.clip(t, -levels, levels, out=t)  # clamp before the float->int cast
    q = t.astype(xp.int32)
    del t
    mag = _bits(a, xp) & _ABS_MASK
    q[mag < _MIN_NORMAL_BITS] = 0
    return q


try:  # optional accelerator; the NumPy path is the reference and fallback
    import numba as _numba  # noqa: PLC0415
except Exception:  # pragma: no cover - numba absent or broken
    _numba = None

NUMBA = _numba is not None


def numba_or_none():
    """The numba module, or None where it is not installed."""
    return _numba


def compile_twin(namespace: dict, name: str, cache: dict, nb, first=()):
    """The numba-compiled ``_py_<name>`` of a module (its ``globals()``),
    compiled once into ``cache``; None when ``nb`` (numba) is None.

    ``first``: ``(global name, source name)`` of compiled callees, compiled
    and rebound first (numba binds a module's globals when it compiles).
    """
    if name not in cache:
        if nb is None:
            cache[name] = None
        else:
            for glob, src in first:
                if not hasattr(namespace[glob], "py_func"):
                    namespace[glob] = nb.njit(cache=True, nogil=True)(namespace[src])
            cache[name] = nb.njit(cache=True, nogil=True)(namespace["_py_" + name])
    return cache[name]


class Twins:
    """The lazily compiled numba twins of one module's ``_py_*`` functions.

    ``namespace`` is the module's ``globals()``; ``first`` as for
    :func:`compile_twin`. ``numba`` is a callable giving the numba module or
    None (tests replace it to run the NumPy twins).
    """

    def __init__(self, namespace: dict, first=()):
        self.namespace, self.first, self.cache = namespace, tuple(first), {}
        self.numba = numba_or_none

    def have(self) -> bool:
        """True when numba is installed (the compiled twins run)."""
        return self.numba() is not None

    def get(self, name: str):
        """The compiled ``_py_<name>``, or None without numba."""
        return compile_twin(self.namespace, name, self.cache, self.numba(), self.first)


def worker_threads() -> int:
    """Threads for chunked compiled loops that release the GIL (the trellis,
    the rANS groups): the machine's cores, at most 8."""
    import os  # noqa: PLC0415

    return max(1, min(8, os.cpu_count() or 1))
#: Host blobs up to this size take the compiled histogram (two calls in
#: all, where the NumPy path makes dozens of small ones).
SMALL = 1 << 16
_NO_MASK = np.zeros(0, np.bool_)  # stand-in for "no mask" (empty: nothing to write)

if NUMBA:

    @_numba.njit(cache=True, nogil=True)
    def _small_screen_max_numba(a, m, use_mask):  # pragma: no cover - compiled
        # _screen_and_max: NaN/Inf count, and the largest canonical |x| of
        # the kept elements (integer tests on the bit patterns)
        ib = a.view(np.int32)
        bad = 0
        best = np.float32(0.0)
        for i in range(a.size):
            mag = ib[i] & 0x7FFFFFFF
            if mag >= 0x7F800000:
                bad += 1
            elif mag >= 0x00800000 and (not use_mask or m[i]):
                v = abs(a[i])
                if v > best:
                    best = v
        return bad, best

    @_numba.njit(cache=True, nogil=True, inline="always")
    def _grid_value_numba(x, xbits, step, levels):  # pragma: no cover - compiled
        # grid_index of one weight: the same float64 division, rint and
        # clamp; subnormals and zero -> 0 by the integer test
        if (xbits & 0x7FFFFFFF) < 0x00800000:
            return np.int32(0)
        t = np.rint(np.float64(x) / step)
        if t < -levels:
            t = -levels
        elif t > levels:
            t = levels
        return np.int32(t)

    @_numba.njit(cache=True, nogil=True)
    def _small_index_hist_numba(a, m, use_mask, step, levels):  # pragma: no cover - compiled
        # grid_index and the exact histogram of the kept values (a sort,
        # then runs: any sort gives the same runs)
        n = a.size
        ib = a.view(np.int32)
        q = np.empty(n, np.int32)
        sel = np.empty(n, np.int32)
        ns = 0
        for i in range(n):
            qi = _grid_value_numba(a[i], ib[i], step, levels)
            q[i] = qi
            if not use_mask or m[i]:
                sel[ns] = qi
                ns += 1
        values, counts = _sorted_runs_numba(sel[:ns], levels)
        return q, values, counts, ns

    @_numba.njit(cache=True, nogil=True)
    def _count_dense_numba(a, m, use_mask, step, levels, dense, q, want_q):  # pragma: no cover - compiled
        # grid_index of one block counted straight into the dense bins
        # (what bincount of the kept grid values adds), without the int32
        # index, its kept part and bincount's int64 copy; the index is
        # written to q only when asked. Returns the kept count.
        ib = a.view(np.int32)
        nk = 0
        for i in range(a.size):
            qi = _grid_value_numba(a[i], ib[i], step, levels)
            if want_q:
                q[i] = qi
            if not use_mask or m[i]:
                dense[np.int64(qi) + levels] += 1
                nk += 1
        return nk

    @_numba.njit(cache=True, nogil=True)
    def _small_grid_numba(a, m, use_mask, levels):  # pragma: no cover - compiled
        # grid_histogram's compiled sequence for a small host blob:
        # screen + max, grid_step's expression, then index and histogram;
        # with NaN/Inf (bad > 0) nothing past the screen is computed
        bad, best = _small_screen_max_numba(a, m, use_mask)
        mx = np.float64(best)
        step = 1.0 if mx <= 0.0 else mx / np.float64(levels)
        if bad:
            none = np.zeros(0, np.int64)
            return bad, mx, step, np.zeros(0, np.int32), none, none, 0
        q, values, counts, n = _small_index_hist_numba(a, m, use_mask, step, levels)
        return bad, mx, step, q, values, counts, n

    @_numba.njit(cache=True, nogil=True)
    def _sorted_runs_numba(sel, levels):  # pragma: no cover - compiled
        # np.unique(sel, return_counts=True) for grid values in
        # [-levels, levels]: an LSD radix sort on 12-bit digits of
        # sel + levels (two passes up to 24-bit grids; ~5 ns a value where
        # a comparison sort takes ~35 on large blobs), then the runs. Under
        # 2048 values the 4096-entry count table would cost more than the
        # values, so 8-bit digits (three passes; 288 values: 5.2 -> 3.0 us).
        n = sel.size
        u = np.empty(n, np.uint32)
        for i in range(n):
            u[i] = np.uint32(np.int64(sel[i]) + levels)
        tmp = np.empty(n, np.uint32)
        span = np.uint64(2 * levels)
        dbits = 8 if n < 2048 else 12
        nd = 1 << dbits
        shift = 0
        cnt = np.empty(nd + 1, np.int64)
        while shift == 0 or (span >> np.uint64(shift)) > 0:
            cnt[:] = 0
            for i in range(n):
                cnt[((u[i] >> shift) & (nd - 1)) + 1] += 1
            for d in range(nd):
                cnt[d + 1] += cnt[d]
            for i in range(n):
                d = (u[i] >> shift) & (nd - 1)
                tmp[cnt[d]] = u[i]
                cnt[d] += 1
            u, tmp = tmp, u
            shift += dbits
        values = np.empty(n, np.int64)
        counts = np.empty(n, np.int64)
        nb = 0
        for i in range(n):
            v = np.int64(u[i]) - levels
            if nb > 0 and v == values[nb - 1]:
                counts[nb - 1] += 1
            else:
                values[nb] = v
                counts[nb] = 1
                nb += 1
        return values[:nb].copy(), counts[:nb].copy()


@dataclasses.dataclass(frozen=True)
class GridHistogram:
    """Exact histogram of a blob's kept elements on the integer grid (host).

    Attributes
    ----------
    bits, levels : int
        Grid resolution; values lie in ``[-levels, levels]``.
    step : float
        Grid step in weight units (float64); ``value * step`` is the weight.
    values : ndarray of int64
        Occupied grid values, strictly ascending.
    counts : ndarray of int64
        Elements per occupied value (all > 0).
    n : int
        Number of elements counted (the kept ones).
    size : int
        Number of elements in the blob (kept or not).
    max_abs : float
        Largest canonical ``|x|`` among the kept elements.
    """

    bits: int
    levels: int
    step: float
    values: np.ndarray
    counts: np.ndarray
    n: int
    size: int
    max_abs: float

    @property
    def nbins(self) -> int:
        """Number of occupied grid values."""
        return int(self.values.size)

    def prefix_sums(self):
        """Prefix sums ``(W, S1, S2)`` over bins, each of length ``nbins + 1``.

        ``W`` (counts) and ``S1`` (count x value) are exact int64 (values are
        at most 2**29 and a blob has far fewer than 2**34 elements); ``S2``
        (count x value**2) would overflow int64, so it is float64, still
        computed on the host in a fixed order.
        """
        v, w = self.values, self.counts
        W = np.zeros(v.size + 1, np.int64)
        S1 = np.zeros(v.size + 1, np.int64)
        S2 = np.zeros(v.size + 1, np.float64)
        np.cumsum(w, out=W[1:])
        np.cumsum(w * v, out=S1[1:])
        vf = v.astype(np.float64)
        np.cumsum(w.astype(np.float64) * vf * vf, out=S2[1:])
        return W, S1, S2


def _merge_counts(parts):
    """Merge per-block (values, counts) pairs into one sorted histogram."""
    if len(parts) == 1:
        return parts[0]
    v = np.concatenate([p[0] for p in parts])
    c = np.concatenate([p[1] for p in parts])
    uv, inv = np.unique(v, return_inverse=True)
    out = np.zeros(uv.size, np.int64)
    np.add.at(out, inv, c)
    return uv, out


# Dense counting is used for a single-block blob when the grid has at most
# this many bins per kept element, and at most _DENSE_MAX bins (32 MiB).
_DENSE_PER_ELEMENT = 8
_DENSE_MAX = 1 << 22


def grid_histogram(
    x, *, bits: int = DEFAULT_BITS, mask=None, xp=np, screen: bool = True, keep_index: bool = False
):
    """Exact integer histogram of ``x`` on the ``bits``-bit grid.

    Parameters
    ----------
    x : array (numpy or ``xp``)
        Weights, any shape; float32 (other float types are rounded to it).
    bits : int
        Grid resolution (``2**(bits-1) - 1`` levels per side of zero).
    mask : bool array, optional
        True = kept; only kept elements are counted and set the grid step.
    xp : module
        ``numpy`` or ``cupy``: where the per-element work runs.
    screen : bool
        Refuse NaN/Inf first (:class:`NonFiniteWeightsError`).
    keep_index : bool
        Also return the int32 grid values of a blob indexed in one piece (so
        a caller can reuse them instead of recomputing); ``None`` for blobs
        counted in steps, and on the compiled dense path for blobs of more
        than ``_COUNT_STEP`` (1M) elements.

    Returns
    -------
    GridHistogram, or ``(GridHistogram, index_or_None)`` with ``keep_index``.
    """
    a = _flat32(x, xp)
    m = _flat_mask(mask, a.size, xp)
    levels = grid_levels(bits)
    if NUMBA and xp is np and a.size <= SMALL:
        out = _small_histogram(a, m, bits, levels, screen, keep_index)
        if out is not None:
            return out
    mx = _screen_and_max(a, m, xp, screen)
    step = grid_step(mx, bits)
    nbins_full = 2 * levels + 1
    parts, total, kept_index = [], 0, None
    dense = None
    # counted in steps of about the histogram's own size: the int32 index,
    # its kept part and bincount's int64 copy of it stay no bigger than the
    # bins, and each step's bins cost no more than its elements. A blob is
    # indexed whole only where that pays: it fits in one step, or (up to a
    # block) has so few kept elements for its bins that a sort counts them
    # faster (_DENSE_PER_ELEMENT).
    hstep = min(BLOCK, max(_COUNT_STEP, nbins_full))
    nk = a.size if m is None else m.count if isinstance(m, PackedMask) else int(xp.count_nonzero(m))
    sort = a.size <= BLOCK and nbins_full > min(_DENSE_PER_ELEMENT * nk, _DENSE_MAX)
    whole = a.size <= BLOCK and (a.size <= hstep or sort)
    if not sort and NUMBA and xp is np:
        # the compiled twin counts each block straight into the bins; it
        # keeps the index only up to _COUNT_STEP elements (what a caller
        # saves by it is one pass; on VGG-16's fc8, 4M weights on a 22-bit
        # grid, it would hold 16 MB through the label pass)
        want = keep_index and whole and a.size <= _COUNT_STEP
        dense, total, kept_index = _count_dense(a, m, step, levels, want)
        steps = ()
    else:
        steps = iter_blocks(a.size, None if whole else hstep)
    for s in steps:
        q = grid_index(a[s], step, levels, xp=xp)
        if keep_index and whole:
            kept_index = q
        sel = q if m is None else q[m[s]]
        total += int(sel.size)
        if sel.size == 0:
            continue
        if sort:
            # many more bins than elements: sorting (NumPy's ~33 ns a
            # value, the compiled radix sort's ~5) is cheaper than 2L+1
            # int64 bins (~3 ns a bin to zero, count and scan; a 24-bit
            # grid's are 128 MiB); measured on a 737k-weight blob: 25 ms
            # sorting against 4 ms counting 2^20 bins and 47 ms counting
            # 2^24. The result (values, counts) is the same exact histogram
            # either way.
            if NUMBA and xp is np:
                parts.append(_sorted_runs_numba(np.ascontiguousarray(sel), levels))
            else:
                uv, uc = xp.unique(sel, return_counts=True)
                parts.append((np.asarray(to_host(uv), np.int64), np.asarray(to_host(uc), np.int64)))
            continue
        c = xp.bincount(sel + xp.int32(levels), minlength=nbins_full)
        del sel, q
        if dense is None:
            dense = c
        else:
            dense += c
        del c  # else the last step's bins live on through the next bincount
    if dense is not None:
        c = np.asarray(to_host(dense))
        del dense
        nz = np.flatnonzero(c)  # int64 already: shifted in place, no copies
        counts = c[nz].astype(np.int64, copy=False)
        del c
        nz -= levels
        parts.append((nz, counts))
    if parts:
        values, counts = _merge_counts(parts)
    else:
        values, counts = np.zeros(0, np.int64), np.zeros(0, np.int64)
    h = GridHistogram(
        bits=int(bits),
        levels=levels,
        step=step,
        values=values,
        counts=counts,
        n=total,
        size=int(a.size),
        max_abs=mx,
    )
    return (h, kept_index) if keep_index else h


def _count_dense(a, m, step, levels, want_index):
    """Dense bins of a host blob's kept grid values by the compiled twin of
    the grid_index + bincount steps (the same counts; parity-tested), block
    by block with no per-element temporaries: ``(bins, kept, index)``, the
    int32 grid values of every element when ``want_index`` (else None).
    The bins are int32 below 2**31 elements."""
    # int32 bins whenever no bin can overflow: half the memory of
    # bincount's int64 (a 22-bit grid's bins: 16 MiB instead of 32)
    dense = np.zeros(2 * levels + 1, np.int32 if a.size < (1 << 31) else np.int64)
    q = np.empty(a.size if want_index else 0, np.int32)
    total = 0
    for s in iter_blocks(a.size):
        mm = np.ascontiguousarray(m[s]) if m is not None else _NO_MASK
        total += int(_count_dense_numba(np.ascontiguousarray(a[s]), mm, m is not None, step, levels,
                                        dense, q[s] if want_index else q, bool(want_index)))
    return dense, total, (q if want_index else None)


def _small_histogram(a, m, bits, levels, screen, keep_index):
    """:func:`grid_histogram` of a small host blob by the compiled twin
    (the same histogram, step and grid values; parity-tested); None for
    unscreened non-finite input, which the NumPy path handles."""
    use_mask = m is not None
    # m[:] is the bool array itself, or a PackedMask unpacked (small here)
    mm = np.ascontiguousarray(m[:]) if use_mask else _NO_MASK
    a = np.ascontiguousarray(a)
    bad, mx, step, q, values, counts, total = _small_grid_numba(a, mm, use_mask, levels)
    if bad:
        if not screen:
            return None
        raise NonFiniteWeightsError(
            f"{bad} of {a.size} weights are NaN or Inf; lossy compression refuses them"
        )
    h = GridHistogram(
        bits=int(bits), levels=levels, step=float(step), values=values, counts=counts,
        n=int(total), size=int(a.size), max_abs=float(mx),
    )
    return (h, q if a.size else None) if keep_index else h  # as the NumPy path: no block, no index
