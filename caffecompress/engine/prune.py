"""Magnitude pruning of one blob.

Exactly one criterion chooses what is pruned:

- ``threshold=t``: prune every weight with ``|x| <= t`` (keep ``|x| > t``);
- ``quality=q``: Han et al.'s rule, ``t = q * std(x)`` (population standard
  deviation of all the blob's weights, computed in float64 on the host), then
  as ``threshold``;
- ``sparsity=s``: prune exactly ``floor(s * n + 1/2)`` weights, the smallest
  by ``|x|``. **Tie rule**: weights are ordered by ``|x|`` then by flat index
  (a stable order), so among equal magnitudes the lower index is pruned
  first.

All comparisons are done on the int32 bit patterns of ``|x|`` (for
non-negative float32 these order like the values), so the device does only
integer work and NumPy and CuPy agree bit for bit. Subnormals and -0.0 count
as 0.0; NaN/Inf are refused. The k-th magnitude is found by a two-pass radix
select on histograms, in blocks, so no sorted copy of the blob is made.
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import to_host
from . import grid as _grid
from .grid import iter_blocks as _iter_blocks
from .grid import screen_finite
from .packedmask import PackedMask

_STEP = 1 << 18  # elements per host block: the int32/int64 temporaries stay at 1-2 MiB
_DEVICE_STEP = 1 << 20  # on a GPU, fewer and larger blocks: each costs launches and a sync


def iter_blocks(n: int, xp=np):
    """Blocks of :data:`_STEP` elements (:data:`_DEVICE_STEP` on a device);
    the counts and the mask do not depend on the block size."""
    return _iter_blocks(n, _STEP if xp is np else _DEVICE_STEP)

__all__ = ["prune_mask", "prune_packed", "magnitude_std"]

_ABS_MASK = np.int32(0x7FFFFFFF)
_MIN_NORMAL_BITS = np.int32(0x00800000)
_HI_SHIFT = 15  # magnitude keys are < 2**31: 16 high bits x 15 low bits
_LO_MASK = np.int32((1 << _HI_SHIFT) - 1)


def _mag_keys(a32, xp):
    """int32 keys of canonical |x| (subnormals -> 0); order = order of |x|."""
    mag = a32.view(xp.int32) & _ABS_MASK
    return xp.where(mag < _MIN_NORMAL_BITS, xp.int32(0), mag)


def magnitude_std(x, *, xp=np) -> float:
    """Population standard deviation of canonical ``x``, float64, on the host.

    Blocks are copied to the host and summed there in a fixed order, so the
    value does not depend on the backend.
    """
    a = _grid._flat32(x, xp)
    n = a.size
    if n == 0:
        return 0.0
    s1 = []
    for s in _iter_blocks(n):
        b = _grid.canonicalize(to_host(a[s])).astype(np.float64)
        s1.append(float(np.sum(b)))
    mean = math.fsum(s1) / n
    s2 = []
    for s in _iter_blocks(n):
        b = _grid.canonicalize(to_host(a[s])).astype(np.float64)
        b -= mean
        s2.append(float(np.dot(b, b)))
    return math.sqrt(math.fsum(s2) / n)


def _threshold_key(t: float) -> np.int32:
    """Key ``kt`` such that ``|x| > t``  <=>  ``key(|x|) > kt`` for float32 x."""
    fmax = float(np.finfo(np.float32).max)
    if t >= fmax:  # nothing finite exceeds it
        return np.asarray(np.float32(fmax), np.float32).view(np.int32)[()]
    t32 = np.float32(t)
    if float(t32) > t:  # rounded up: the largest float32 below t decides
        t32 = np.nextafter(t32, np.float32(0))
    if t32 < np.finfo(np.float32).tiny:  # all subnormals count as zero
        t32 = np.float32(0)
    return np.asarray(t32, np.float32).view(np.int32)[()]


def _kth_key(keys_blocks, n_prune, xp):
    """The ``n_prune``-th smallest magnitude key (1-based), by radix select."""
    hist = None
    for kb in keys_blocks():
        h = xp.bincount(kb >> _HI_SHIFT, minlength=1 << 16)
        hist = h if hist is None else hist + h
    hist = np.asarray(to_host(hist), np.int64)
    cum = np.cumsum(hist)
    hb = int(np.searchsorted(cum, n_prune, side="left"))
    below = int(cum[hb - 1]) if hb > 0 else 0
    lo_hist = None
    for kb in keys_blocks():
        sel = kb[(kb >> _HI_SHIFT) == hb] & _LO_MASK
        h = xp.bincount(sel, minlength=1 << _HI_SHIFT)
        lo_hist = h if lo_hist is None else lo_hist + h
    cum2 = np.cumsum(np.asarray(to_host(lo_hist), np.int64))
    lb = int(np.searchsorted(cum2, n_prune - below, side="left"))
    return np.int32((hb << _HI_SHIFT) | lb)


def _keep_blocks(x, sparsity, threshold, quality, xp):
    """``(n, blocks)``: the blob's size and an iterator of ``(slice, bool
    keep-block)`` covering it in order, one :data:`_STEP`-sized block at a
    time, so callers choose how to hold the mask (whole as bools, or packed).
    The checks run before the iterator is returned."""
    given = [c for c in (sparsity, threshold, quality) if c is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of sparsity=, threshold=, quality=")
    a = _grid._flat32(x, xp)
    screen_finite(a, xp=xp)
    n = a.size

    def const(value):
        for sl in iter_blocks(n, xp):
            yield sl, xp.full(sl.stop - sl.start, value, dtype=xp.bool_)

    if sparsity is not None:
        s = float(sparsity)
        if not 0.0 <= s <= 1.0:
            raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
        n_prune = min(n, int(math.floor(s * n + 0.5)))
        if n_prune == 0 or n_prune == n:
            return n, const(n_prune == 0)

        def keys_blocks():
            for sl in iter_blocks(n, xp):
                yield _mag_keys(a[sl], xp)

        kth = _kth_key(keys_blocks, n_prune, xp)
        n_less = 0
        for kb in keys_blocks():
            n_less += int((kb < kth).sum())
        ties_to_prune = n_prune - n_less  # >= 1, pruned in index order

        def ranked():
            seen = 0
            for sl, kb in zip(iter_blocks(n, xp), keys_blocks()):
                eq = kb == kth
                # running count of ties (integer cumsum: exact, order-defined)
                rank = xp.cumsum(eq, dtype=xp.int64) + seen
                seen += int(eq.sum())
                yield sl, (kb > kth) | (eq & (rank > ties_to_prune))

        return n, ranked()

    if quality is not None:
        q = float(quality)
        if not (q >= 0.0 and math.isfinite(q)):
            raise ValueError(f"quality must be a finite number >= 0, got {quality}")
        t = q * magnitude_std(a, xp=xp)
    else:
        t = float(threshold)
        if not (t >= 0.0 and math.isfinite(t)):
            raise ValueError(f"threshold must be a finite number >= 0, got {threshold}")
    kt = xp.int32(_threshold_key(t))

    def above():
        for sl in iter_blocks(n, xp):
            yield sl, _mag_keys(a[sl], xp) > kt

    return n, above()


def prune_mask(x, *, sparsity=None, threshold=None, quality=None, xp=np):
    """Boolean keep-mask (True = kept) of magnitude pruning, same shape as ``x``.

    Parameters
    ----------
    x : array (numpy or ``xp``)
        Weights, float32 (other float types are rounded to it).
    sparsity : float in [0, 1], optional
        Fraction to prune; exactly ``floor(sparsity * n + 0.5)`` are pruned,
        ties broken by flat index (lower index pruned first).
    threshold : float >= 0, optional
        Prune ``|x| <= threshold``.
    quality : float >= 0, optional
        Prune ``|x| <= quality * std(x)`` (Han et al.).
    xp : module
        ``numpy`` or ``cupy``.

    Raises
    ------
    ValueError
        Not exactly one criterion, or one out of range.
    NonFiniteWeightsError
        NaN or Inf among the weights.
    """
    shape = tuple(x.shape) if hasattr(x, "shape") else tuple(np.shape(x))
    n, blocks = _keep_blocks(x, sparsity, threshold, quality, xp)
    out = xp.empty(n, dtype=xp.bool_)
    for sl, keep in blocks:
        out[sl] = keep
    return out.reshape(shape)


def prune_packed(x, *, sparsity=None, threshold=None, quality=None) -> PackedMask:
    """:func:`prune_mask` on the host, flat and packed at one bit per weight.

    The same mask (``prune_packed(x, ...).unpack() == prune_mask(x, ...).reshape(-1)``)
    without ever holding it at a byte per weight: each block is packed as
    it is made.

    Raises
    ------
    ValueError, NonFiniteWeightsError
        As :func:`prune_mask`.
    """
    n, blocks = _keep_blocks(x, sparsity, threshold, quality, np)
    packed = np.empty((n + 7) // 8, np.uint8)
    kept = 0
    for sl, keep in blocks:
        kept += int(np.count_nonzero(keep))
        # blocks start at multiples of 8 (the step is), so the packed
        # blocks laid end to end are np.packbits of the whole mask
        packed[sl.start >> 3 : (sl.stop + 7) >> 3] = np.packbits(keep)
    return PackedMask(packed, n, kept)
