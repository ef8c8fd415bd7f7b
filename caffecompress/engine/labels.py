"""Labels: each weight's cluster, from its grid value (host or device).

A cluster's cell is the run of grid values between the midpoints of its
centroid and its neighbours' (a value at a midpoint goes to the lower
cluster): label = the number of cell boundaries (:func:`_first_above`) at
or below the grid value. Only integer work reaches the device: a gather
through a host-built (coarse) table (:func:`_coarse_table`) plus rounds of
compares, or for small device blobs a ``searchsorted`` on the boundaries.
On the host with numba, one compiled call (:func:`_host_labels_numba`) does
the same. Every way computes the same function, so the same labels.
"""

from __future__ import annotations

import numpy as np

from .grid import _NO_MASK, grid_index, iter_blocks
from .lloyd import NUMBA

__all__: list[str] = []


def _first_above(c_grid: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """First integer strictly above each midpoint, clipped to ``lo..hi+1``.

    The label of grid value ``g`` is the number of these that are ``<= g``
    (nearest centroid, lower on a tie).
    """
    t = (c_grid[:-1] + c_grid[1:]) * 0.5
    return np.clip(np.floor(t).astype(np.int64) + 1, lo, hi + 1)


def _coarse_table(first: np.ndarray, k: int, lo: int, hi: int, n: int, dtype):
    """Lookup of grid value -> label, at most ``max(n, 4096)`` entries.

    ``table[i]`` is the label of grid value ``lo + (i << shift)`` (the
    number of ``first`` at or below it); a value inside a coarse cell then
    moves up past the cell's own boundaries, one compare per round,
    ``rounds`` times (the most boundaries any cell holds; 0 with
    ``shift == 0``, a full table). Integer gathers and compares only, so
    any backend gives the same labels as a search on the boundaries.

    Returns ``(table, shift, rounds, bounds)``: ``bounds`` is ``first``
    with a sentinel above every grid value, as int32.
    """
    span = hi - lo + 1
    shift = max(0, (span - 1).bit_length() - (max(n, 4096).bit_length() - 1))
    e = first.astype(np.int64) - lo  # in 0..span
    # coarse cell i starts at i << shift: label = #(e <= i << shift)
    start = np.minimum(-((-e) >> shift), ((span - 1) >> shift) + 1)
    size = ((span - 1) >> shift) + 1
    edges = np.concatenate([[0], start, [size]])
    table = np.repeat(np.arange(k, dtype=dtype), np.diff(edges))
    rounds = int(np.max(np.diff(np.append(table.astype(np.int64), k - 1)))) if shift else 0
    bounds = np.append(first, hi + 1).astype(np.int32)
    return table, shift, rounds, bounds


def _label_blocks_on_grid(a, m, h, c_grid, qcache, xp, dtype, block=None):
    """Labels of every element, yielded per block of ``block`` elements.

    Label = the number of cell boundaries (:func:`_first_above`) at or
    below the element's grid value (masked-out elements: grid value 0).
    Blobs of ``_TABLE_MIN`` elements or more, or dense in the grid, and
    every host blob when numba is there, gather through a (coarse) table
    (:func:`_coarse_table`) and then step past the boundaries inside the
    coarse cell (in rounds of compares, or on the host one compiled walk);
    other small blobs search the boundaries. The same function of the grid
    value every way, so the same labels.
    """
    lo = int(min(h.values[0], 0))
    hi = int(max(h.values[-1], 0))
    compiled = NUMBA and xp is np
    use_table = not compiled and (a.size >= _TABLE_MIN or a.size * 4 >= hi - lo + 1)
    if not compiled:
        first = _first_above(c_grid, lo, hi)
    if use_table:
        table, shift, rounds, bounds = _coarse_table(first, c_grid.size, lo, hi, a.size, dtype)
        dev, dev_bounds = xp.asarray(table), xp.asarray(bounds)
    elif not compiled:
        dev = xp.asarray(first.astype(np.int32))
    for s in iter_blocks(a.size, block):
        q = qcache[s] if qcache is not None else grid_index(a[s], h.step, h.levels, xp=xp)
        if compiled:
            lab = np.empty(q.size, dtype)
            mm = m[s] if m is not None else _NO_MASK
            _host_labels_numba(q, mm, m is not None, c_grid, lo, hi, lab)
            yield lab
            continue
        if m is not None:
            q = xp.where(m[s], q, xp.int32(0))
        if use_table:
            idx = q - xp.int32(lo)
            if shift:
                idx >>= shift
            # in range by construction; clamp anyway (CuPy wraps
            # out-of-range gathers where NumPy raises)
            xp.clip(idx, 0, table.size - 1, out=idx)
            lab = xp.take(dev, idx)
            del idx
            for _ in range(rounds):
                lab += (q >= xp.take(dev_bounds, lab)).astype(dtype)
            yield lab
        else:
            # int32 on both sides, explicit side
            yield xp.searchsorted(dev, q, side="right").astype(dtype)


_TABLE_MIN = 1 << 14  # elements from which labels come from a table


def _labels_on_grid(a, m, h, c_grid, qcache, xp, dtype):
    """Labels of every element (see :func:`_label_blocks_on_grid`)."""
    out = xp.empty(a.size, dtype=dtype)
    s0 = 0
    for lab in _label_blocks_on_grid(a, m, h, c_grid, qcache, xp, dtype):
        out[s0 : s0 + lab.size] = lab
        s0 += lab.size
    return out


def _kept_label_counts(h, c_grid, k):
    """How many kept elements each label gets: the histogram's counts summed
    per cell (the labels :func:`_label_blocks_on_grid` gives kept elements)."""
    lo = int(min(h.values[0], 0))
    hi = int(max(h.values[-1], 0))
    first = _first_above(c_grid, lo, hi)
    lab = np.searchsorted(first, h.values, side="right")
    out = np.zeros(k, np.int64)
    np.add.at(out, lab, h.counts)
    return out


if NUMBA:
    import numba as _numba  # noqa: PLC0415

    @_numba.njit(cache=True, nogil=True)
    def _host_labels_numba(q, m, use_mask, c, lo, hi, out):  # pragma: no cover - compiled
        # the labels of _label_blocks_on_grid in one call: _first_above's
        # boundaries (the same float expressions), a coarse table of the
        # label at every 2**shift-th grid value, then per element a walk
        # past the boundaries inside its coarse cell
        k = c.size
        bounds = np.empty(k, np.int64)
        for j in range(k - 1):
            f = np.int64(np.floor((c[j] + c[j + 1]) * 0.5)) + 1
            bounds[j] = min(max(f, lo), hi + 1)
        bounds[k - 1] = hi + 1  # sentinel: above every grid value
        span = hi - lo + 1
        shift = 0
        # at most one entry an element (and at most 2**20: 4 MiB)
        while ((span - 1) >> shift) + 1 > min(max(q.size, 1024), 1 << 20):
            shift += 1
        size = ((span - 1) >> shift) + 1
        table = np.empty(size, np.int32)
        lab = 0
        for i in range(size):
            g = lo + (np.int64(i) << shift)
            while g >= bounds[lab]:
                lab += 1
            table[i] = lab
        for i in range(q.size):
            g = np.int64(0) if use_mask and not m[i] else np.int64(q[i])
            lab = np.int64(table[(g - lo) >> shift])
            while g >= bounds[lab]:
                lab += 1
            out[i] = lab
