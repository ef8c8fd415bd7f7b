"""Uniform scalar quantisation with rate-distortion index choice (ECSQ/RDOQ).

The standard's path (MPEG NNR, DeepCABAC) beside Deep Compression's: every
weight of a blob goes to a uniform, zero-anchored reconstruction grid
``q * step`` with one ``step`` per blob, and the integer index ``q`` is
chosen by the cost ``(x - q*step)**2 + lam * step**2 * R(q)``, where
``R(q)`` is the code length, in bits, that the blob's own index statistics
give (``lam = 0``: the nearest level). At high rate a uniform grid whose
indices are entropy-coded is within 0.25 bit a weight of the rate-distortion
bound for smooth densities (Gish & Pierce), where a k-means codebook of the
same entropy is not: k-means minimises distortion for a fixed *number* of
levels, not for a fixed *rate*.

Bit-identical on NumPy and CuPy: the device does ``rint(x / step)`` (one
correctly rounded float64 division), one float64 multiply, subtract and
square per candidate (separate element-wise kernels, nothing fused) and a
gather from a host-built table; the step, the rate table and every other
float decision are taken on the host from integer counts.

Functions
---------
:func:`grid_step_for` - the step a rule asks for, clamped so the indices fit the coder.
:func:`quantize` - indices of a blob on a step's grid (nearest or RDOQ).
"""

from __future__ import annotations

import math

import numpy as np

from .grid import BLOCK, iter_blocks, max_abs, screen_finite

__all__ = ["MAX_LEVEL", "grid_step_for", "floored_step", "quantize", "index_entropy_bits"]

#: Largest ``|q|``: the indices ``q - min(q)`` are coded with an alphabet of
#: at most 4095 symbols (the Huffman coder's limit is 4096).
MAX_LEVEL = 2047
_STEP = 1 << 18  # host elements per element-wise step (float64 temporaries of 2 MiB)


def checked_step_and_max(x, step: float, *, xp=np) -> tuple[float, float]:
    """``(step, max|x|)`` as float64 host numbers, after refusing a step that
    is not positive and finite (ValueError) and NaN/Inf weights."""
    step = float(step)
    if not (step > 0.0 and math.isfinite(step)):
        raise ValueError(f"the grid step must be a positive finite number, got {step}")
    screen_finite(x, xp=xp)
    return step, max_abs(x, xp=xp)


def grid_step_for(x, step: float, *, xp=np) -> float:
    """``step``, made coarser where ``max|x| / step`` would exceed :data:`MAX_LEVEL`.

    Parameters
    ----------
    x : array
        The blob (``xp`` array); NaN/Inf are refused.
    step : float
        The step a rule asked for (> 0).

    Returns
    -------
    float
        A float64 step ``>= step``; 1.0 for an all-zero blob.

    Raises
    ------
    NonFiniteWeightsError
        NaN/Inf weights.
    """
    step, m = checked_step_and_max(x, step, xp=xp)
    if m == 0.0:
        return 1.0
    # float64 on the host: the same number on both backends
    floor = float(np.float64(m) / np.float64(MAX_LEVEL))
    # a step just over m/MAX_LEVEL can still round m up to MAX_LEVEL + 1
    # when the division rounds down; nudge it one ulp up if so
    s = max(step, floor)
    while math.fabs(round(m / s)) > MAX_LEVEL:
        s = math.nextafter(s, math.inf)
    return s


def floored_step(x, step: float, min_sqnr_db: float | None) -> float:
    """``step``, made finer where uniform noise (``step**2 / 12`` a weight)
    would leave ``x`` under ``min_sqnr_db`` of SQNR.

    From the host array in float64 with a fixed block order, so every
    backend gets the same step.
    """
    step = float(step)
    if min_sqnr_db is None:
        return step
    f = np.asarray(x).reshape(-1)
    ss = 0.0
    for s in iter_blocks(f.size, BLOCK):
        b = f[s].astype(np.float64)
        ss += float(np.dot(b, b))
    ms = ss / max(f.size, 1)
    if ms <= 0.0:
        return step
    return min(step, math.sqrt(12.0 * ms / 10.0 ** (float(min_sqnr_db) / 10.0)))


#: The least float64 magnitude that rounds to an infinite float32
#: (``2**128 - 2**103``: half an ulp past float32's largest finite value).
F32_OVERFLOW = 2.0**128 - 2.0**103


def _nearest(a, step, xp):
    t = a.astype(xp.float64)
    t /= xp.float64(step)
    xp.rint(t, out=t)
    if float(step) * (MAX_LEVEL + 1) >= F32_OVERFLOW:
        # a huge step: a level rounded up past float32's range would restore
        # as inf; take the one next to it toward zero (finite, within a step)
        over = xp.abs(t) * xp.float64(step) >= F32_OVERFLOW
        t = xp.where(over, t - xp.sign(t), t)
    return t.astype(xp.int32)


def index_entropy_bits(counts) -> np.ndarray:
    """Ideal code length ``-log2(p)`` of each index from its count (host, float64);
    unseen indices get the length of a count of one half."""
    c = np.asarray(counts, np.float64)
    n = float(c.sum())
    return -np.log2(np.maximum(c, 0.5) / max(n, 1.0))


def _counts(q, qmin: int, nsym: int, xp) -> np.ndarray:
    h = np.zeros(nsym, np.int64)
    for s in iter_blocks(q.size, BLOCK):
        b = xp.bincount((q[s] - qmin).astype(xp.int64), minlength=nsym)
        h += np.asarray(b.get() if hasattr(b, "get") else b, np.int64)[:nsym]
    return h


def quantize(x, step: float, *, lam: float = 0.0, passes: int = 2, xp=np):
    """Indices of ``x`` on the grid ``q * step``.

    Parameters
    ----------
    x : array
        The blob (float32 ``xp`` array, any shape); finite (see :func:`grid_step_for`).
    step : float
        The grid step, as :func:`grid_step_for` returned it (so ``|q| <= MAX_LEVEL``).
    lam : float
        Rate weight: ``0`` is the nearest level; ``> 0`` moves an index one
        level toward zero where ``(x - q*step)**2 + lam * step**2 * R(q)``
        is smaller, ``R`` being the ideal code length of the current indices'
        histogram (re-estimated ``passes`` times).
    passes : int
        Rate re-estimations for ``lam > 0``.
    xp : module
        numpy or cupy.

    Returns
    -------
    q : xp array of int32
        Flat indices, ``|q| <= MAX_LEVEL``.
    """
    a = xp.asarray(x).reshape(-1)
    if a.dtype != xp.float32:
        a = a.astype(xp.float32)
    step = float(step)
    q = xp.empty(a.size, xp.int32)
    for s in iter_blocks(a.size, _STEP if xp is np else BLOCK):
        q[s] = _nearest(a[s], step, xp)
    if a.size == 0 or lam <= 0.0:
        return q
    qmin, nsym = -MAX_LEVEL, 2 * MAX_LEVEL + 1
    for _ in range(max(1, int(passes))):
        rate = index_entropy_bits(_counts(q, qmin, nsym, xp))
        # host-built table of lam * step^2 * R(q) (float64, one multiply each)
        tab = xp.asarray(np.float64(lam) * np.float64(step) * np.float64(step) * rate)
        for s in iter_blocks(a.size, _STEP if xp is np else BLOCK):
            q[s] = _rd_part(a[s], _nearest(a[s], step, xp), step, tab, qmin, xp)
    return q


def _rd_part(a, q0, step, tab, qmin, xp):
    """One step of RDOQ: the nearest index or the one next to it toward zero."""
    t = a.astype(xp.float64)
    q1 = q0 - xp.sign(q0).astype(xp.int32)
    d0 = t - q0.astype(xp.float64) * xp.float64(step)
    d0 *= d0
    d0 += tab[(q0 - qmin).astype(xp.int64)]
    d1 = t - q1.astype(xp.float64) * xp.float64(step)
    d1 *= d1
    d1 += tab[(q1 - qmin).astype(xp.int64)]
    return xp.where(d1 < d0, q1, q0)
