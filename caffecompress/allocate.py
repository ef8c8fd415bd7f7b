"""Fidelity-targeted allocation: bits per blob under an output-error target.

For every lossy weight blob and every width of :data:`WIDTHS`, a candidate
is made on the engine's k-means codebook: nearest-level labels, and where the
layer's input Hessian is known, GPTQ-style labels
(:mod:`caffecompress.engine.compensate`); each with and without bias
correction. Per blob and width the candidate kept is the one whose output
change ``||X_val (W_hat - W)^T||`` on the *validation* rows is smallest, so
a technique survives only where rows it did not fit confirm it.

Sensitivity: one OpenCV forward per blob, with only that blob at
:data:`PROBE_BITS`, gives per compared output the squared relative error
per unit of that blob's output distortion. The predicted squared error of
an output is the sum over blobs (errors of independent layers add in
squares; they also compound along depth, hence the measured check). In
heavy nets the small blobs share one probe (:data:`PROBE_MIN_HEAVY`).

Allocation: from the widest candidates, a greedy descent takes the width
steps that save the most bytes per unit of predicted error, while every
output stays under a budget ``T``. ``T`` is then tuned by joint forwards
with every blob quantised (bracketing and bisection) until the measured
error on the calibration rows is as close under the target as a few
forwards allow (aiming at :data:`AIM` x the target, a margin for inputs
calibration did not see). The data-free assignment (the grid rule) is measured too
and wins when it is smaller and within the target: the allocator never
loses to it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from . import calibrate, config, runtime
from .backend import to_host
from .engine import compensate as C
from .engine import uniform as U
from .engine.floatpack import round_mantissa
from .engine.grid import max_abs
from .headnet import Levels
from .engine.kmeans import _sqnr  # the engine's SQNR from signal and error sums
from .model import Model

__all__ = ["WIDTHS", "PROBE_BITS", "FidelityResult", "allocate"]

WIDTHS = tuple(range(2, 13))
#: Widest codebook GPTQ-style rounding is tried at (beyond it rounding
#: error is far below what compensation can win back).
GPTQ_MAX_BITS = 8
#: GPTQ-style rounding needs at least this many fit rows per Hessian column.
#: With fewer, it fits the calibration rows: on mtcnn det2 (24 px input, a
#: 576-column inner product seeing 32 rows) held-out error rose from 0.022
#: to 0.086 at the same calibration error (0.019); factor 1 still gave
#: 0.033. At 4 the held-out error stayed under 0.025 on det2, det4 and
#: yufacedetectnet (benchmarks/README.md).
GPTQ_MIN_ROWS_PER_COL = 4
#: Uniform grids tried beside k-means: 2**u + 1 levels (see _uniform_candidates).
UNIFORM_BITS = tuple(range(3, 11))
#: Grids per octave of step (1: the steps max|w| / 2**(u-1) only).
UNIFORM_PER_OCTAVE = 2
#: The allocation aims at AIM x the target on the calibration rows. Chosen
#: on a development set of scikit-image images outside both the calibration
#: and the reported held-out sets (grass, gravel, cell, page, text, logo,
#: horse, microaneurysms): over 6 zoo models at 0.02 the worst development
#: error went from 1.64x to 1.28x the target at 0.8, for 3 % in mean ratio.
AIM = 0.8
#: Rungs of the data-free rule's dependent-quantisation ladder the allocation
#: measures from the rule's own steps on (x 2**(j / DQ_PER_OCTAVE), 0 <= j < DQ_LADDER),
#: and rungs finer than the rule's (-DQ_FINER <= j < 0): where the target is
#: tighter than the rule's own error, the one-step family still competes
#: with the per-blob allocation (on the development images at 0.02,
#: mtcnn/det4 4.92x -> 5.12x, every other model's file unchanged; at 0.01
#: no file changed). Quarter-octave rungs (DQ_PER_OCTAVE 4) changed one more
#: file at 0.01, hyperlpr/CharacterRecognization 3.56x -> 3.67x, at 1.8x the
#: target's development error (from 1.3x).
DQ_LADDER = 9
DQ_FINER = 2
DQ_PER_OCTAVE = 2
#: Dependent-quantisation grids per blob beside the plain ones (the plain
#: grids' steps x config.DQ_STEP_SCALE), for blobs up to this size (a trellis
#: pass per step) where numba runs the trellis (config.default_dq), in nets
#: under SENS_HEAVY (ResNet-50's 16 steps x 23M weights took ~24 s of its
#: 150 s; its DQ ladder stays).
DQ_CAND_MAX = 1 << 21
#: The DQ ladder's bisection estimates the bytes of a blob of at least
#: DQ_SAMPLE_MIN trellis segments from every DQ_SAMPLE-th segment.
DQ_SAMPLE = 16
DQ_SAMPLE_MIN = 64
#: Width of the single-blob sensitivity probes.
PROBE_BITS = 5
#: In heavy nets, GPTQ-style rounding is tried only on the uniform grids
#: within (coarser, finer) octaves of a first allocation's step (nearest
#: rounding elsewhere). Coarser reaches further: the compensated grids'
#: lower distortion moves the allocation to coarser steps.
GPTQ_WINDOW = (2.0, 1.0)
#: A heavy net's first pass makes every HEAVY_GRID_EVERY-th uniform grid
#: (nearest rounding); :func:`_gptq_near` makes all of them within
#: GPTQ_WINDOW of the first allocation's point.
HEAVY_GRID_EVERY = 2
#: Joint forwards spent tuning the budget.
MAX_JOINT = 7
#: A data-free or ladder point whose prediction, scaled by the best point's
#: measured error over its own prediction, is over this many times the aim
#: is not run. Over the zoo at 0.01 and 0.02 every point that held was
#: predicted within 1.2x the aim, and measured errors of the others were
#: 0.57-1.47x their scaled predictions.
SKIP_OVER = 2.0
#: Rows of the sensitivity probes (evenly spaced over the calibration rows);
#: nets whose weights x input pixels exceed SENS_HEAVY (a deterministic
#: proxy of a forward's cost: ResNet-50 3.9e12, VGG-16 2.1e13) probe on
#: SENS_ROWS_HEAVY rows, since a probe is one forward per blob. No zoo model
#: is heavy (the largest product, yufacedetectnet's, is 1.6e11: at a bound
#: of 1e11 it lost its per-blob DQ grids, 8.20x -> 7.64x on held-out images,
#: for no time saved).
SENS_ROWS = 8
SENS_ROWS_HEAVY = 2
SENS_HEAVY = 1e12
#: In heavy nets, blobs of fewer weights than this share one probe: all of
#: them at PROBE_BITS at once, and each gets that error per unit of their
#: summed output distortion as its sensitivity. A probe runs the net from the
#: blob on, so the small early layers' probes are the longest: on ResNet-50,
#: 19 of 54 blobs (2.8 % of the weights) took 7.5 s of the 15 s of probe
#: forwards; on VGG-16 3 of 16 probes each loaded nearly the whole net.
PROBE_MIN_HEAVY = 1 << 17
#: Blobs up to this size keep their candidates' labels; bigger ones take
#: the piecewise nearest-level path (memory; see _candidates_big).
_KEEP_LABELS = 1 << 21
#: Candidates of blobs up to this size keep their labels (uint8/uint16);
#: bigger blobs recompute the chosen candidate's (ResNet-50: 19 candidates
#: of int32 labels for each of 25M weights were 1.9 GB).
_KEEP_LABELS_ALL = 1 << 18
#: Widest codebook tried for such big blobs.
BIG_MAX_BITS = 9
#: Blobs of more weights than this get no k-means candidates in the width
#: sweep beside the probe's own (PROBE_BITS, which the sensitivity is
#: measured with): grids (plain and dependent, nearest or GPTQ-rounded) hold
#: them in fewer bytes. Over the zoo models >= 100 KB at 0.02 and 0.01 no
#: blob above 36,864 weights chose a codebook (107 of 108 codebook choices
#: were blobs of <= 4,096), while a net of large blobs spent most of its
#: candidate time in k-means: 11 widths, each clustered, rounded and scored.
#: (Blobs with a fixed width, or without the grid rule's step, keep them.)
KMEANS_SWEEP_MAX = 1 << 16


@dataclass
class _Cand:
    bits: int
    technique: str
    nbytes: float
    dist: float
    codebook: np.ndarray
    labels: np.ndarray | None
    shift: np.ndarray | None  # bias correction (subtracted from the bias)
    sqnr: float
    grid: np.ndarray | None = None  # levels the labels were rounded onto (default: codebook)
    step: float | None = None  # a uniform grid's step: stored as the ``grid`` method (no codebook)
    dq: bool = False  # dependent-quantisation indices on that grid (values from the trellis)


@dataclass
class _Blob:
    li: int
    name: str
    shape: tuple
    w: np.ndarray
    node: object
    stats: object
    has_bias: bool
    fixed_bits: int | None
    df_target: float | None
    df_step: float | None = None  # the data-free rule's grid step (None: the k-means SQNR rule)
    dq_step: float | None = None  # the rule's dependent-quantisation step (None: the rule has none)
    cands: dict = field(default_factory=dict)
    sens: np.ndarray | None = None
    factor: object = None
    memo: tuple | None = None
    memo_gain: float | None = None
    sig: float | None = None  # a big blob's sum of squared weights (set by _candidates_big)
    xv64: np.ndarray | None = None  # stats.Xval as float64 while _candidates scores this blob


@dataclass
class FidelityResult:
    """What :func:`allocate` chose.

    Attributes
    ----------
    model : Model
        A copy of the input whose lossy weight blobs hold the chosen levels
        (at most ``2**bits`` distinct values) and whose biases are corrected.
        Fully connected blobs of more than 2M weights are
        :class:`~caffecompress.headnet.Levels` (``numpy.asarray`` gives the
        float32 array), made dense one at a time as they are coded.
    bits : dict of str -> int
        Layer name -> width of its weight blob.
    record : dict
        For the container: mode, target, error reached, calibration,
        preprocessing, explored points, per-layer techniques, forwards, time.
    steps : dict of str -> float
        Layer name -> grid step, for the blobs whose choice is a uniform grid
        (stored with the ``grid`` method at that step; their values lie on it).
    dq : set of str
        The layers among ``steps`` whose values are dependent-quantisation
        levels (stored with dependent quantisation at that step).
    """

    model: Model
    bits: dict
    record: dict
    steps: dict = field(default_factory=dict)
    dq: set = field(default_factory=set)


def _matrix(w: np.ndarray, node) -> np.ndarray:
    """Weights as ``(groups, out_g, cols)``, columns in the input rows' order."""
    if node is not None and node.conv is not None:
        g = node.conv.group
        return w.reshape(g, w.shape[0] // g, -1)
    if node is not None and node.type == "InnerProduct" and node.transpose:
        return w.reshape(w.shape[0], -1).T[None]
    return w.reshape(w.shape[0], -1)[None]


def _unmatrix(m: np.ndarray, shape, node) -> np.ndarray:
    if node is not None and node.type == "InnerProduct" and node.transpose and node.conv is None:
        return np.ascontiguousarray(m[0].T).reshape(shape)
    return m.reshape(shape)


def _sq(a: np.ndarray) -> float:
    """Sum of squares (float64)."""
    f = np.ascontiguousarray(a, np.float64).reshape(-1)
    # einsum, not np.dot: the machine's BLAS ddot ran 8x slower (60 vs 7 ms
    # for 2M values), and this sum runs for every candidate
    return float(np.einsum("i,i->", f, f))


def _levels(sw, bits: int) -> np.ndarray:
    """A k-means result's levels (float32): exact ones as found, the others
    rounded to ``bits`` + :data:`config.CODEBOOK_MANTISSA_EXTRA` mantissa
    bits, so the pipeline stores them in ~``bits + 15`` bits a level as
    packed fields, or in ~11-14 as gaps between their float keys
    (:mod:`~caffecompress.engine.levelpack`), instead of 32 (their rounding
    moves a level by < 2**-(bits + 11) of its magnitude, ~1/1000 of the
    level spacing). The labels are made on the rounded levels."""
    cb = np.asarray(sw.codebook, np.float32)
    return cb if sw.exact else round_mantissa(cb, min(23, bits + config.CODEBOOK_MANTISSA_EXTRA))


def _coded_bytes(labels: np.ndarray, k: int, book: np.ndarray | None = None) -> float:
    """Bytes of the labels under the container's length-limited Huffman code, plus the codebook.

    The real code, not the entropy: at low rates (a few levels, one of them
    most of the weights) Huffman's whole-bit codes cost up to 1 bit a label
    more than the entropy says, which would favour fine uniform grids wrongly.
    """
    return _counts_bytes(np.bincount(labels.reshape(-1), minlength=k), book=book)


def _counts_bytes(counts: np.ndarray, codebook: bool = True, book: np.ndarray | None = None) -> float:
    """:func:`_coded_bytes` from the label counts; ``codebook=False`` for the
    ``grid`` method, which stores a step instead of 4 bytes a level (its
    code-length table, ~half a byte a symbol of the index range, it keeps);
    ``book``: the levels, whose used ones are stored as packed fields
    (4 bytes a level without it)."""
    from .engine import huffman_code as HC  # noqa: PLC0415

    used = int(np.count_nonzero(counts))
    bits = 0 if used <= 1 else HC.coded_bits(counts, HC.code_lengths(counts, HC.auto_max_len(used)))
    if not codebook:
        nz = np.flatnonzero(counts)
        span = int(nz[-1] - nz[0] + 1) if nz.size else 0
        return bits / 8.0 + 0.5 * span + 48.0
    if book is not None:
        levels = np.unique(book[counts > 0])
        if PRICE_STORED_CODEBOOKS:
            from .engine.blob import codebook_nbytes  # noqa: PLC0415

            return bits / 8.0 + codebook_nbytes(levels) + 48.0
        from .engine.floatpack import pack_nbytes  # noqa: PLC0415

        return bits / 8.0 + pack_nbytes(levels) + 48.0
    return bits / 8.0 + 4.0 * used + 48.0


#: Price a candidate's codebook at the bytes it is stored in (the shorter
#: of float fields and key gaps, format 2.3) rather than as float fields
#: (format 2.1's store, which the allocation was tuned with). Off: with
#: cheaper codebooks the budget search lands elsewhere, and on the
#: development images lenet-mnist's allocation moved from 6.8x at 1.32x the
#: 0.02 target to 7.6x at 1.8-2.65x (benchmarks/README.md, "Codebooks as
#: key gaps"). Off, every weight the default writes is what it was.
PRICE_STORED_CODEBOOKS = False


def _row_blocks(M: np.ndarray):
    """``(group, row slice)`` pieces of a ``(groups, rows, cols)`` matrix of <= 4M values."""
    step = max(1, (1 << 22) // max(M.shape[2], 1))
    for g in range(M.shape[0]):
        for r0 in range(0, M.shape[1], step):
            yield g, slice(r0, min(r0 + step, M.shape[1]))


def _candidates_big(b: _Blob, xp, widths, heavy: bool = True) -> None:
    """:func:`_candidates` for a blob of more than ``_KEEP_LABELS`` weights.

    Nearest levels only (no GPTQ: the Hessian of such a layer would hold
    ~cols^2 float64 values and its rounding loop runs once per column), with
    and without bias correction, everything in pieces of <= 4M weights so the
    working set stays a small multiple of one piece. Labels are not kept:
    :func:`_quantised` recomputes them the same way. A blob with the grid
    rule's step gets the uniform grids (every :data:`HEAVY_GRID_EVERY`-th
    below the finest octave where ``heavy``) and of the k-means widths only
    the probe's: k-means' levels are the costlier candidates to make, and
    over the zoo no blob above 36,864 weights chose a codebook where it had
    grids.
    """
    from .engine import kmeans  # noqa: PLC0415

    M = _matrix(b.w, b.node)
    b.sig = sum(_sq(M[g, rs]) for g, rs in _row_blocks(M))  # float64, piece by piece
    if b.df_step is not None and b.fixed_bits is None:
        widths = [w for w in widths if w == PROBE_BITS]
    for bits in widths:
        sw = kmeans.share_weights(xp.asarray(b.w) if xp is not np else b.w, k=1 << bits, xp=xp, labels=False)
        cb = _levels(sw, bits)
        del sw
        c, sse = _levels_big(b, M, cb, "nearest", bits=bits)
        b.cands[("k", bits)] = c
        if sse == 0:
            return
    if b.df_step is None or b.fixed_bits is not None:
        return
    amax = max_abs(b.w)  # block by block: no |w| copy of the blob
    if amax == 0.0:
        return
    for key, u, step in _grids(b, amax):
        if not (heavy and _first_pass_skips(key, u)):
            _grid_big(b, M, amax, key, u, step)


def _first_pass_skips(key, u: int) -> bool:
    """Whether a heavy net's first pass leaves uniform grid ``key`` (of
    octave ``u``) out: all but every :data:`HEAVY_GRID_EVERY`-th below the
    finest octave (:func:`_gptq_near` makes those near the point)."""
    return (key[0] == "u" and u < UNIFORM_BITS[-1]
            and round((key[1] - u) * UNIFORM_PER_OCTAVE) % HEAVY_GRID_EVERY != 0)


def _grid_big(b: _Blob, M: np.ndarray, amax: float, key, u: int, step: float) -> None:
    """The uniform grid ``key`` of step ``step`` for a big blob (nearest levels, :func:`_levels_big`)."""
    half = min(int(round(amax / step)), U.MAX_LEVEL)
    # the grid method's own levels, as in _grid_cand
    cb = (np.arange(-half, half + 1, dtype=np.float64) * step).astype(np.float32)
    c, _ = _levels_big(b, M, cb, "uniform", step=step)
    if c is not None:
        b.cands[key] = c


def _levels_big(b: _Blob, M: np.ndarray, cb: np.ndarray, tech: str, *, bits: int | None = None,
                step: float | None = None):
    """``(candidate, weight SSE)`` of rounding a big blob's matrix ``M`` to
    the nearest of levels ``cb`` piece by piece: a codebook of width
    ``bits``, or the uniform grid of ``step`` (stored as the ``grid`` method:
    its used levels, no codebook; None past 12 bits)."""
    st = b.stats
    og = M.shape[1]
    cb64 = cb.astype(np.float64)
    counts = np.zeros(cb.size, np.int64)
    sse = 0.0
    Ys = []
    shift = np.zeros(M.shape[0] * og) if (st is not None and b.has_bias) else None
    for g, rs in _row_blocks(M):
        d, cnt = C.nearest_error(M[g, rs], cb64)
        counts += cnt
        sse += _sq(d)
        if st is not None:
            Ys.append((g, rs, np.asarray(st.Xval[g], np.float64) @ d.T))
            if shift is not None:
                shift[g * og + rs.start:g * og + rs.stop] = d @ st.mean_fit[g]
    if st is None:
        variants = [(tech, sse, None)]
    else:
        n = st.Xval.shape[1]
        variants = [(tech, sum(_sq(y) for _, _, y in Ys) / n, None)]
        if shift is not None:
            d1 = sum(_sq(y - shift[g * og + rs.start:g * og + rs.stop][None, :]) for g, rs, y in Ys) / n
            variants.append((tech + "+bc", d1, shift))
    del Ys
    sig = b.sig
    name, dist, sh = min(variants, key=lambda v: v[1])
    if step is None:
        return _Cand(bits, name, _counts_bytes(counts, book=cb), dist, cb, None, sh, _sqnr(sig, sse)), sse
    used = np.flatnonzero(counts)
    bits = max(1, int(math.ceil(math.log2(max(used.size, 2)))))
    if bits > 12:
        return None, sse
    return _Cand(bits, name, _counts_bytes(counts, codebook=False), dist, cb[used], None, sh,
                 _sqnr(sig, sse), grid=cb, step=step), sse


def _candidates(b: _Blob, xp, widths, dq: bool = True, variants: bool = False, gptq: bool = True) -> None:
    """Fill ``b.cands`` (width -> best candidate on the validation rows);
    ``dq``: dependent-quantisation grids beside the plain ones; ``variants``:
    also the nearest rounding (key ``"kn"``, with bias correction where it
    scored better) and the uncompensated one (``"k0"``) where they differ
    from the best, for the net-level check of a fixed width."""
    if KMEANS_SWEEP_MAX < b.w.size <= _KEEP_LABELS and b.df_step is not None and b.fixed_bits is None:
        # this blob gets the grids below, the data-free rule's step (its floor) among them
        widths = [w for w in widths if w == PROBE_BITS]
    if b.w.size > _KEEP_LABELS:
        return _candidates_big(b, xp, [w for w in widths if w <= BIG_MAX_BITS], heavy=not gptq)
    # every candidate's score is a product with the validation rows in float64:
    # one copy for all of them, not one a candidate (RFB-320: 1235 conversions)
    b.xv64 = None if b.stats is None else np.asarray(b.stats.Xval, np.float64)
    try:
        _candidates_kept(b, xp, widths, dq, variants, gptq)
    finally:
        b.xv64 = None


def _candidates_kept(b: _Blob, xp, widths, dq: bool, variants: bool, gptq: bool) -> None:
    """:func:`_candidates` for a blob of at most ``_KEEP_LABELS`` weights."""
    from .engine import kmeans  # noqa: PLC0415

    W64 = b.w.astype(np.float64)
    M = _matrix(W64, b.node)
    sig = _sq(W64)
    for bits in widths:
        sw = kmeans.share_weights(xp.asarray(b.w) if xp is not np else b.w, k=1 << bits, xp=xp)
        cb = _levels(sw, bits)
        cb64 = cb.astype(np.float64)
        if sw.exact:  # the levels hold the weights exactly: nothing to round or correct
            lab = _matrix(np.asarray(to_host(sw.labels)).reshape(b.shape).astype(np.int32), b.node)
            options = [_score(b, M, lab, cb64, "nearest") + (lab,)]
        else:
            lab = C.nearest_labels(M, cb64)
            options = [_score(b, M, lab, cb64, "nearest") + (lab,)]
            if _gptq_ok(b, bits):
                lab = C.gptq_round(M, _factor(b), cb64)
                options.append(_score(b, M, lab, cb64, "gptq") + (lab,))
        best = min(options, key=lambda o: o[1])
        for key, (name, dist, shift, delta, lab) in [(("k", bits), best), *(_variants(b, options, best, bits)
                                                                            if variants else [])]:
            b.cands[key] = _Cand(
                bits, name, _coded_bytes(lab, cb.size, cb), dist, cb, _kept(b, lab, cb.size), shift,
                _sqnr(sig, _sq(delta)))
        if sw.exact:
            return
    if b.fixed_bits is None:
        _uniform_candidates(b, M, W64, sig, dq, gptq)


def _variants(b: _Blob, options: list, best: tuple, bits: int) -> list:
    """``(key, option)`` of the nearest rounding and the uncompensated one, where they differ from ``best``."""
    near = options[0]
    out = [] if near is best else [(("kn", bits), near)]
    if near[2] is not None:  # bias-corrected: the same labels without the correction
        name, _, _, delta, lab = near
        out.append((("k0", bits), _score_delta(b, delta, name.removesuffix("+bc"), bc=False) + (lab,)))
    return out


def _score(b: _Blob, M: np.ndarray, lab: np.ndarray, cb64: np.ndarray, tech: str):
    """The better of ``tech`` with and without bias correction: (name, dist, shift, delta)."""
    return _score_delta(b, cb64[lab] - M, tech)


def _score_delta(b: _Blob, delta: np.ndarray, tech: str, bc: bool = True):
    """:func:`_score` of a rounding error ``delta`` (the weight matrix's shape);
    ``bc=False``: without the bias-corrected alternative."""
    st = b.stats
    if st is None:
        return tech, _sq(delta), None, delta
    n = st.Xval.shape[1]
    G, og = delta.shape[0], delta.shape[1]
    # one stacked product: numpy's matmul runs the same BLAS call per group
    # as a product per group (same values), without a Python loop over the
    # groups of a depthwise layer
    X = b.xv64 if b.xv64 is not None else np.asarray(st.Xval, np.float64)
    Y = np.matmul(X, delta.transpose(0, 2, 1))
    # one sum over all groups (a depthwise layer has hundreds)
    best = (tech, _sq(Y) / n, None, delta)
    if b.has_bias and bc:
        shift = np.concatenate([C.bias_shift(delta[g], st.mean_fit[g]) for g in range(G)])
        d1 = _sq(Y - shift.reshape(G, 1, og)) / n
        if d1 < best[1]:
            best = (tech + "+bc", d1, shift, delta)
    return best


def _grids(b: _Blob, amax: float) -> list:
    """``(key, bits, step)`` of the uniform grids of a blob whose largest magnitude is ``amax``."""
    grids = [(("u", u + j / UNIFORM_PER_OCTAVE), u,
              float(np.float64(amax) / np.float64(2.0 ** (u - 1 + j / UNIFORM_PER_OCTAVE))))
             for u in UNIFORM_BITS for j in range(UNIFORM_PER_OCTAVE)]
    if b.df_step is not None:
        step = U.grid_step_for(b.w, b.df_step)
        grids.append((("d", 0), max(2, math.ceil(math.log2(2 * amax / step + 1))), step))
    return grids


def _grid_cand(b: _Blob, M: np.ndarray, sig: float, amax: float, u: int, step: float,
               gptq: bool = True) -> _Cand | None:
    """The better of nearest and (``gptq`` and where the Hessian allows)
    GPTQ-style rounding onto the uniform grid of ``step``; None past 12 bits."""
    half = min(int(round(amax / step)), U.MAX_LEVEL)
    # the grid method's own levels (engine.blob.grid_codebook): float64
    # products rounded once, so the pipeline finds the same indices again
    cb = (np.arange(-half, half + 1, dtype=np.float64) * step).astype(np.float32)
    cb64 = cb.astype(np.float64)
    if b.w.size > _KEEP_LABELS_ALL:  # no labels kept: the nearest rounding's error and counts without them
        delta, counts = C.nearest_error(M, cb64)
        options = [_score_delta(b, delta, "uniform") + (None, counts)]
    else:
        lab = C.nearest_labels(M, cb64)
        options = [_score(b, M, lab, cb64, "uniform") + (lab, None)]
    if gptq and _gptq_ok(b, u, extra=1):
        lab = C.gptq_round(M, _factor(b), cb64)
        options.append(_score(b, M, lab, cb64, "uniform+gptq") + (lab, None))
    name, dist, shift, delta, lab, counts = min(options, key=lambda o: o[1])
    if counts is None:
        counts = np.bincount(lab.reshape(-1), minlength=cb.size)
    used = np.flatnonzero(counts)  # the sorted used levels (np.unique's, without its sort)
    cbu = cb[used]
    bits = max(1, int(math.ceil(math.log2(max(cbu.size, 2)))))
    if bits > 12:
        return None
    kept = None
    if b.w.size <= _KEEP_LABELS_ALL:
        # store only the used levels: relabel onto them (same values)
        remap = np.zeros(cb.size, np.int32)
        remap[used] = np.arange(used.size, dtype=np.int32)
        kept = _kept(b, remap[lab], cbu.size)
    nbytes = _counts_bytes(counts, codebook=False)
    return _Cand(bits, name, nbytes, dist, cbu, kept, shift, _sqnr(sig, _sq(delta)), grid=cb, step=step)


def _gptq_near(b: _Blob, key) -> None:
    """Add GPTQ-style rounding to the uniform grids within :data:`GPTQ_WINDOW`
    octaves of candidate ``key``'s step (a heavy net's second pass: its
    first made the grids with nearest rounding only). For a candidate
    without a step (a codebook), the grid closest to it in bytes."""
    grid_keys = [k for k, c in b.cands.items() if c.step is not None and not c.dq]
    big = b.w.size > _KEEP_LABELS
    if not grid_keys or not (big or _gptq_ok(b, 0)):
        return
    c0 = b.cands[key]
    if c0.step is None or c0.dq:
        c0 = b.cands[min(grid_keys, key=lambda k: abs(b.cands[k].nbytes - c0.nbytes))]
    if big:  # no GPTQ there (_candidates_big): the grids the first pass skipped, nearest levels
        M = _matrix(b.w, b.node)
        amax = max_abs(b.w)
        for k, u, step in _grids(b, amax):
            if k not in b.cands and -GPTQ_WINDOW[1] <= math.log2(step / c0.step) <= GPTQ_WINDOW[0]:
                _grid_big(b, M, amax, k, u, step)
        return
    W64 = b.w.astype(np.float64)
    M = _matrix(W64, b.node)
    sig = _sq(W64)
    amax = float(np.max(np.abs(W64)))
    for k, u, step in _grids(b, amax):
        if ((k in b.cands or k[0] == "u") and -GPTQ_WINDOW[1] <= math.log2(step / c0.step) <= GPTQ_WINDOW[0]
                and _gptq_ok(b, u, extra=1)):
            c = _grid_cand(b, M, sig, amax, u, step)
            if c is not None:
                b.cands[k] = c


def _uniform_candidates(b: _Blob, M: np.ndarray, W64: np.ndarray, sig: float, dq: bool = True,
                        gptq: bool = True) -> None:
    """Uniform, zero-anchored grids (entropy-coded scalar quantisation) beside k-means.

    Step ``max|w| / 2**(u-1)`` for u in :data:`UNIFORM_BITS` (``2**u + 1``
    levels), and the data-free rule's step (key ``("d", 0)``). At equal
    distortion the labels of a uniform grid carry less information than
    k-means' when they are entropy coded (k-means spends its levels evenly
    by count); GPTQ-style rounding onto the grid where the Hessian allows
    (``gptq``), as for k-means. Stored with the ``grid`` method (a step, no
    codebook).
    """
    amax = float(np.max(np.abs(W64))) if W64.size else 0.0
    if amax == 0.0:
        return
    grids = _grids(b, amax)
    for key, u, step in grids:
        if not gptq and _first_pass_skips(key, u):
            continue
        c = _grid_cand(b, M, sig, amax, u, step, gptq)
        if c is not None:
            b.cands[key] = c
    if dq and config.default_dq() and b.w.size <= DQ_CAND_MAX:
        for key, _, step in grids:
            if key[0] == "u":
                b.cands[("z", key[1])] = _dq_cand(b, step * config.DQ_STEP_SCALE, M)



def _gptq_ok(b: _Blob, bits: int, extra: int = 0) -> bool:
    """GPTQ-style rounding is tried: a Hessian, enough fit rows per column, and
    ``bits <= GPTQ_MAX_BITS + extra`` (read at the call, so a changed bound counts)."""
    st = b.stats
    return (st is not None and st.H is not None and bits <= GPTQ_MAX_BITS + extra
            and st.n_fit >= GPTQ_MIN_ROWS_PER_COL * st.cols)


def _factor(b: _Blob):
    """The blob's Hessian factor, made once and kept while its candidates are made."""
    if b.factor is None:
        b.factor = C.hessian_factor(b.stats.H)
    return b.factor


def _rung_scale(j: int) -> float:
    """Step factor of the data-free ladder's rung ``j`` (0: the rule's own steps)."""
    return 2.0 ** (j / DQ_PER_OCTAVE)


def _dq_values(w: np.ndarray, step: float):
    """Dependent-quantisation values of ``w`` at ``step`` (as the grid method
    stores and restores them: trellis indices, float32 of the multiple times
    the step), the grid's step and the indices."""
    from .engine import trellis as TR  # noqa: PLC0415

    s = TR.grid_step_for(w, step)
    k = TR.quantize(w, s)
    # float32(m * step) straight from the indices (the restore's own walk):
    # no int64 multiples and float64 products of the whole blob (VGG-16's
    # fc6: 3 x 822 MB)
    return TR.values(k, 0, s), s, k


def _dq_cand(b: _Blob, step: float, M: np.ndarray | None = None) -> _Cand:
    """The candidate of ``b`` on a dependent-quantisation grid of ``step``.

    With the weight matrix ``M`` it is scored on the validation rows like the
    plain grids (with and without bias correction); without (the ladder's
    rungs, which are measured jointly), by its weight SSE times
    :func:`_white_gain`, for the rung's predicted error.
    """
    q, s, k = _dq_values(b.w, step)
    if M is None:
        d = q.reshape(-1).astype(np.float64)
        del q
        np.subtract(d, b.w.reshape(-1), out=d)  # one float64 copy, not two
        sse = float(np.dot(d, d))
        name, dist, shift = "uniform+dq", sse * _white_gain(b), None
        del d
    else:
        delta = _matrix(q.reshape(b.shape), b.node).astype(np.float64) - M
        del q
        name, dist, shift, delta = _score_delta(b, delta, "uniform+dq")
        sse = _sq(delta)
        del delta
    # indices stay within +-(MAX_LEVEL - 1): trellis.grid_step_for coarsens the
    # step; counted in place (k is this call's own)
    k -= k.min()
    nsym = int(k.max() + 1)
    nbytes = _counts_bytes(np.bincount(k), codebook=False)
    return _Cand(max(1, (nsym - 1).bit_length()), name, nbytes, dist, np.zeros(0, np.float32), None,
                 shift, _sqnr(_sq(b.w), sse), step=s, dq=True)


def _white_gain(b: _Blob) -> float:
    """Output distortion a unit of weight SSE makes on the validation rows
    when the rounding error is white (uncorrelated, zero mean, as the
    trellis' nearly is): E||X d^T||^2 / n = SSE * mean(x^2) over the entries
    of the layer's input rows (see :func:`_dq_cand`). 1.0 without statistics
    (the candidates' dist is then the weight SSE too)."""
    st = b.stats
    if st is None or st.Xval.size == 0:
        return 1.0
    if b.memo_gain is None:
        b.memo_gain = _sq(st.Xval) / st.Xval.size
    return b.memo_gain


def _dq_sampled(w: np.ndarray, step: float) -> tuple[float, float] | None:
    """:func:`_dq_cand`'s byte count and weight SSE estimated from every
    DQ_SAMPLE-th trellis segment (segments start in state 0, so those
    indices and values are the whole blob's), scaled up; None for a blob of
    fewer than DQ_SAMPLE_MIN segments."""
    from .engine import trellis as TR  # noqa: PLC0415

    flat = w.reshape(-1)
    seg = TR.SEGMENT
    nseg = -(-flat.size // seg)
    if nseg < DQ_SAMPLE_MIN:
        return None
    s = TR.grid_step_for(w, step)
    pick = np.concatenate([flat[i * seg:(i + 1) * seg] for i in range(0, nseg, DQ_SAMPLE)])
    k = TR.quantize(pick, s)
    sse = _sq(TR.values(k, 0, s).astype(np.float64) - pick) * (flat.size / pick.size)
    k -= k.min()
    counts = np.rint(np.bincount(k) * (flat.size / pick.size)).astype(np.int64)
    return _counts_bytes(counts, codebook=False), sse


def _kept(b: _Blob, lab: np.ndarray, k: int):
    """Labels kept with a candidate (compact), or None: recomputed when chosen (memory)."""
    if b.w.size > _KEEP_LABELS_ALL:
        return None
    return lab.astype(np.uint8 if k <= 256 else np.uint16)


def _quantised(b: _Blob, c: _Cand, key=None, compact: bool = False):
    """The candidate's weights (float32, the blob's shape); the last one is kept per blob.

    ``compact``: a large fully connected blob's nearest or dependent
    quantisation comes as :class:`~caffecompress.headnet.Levels` (the same
    values, a byte or two a weight), for the measurements only.
    """
    if key is not None and b.memo is not None and b.memo[0] == key:
        q = b.memo[1]
        return q if compact or not isinstance(q, Levels) else np.asarray(q)
    if compact and _compactable(b, c):
        q = _levels_of(b, c)
        if key is not None:
            b.memo = (key, q)
        return q
    if c.dq:
        q = _dq_values(b.w, c.step)[0].reshape(b.shape)
    elif c.labels is not None:
        q = _unmatrix(c.codebook[c.labels], b.shape, b.node).astype(np.float32)
    else:
        grid = c.codebook if c.grid is None else c.grid
        M = _matrix(b.w, b.node)
        if "gptq" in c.technique:  # the same rounding as when the candidate was made
            q = grid[C.gptq_round(M.astype(np.float64), _factor(b), grid.astype(np.float64))]
        else:  # nearest levels, piece by piece (big blobs never hold a whole float64 copy)
            q = np.empty(M.shape, np.float32)
            for g, rs, lab in _nearest_pieces(M, grid):
                q[g, rs] = grid[lab]
        q = _unmatrix(q, b.shape, b.node).astype(np.float32, copy=False)
    if key is not None:
        b.memo = (key, q)
    return q


def _compactable(b: _Blob, c: _Cand) -> bool:
    node = b.node
    return (b.w.size > _KEEP_LABELS and node is not None and node.type == "InnerProduct" and not node.transpose
            and (c.dq or (c.labels is None and "gptq" not in c.technique)))


def _levels_of(b: _Blob, c: _Cand) -> Levels:
    """:func:`_quantised`'s values of a big blob as level indices, piece by piece."""
    flat = b.w.reshape(-1)
    if c.dq:
        from .engine import trellis as TR  # noqa: PLC0415

        s = TR.grid_step_for(b.w, c.step)
        k = TR.quantize(b.w, s)
        m = np.empty(flat.size, np.int16)  # |multiple| <= 2 * MAX_LEVEL + 1
        piece = TR.SEGMENT * max(1, (1 << 22) // TR.SEGMENT)
        for s0 in range(0, flat.size, piece):  # float32(m * step), as the restore walks them
            v = TR.values(k[s0:s0 + piece], 0, s, start=s0)
            m[s0:s0 + v.size] = np.rint(v.astype(np.float64) / s)
        del k
        top = int(np.abs(m).max(initial=0))
        levels = (np.arange(-top, top + 1, dtype=np.float64) * s).astype(np.float32)
        idx = np.empty(flat.size, np.uint8 if levels.size <= 256 else np.uint16)
        np.add(m, top, out=idx, casting="unsafe")
        return Levels(idx, levels, b.shape)
    grid = c.codebook if c.grid is None else c.grid
    M = _matrix(b.w, b.node)  # (an untransposed product: a view in the blob's flat order)
    idx = np.empty(flat.size, np.uint8 if grid.size <= 256 else np.uint16)
    cols = M.shape[2]
    for g, rs, lab in _nearest_pieces(M, grid):
        o = (g * M.shape[1] + rs.start) * cols
        idx[o:o + lab.size] = lab.reshape(-1)
    return Levels(idx, grid, b.shape)


def _nearest_pieces(M: np.ndarray, grid: np.ndarray):
    """``(group, row slice, labels)`` of ``M``'s nearest levels on ``grid``, by :func:`_row_blocks`."""
    g64 = grid.astype(np.float64)
    for g, rs in _row_blocks(M):
        yield g, rs, C.nearest_labels(M[g, rs].astype(np.float64), g64)


def _apply(model: Model, blobs, choice: dict, mantissa: int | None = None) -> Model:
    """A shallow copy of ``model`` with the chosen candidates' weights and biases
    (a corrected bias rounded to ``mantissa`` bits, as it will be stored).

    Big fully connected blobs come as :class:`~caffecompress.headnet.Levels`
    (``_quantised(..., compact=True)``): every copy is measured through
    :mod:`caffecompress.runtime` or handed to the pipeline, which both take them.
    """
    layers = list(model.layers)
    for b in blobs:
        c = b.cands[choice[b.name]]
        lay = layers[b.li]
        arrs = list(lay.blobs)
        arrs[0] = _quantised(b, c, choice[b.name], compact=True)
        if c.shift is not None and len(arrs) > 1:
            bias = arrs[1]
            arrs[1] = (bias.astype(np.float64) - c.shift.reshape(bias.shape)).astype(np.float32)
            if mantissa is not None:
                arrs[1] = round_mantissa(arrs[1], mantissa)
        layers[b.li] = dataclasses.replace(lay, blobs=arrs)
    return dataclasses.replace(model, layers=layers)


class _Meter:
    """Forwards of candidate models on fixed rows against the float outputs."""

    def __init__(self, model: Model, graph, feeds: dict, net=None, targets=None, known=None):
        """``net``: the float net, already loaded; ``known``: row -> its reference
        outputs from a pass of that net (:func:`calibrate.layer_stats`'s
        ``kept``), the other rows are run here."""
        self.proto = model.prototxt.encode("utf-8") if isinstance(model.prototxt, str) else model.prototxt
        if net is None:
            net = runtime.model_net(model)
        self.targets = runtime.compared_outputs(graph.layers, graph.inputs, net) if targets is None else targets
        self.layers = [t.layer for t in self.targets]
        n = next(iter(feeds.values())).shape[0]
        known = dict(known or {})
        todo = [r for r in range(n) if r not in known]
        if todo:
            got = runtime.run_net(net, {k: v[todo] for k, v in feeds.items()}, self.layers)
            for j, r in enumerate(todo):
                known[r] = [o[j] for o in got]
        ref = [np.stack([known[r][i] for r in range(n)]).astype(np.float64) for i in range(len(self.layers))]
        self._set(feeds, ref)

    def _set(self, feeds: dict, ref: list) -> None:
        self.feeds = feeds
        self.ref = ref
        self.ref_sq = [_sq(r) for r in self.ref]
        self.count = 0
        self.cuts: dict = {}

    def rows(self, idx) -> "_Meter":
        """A meter on a subset of the rows, sharing the reference outputs (one image per forward)."""
        sub = object.__new__(_Meter)
        sub.proto, sub.targets, sub.layers = self.proto, self.targets, self.layers
        sub._set({k: np.ascontiguousarray(v[idx]) for k, v in self.feeds.items()},
                 [np.ascontiguousarray(r[idx]) for r in self.ref])
        return sub

    def cut_at(self, model: Model, graph, names) -> None:
        """Let :meth:`sq_errors` run a named layer and what follows it only.

        A probe that changes one layer's weights leaves everything before that
        layer as it was: one forward of the float net fetches, on these rows,
        each blob the layers from there on read before writing it
        (:func:`caffecompress.caffe.graph.crossing`), and the probe then loads
        and runs just those layers, fed these blobs (for a layer halfway down
        a chain, half the loading and half the forward). Compared outputs
        made before the layer are unchanged (error 0). Layers that cannot be
        cut (a name used twice, a blob that is a second top, a net whose text
        needed a lenient parse) keep the whole net.
        """
        from .caffe.graph import crossing, suffix_prototxts  # noqa: PLC0415

        uses: dict = {}
        for lay in graph.layers:
            uses[lay.name] = uses.get(lay.name, 0) + 1
        plan = {}
        for name in names:
            i = graph.index(name)
            if i <= 0 or uses.get(name) != 1:
                continue
            src = {}
            for blob in crossing(graph, i):
                s = _writer(graph, blob, i, self.feeds)
                if s is None:
                    break
                src[blob] = s
            else:
                plan[name] = (i, src)
        fetch = sorted({s[1] for _, src in plan.values() for s in src.values() if s[0] == "layer"})
        got = {}
        if fetch:
            # unfused: each fetched blob as its layer left it (see runtime.load_net)
            net = runtime.model_net(model, fuse=False)
            got = dict(zip(fetch, runtime.run_net(net, self.feeds, fetch)))
            del net
        cuts = {}
        for name, (i, src) in plan.items():
            feeds = {}
            for blob, (kind, what) in src.items():
                v = self.feeds[what] if kind == "input" else got[what]
                if kind == "layer":
                    if v.ndim < 2 or v.shape[1] != 1:
                        break  # not one image per forward: run_net could not feed it
                    v = v[:, 0]
                feeds[blob] = v
            else:
                cuts[i] = (name, feeds)
        texts = suffix_prototxts(self.proto, {i: {b: (1,) + v.shape[1:] for b, v in f.items()}
                                              for i, (_, f) in cuts.items()})
        for i, text in texts.items():
            name, feeds = cuts[i]
            self.cuts[name] = (text.encode("utf-8"), feeds, {lay.name for lay in graph.layers[i:]})

    def sq_errors(self, model: Model, at: str | None = None) -> np.ndarray:
        """Squared relative L2 error of each compared output (batch-wise, as verify).

        ``at``: the one layer whose weights differ from the float net's, to
        run from there on where :meth:`cut_at` prepared it.
        """
        cut = self.cuts.get(at) if at is not None else None
        if cut is None:
            net = runtime.model_net(model, self.proto)
            outs = runtime.run_net(net, self.feeds, self.layers)
        else:
            text, feeds, names = cut
            sub = dataclasses.replace(model, layers=[lay for lay in model.layers if lay.name in names],
                                      skeleton=b"")
            net = runtime.model_net(sub, text, fuse=False)
            run = [t for t in self.layers if t in names]
            got = dict(zip(run, runtime.run_net(net, feeds, run)))
            outs = [got[t] if t in got else r for t, r in zip(self.layers, self.ref)]
        self.count += 1
        e = []
        for o, r, rs in zip(outs, self.ref, self.ref_sq):
            if o is r:  # made before the changed layer: as the float net's
                e.append(0.0)
                continue
            if o.shape != r.shape:
                e.append(math.inf)
                continue
            d = o.astype(np.float64) - r
            num = _sq(d)
            e.append(num / rs if rs > 0 else (0.0 if num == 0 else math.inf))
        return np.asarray(e)


def _writer(graph, blob: str, before: int, feeds: dict):
    """Where ``blob``'s value just before layer ``before`` can be fetched, or None.

    ``("input", name)`` for a net input, ``("layer", name)`` for the last
    layer before that writes it as its first top (OpenCV hands out a layer's
    first output by layer name).
    """
    for lay in reversed(graph.layers[:before]):
        if blob in lay.tops:
            if lay.type == "Input":
                return ("input", blob) if blob in feeds else None
            return ("layer", lay.name) if lay.tops.index(blob) == 0 else None
    return ("input", blob) if blob in feeds else None


def _greedy(blobs, T2: float) -> dict:
    """Widths per blob: the cheapest in bytes whose predicted errors stay under ``T2``."""
    choice = {}
    for b in blobs:
        fixed = ("k", b.fixed_bits)
        # start from the most faithful candidate (ties: the larger one)
        choice[b.name] = fixed if fixed in b.cands else min(
            b.cands, key=lambda key: (b.cands[key].dist, -b.cands[key].nbytes))
    nout = len(blobs[0].sens) if blobs else 0
    pred = np.zeros(nout)
    for b in blobs:
        pred += b.sens * b.cands[choice[b.name]].dist
    # every free blob's candidates in one table (blob order, then each dict's
    # order: ties go to the first, as a loop over the blobs would): a step
    # scores all of them at once, then updates the rows of the blob it moved
    free = [b for b in blobs if b.fixed_bits is None] if nout else []
    if not free:
        return choice
    keys = [(b, k) for b in free for k in b.cands]
    nb = np.array([b.cands[k].nbytes for b, k in keys])
    ds = np.array([b.cands[k].dist for b, k in keys])
    S = np.stack([b.sens for b, _ in keys]).astype(np.float64, copy=False)
    rows, at = {}, 0
    c0n, c0d = np.empty(len(keys)), np.empty(len(keys))
    for b in free:
        rows[b.name] = r = slice(at, at + len(b.cands))
        at = r.stop
        c0 = b.cands[choice[b.name]]
        c0n[r], c0d[r] = c0.nbytes, c0.dist
    while True:
        cur_max = float(pred.max())
        saved = c0n - nb
        new = pred[None, :] + S * (ds - c0d)[:, None]
        m = new.max(axis=1)
        ok = (saved > 0) & (m <= T2)
        if not ok.any():
            return choice
        cost = np.maximum(m - cur_max, 0.0) + 1e-3 * (new - pred[None, :]).sum(axis=1) + 1e-30
        r = np.where(ok, saved / cost, -np.inf)
        j = int(np.argmax(r))
        b, key = keys[j]
        choice[b.name] = key
        pred = new[j].copy()
        c = b.cands[key]
        c0n[rows[b.name]], c0d[rows[b.name]] = c.nbytes, c.dist


def _energy(b: _Blob) -> float:
    """Mean squared output of the blob's layer on the validation rows (bias
    left out), in the units of its candidates' ``dist``; 1.0 where unknown."""
    st = b.stats
    M = _matrix(b.w, b.node).astype(np.float64)
    if st is None:
        e = _sq(M)
    else:
        e = sum(_sq(y) for y in np.matmul(np.asarray(st.Xval, np.float64), M.transpose(0, 2, 1))) / st.Xval.shape[1]
    return e if e > 0 else 1.0


def _df_key(b: _Blob):
    """The key of the data-free rule's candidate of a blob without a fixed width."""
    if ("d", 0) in b.cands:
        return ("d", 0)
    ks = sorted(k for k in b.cands if k[0] == "k")
    db = b.df_target
    if b.df_step is not None:  # a blob without grid candidates (big): the k-means
        # width of at least the SQNR the rule's uniform noise would leave
        ms = _sq(b.w) / max(b.w.size, 1)
        db = 10.0 * math.log10(12.0 * ms / b.df_step ** 2) if ms > 0 else None
    ok = [w for w in ks if db is None or b.cands[w].sqnr >= db]
    return ok[0] if ok else ks[-1]


def _heavy(model: Model, cal) -> bool:
    """Whether the net's forwards are costly enough for the heavy settings (SENS_HEAVY)."""
    pixels = max(int(np.prod(v.shape[1:])) for v in cal.feeds.values())
    return model.num_params * pixels > SENS_HEAVY


def _predicted(blobs, choice) -> float:
    if not blobs:
        return 0.0
    p = sum(b.sens * b.cands[choice[b.name]].dist for b in blobs)
    return float(np.sqrt(np.max(p)))


def _nbytes(blobs, choice) -> float:
    return float(sum(b.cands[choice[b.name]].nbytes for b in blobs))


def allocate(model: Model, lossy: list, max_error: float | None, *, calib=None, xp=np,
             mean=None, scale=None, swap_rb=False, rows=None, log=None, graph=None,
             overlap: bool = False, base: Model | None = None, mantissa: int | None = None) -> FidelityResult:
    """Choose per-blob widths and roundings so the outputs stay within ``max_error``.

    Parameters
    ----------
    model : Model
        With its deploy prototxt.
    lossy : list of (layer index, BlobPlan)
        The weight blobs (blob 0 of those layers) to quantise; a plan's
        ``bits`` fixes the width (compensation still runs), ``sqnr_target``
        gives the data-free rule's width for comparison.
    max_error : float or None
        Largest relative L2 error on any compared output, on the calibration
        rows; None with fixed widths (compensation only).
    calib : see :func:`caffecompress.calibrate.calibration_inputs`
    xp : module
        Where the k-means runs.
    mean, scale, swap_rb, rows :
        Preprocessing and row count of image calibration inputs.
    log : callable, optional
        Called with one line per stage.
    graph : NetGraph, optional
        ``model.prototxt`` already parsed (:func:`caffecompress.caffe.graph.net_graph`).
    overlap : bool
        Run the sensitivity pass's OpenCV forwards beside the candidates
        (the ``hybrid`` backend); same results.
    base : Model, optional
        The model the joint measurements change (default ``model``): ``model``
        with its other blobs as they will be stored (rounded biases); the
        reference outputs, statistics and single-blob probes stay ``model``'s.
    mantissa : int, optional
        Mantissa bits a corrected bias is rounded to (as the pipeline stores it).

    Returns
    -------
    FidelityResult
    """
    from .caffe.graph import net_graph  # noqa: PLC0415

    t0 = time.perf_counter()
    say = log or (lambda s: None)
    base = model if base is None else base
    if graph is None:
        graph = net_graph(model.prototxt, path=model.source)
    cal = calibrate.calibration_inputs(graph.inputs, calib, mean=mean, scale=scale, swap_rb=swap_rb, rows=rows)
    net = runtime.model_net(model)
    names = [model.layers[li].name for li, _ in lossy]
    # the statistics pass also fetches the compared outputs: the rows it runs
    # need no reference forward of their own
    targets = runtime.compared_outputs(graph.layers, graph.inputs, net)
    kept: dict = {}
    stats = calibrate.layer_stats(net, graph, cal, names, outputs=[t.layer for t in targets], kept=kept)
    t_stats = time.perf_counter() - t0
    blobs = []
    for li, plan in lossy:
        lay = model.layers[li]
        node = graph.layer(lay.name)
        w = np.ascontiguousarray(lay.blobs[0], np.float32)
        st = stats.get(lay.name)
        if st is not None:
            M = _matrix(w, node)
            if M.shape[0] != st.groups or M.shape[2] != st.cols:
                st = None  # the prototxt's geometry does not fit the blob: no statistics
        has_bias = bool(node is not None and node.bias_term and len(lay.blobs) > 1
                        and lay.blobs[1].size == (w.shape[1] if node.type == "InnerProduct" and node.transpose
                                                  else w.shape[0]))
        df_step = dq_step = None
        if plan.step is not None:
            # the rule's plain-grid equivalent: candidates are nearest/GPTQ
            # roundings onto fixed levels, which dependent quantisation is not
            df_step = U.floored_step(w, plan.step / (config.DQ_STEP_SCALE if plan.dq else 1.0), plan.sqnr_target)
            dq_step = df_step * config.DQ_STEP_SCALE if plan.dq else None
        blobs.append(_Blob(li, lay.name, tuple(w.shape), w, node, st, has_bias, plan.bits,
                           None if df_step is not None else plan.sqnr_target, df_step, dq_step))
    widths = WIDTHS
    heavy = _heavy(model, cal)
    nrows = SENS_ROWS_HEAVY if heavy else SENS_ROWS
    sens_rows = np.unique(np.linspace(0, cal.n - 1, min(nrows, cal.n)).round().astype(int))

    def prepare():
        nonlocal net, kept
        meter = _Meter(model, graph, cal.feeds, net, targets, kept)
        net = kept = None  # the float net's memory goes before the probes'
        if max_error is None:
            return meter, None
        probe = meter.rows(sens_rows)
        probe.cut_at(model, graph, [g[0].name for g in last.values()])
        return meter, probe

    # the probes: one a blob, but in heavy nets the small blobs share one,
    # cut at the first of them in net order
    small = [j for j, b in enumerate(blobs) if heavy and b.w.size < PROBE_MIN_HEAVY]
    groups = [[j] for j in range(len(blobs)) if j not in small] + ([small] if small else [])
    # a group's probe runs once its last blob's candidates are made
    last = {max(g): sorted((blobs[j] for j in g), key=lambda b: graph.index(b.name)) for g in groups}

    def sense(group, ready):
        probe = ready.result()[1]
        choice = {b.name: ("k", PROBE_BITS) if ("k", PROBE_BITS) in b.cands
                  else max(k for k in b.cands if k[0] == "k") for b in group}
        # within a group, each blob's share of the error in proportion to its
        # output's relative distortion (dist over the output's energy)
        energy = [_energy(b) if len(group) > 1 else 1.0 for b in group]
        dist = sum(b.cands[choice[b.name]].dist / en for b, en in zip(group, energy))
        if dist <= 0:
            e = np.zeros(len(probe.layers))
        else:
            e = probe.sq_errors(_apply(model, group, choice), at=group[0].name)
            e = np.where(np.isfinite(e), e, 1e6) / dist
        for b, en in zip(group, energy):
            b.sens = e / en

    # overlap: OpenCV's forwards of this pass (the reference, the cut blobs,
    # one probe a blob) run on one worker thread while the next blobs'
    # candidates are made, each probe needing only its own blob's candidate
    # (OpenCV, BLAS, CuPy and the compiled loops release the GIL); the
    # results are the serial order's. Otherwise each task runs in turn on
    # this thread. On 2 cores without a GPU the overlap did not pay
    # (benchmarks/README.md), so only the hybrid backend asks for it.
    pool = ThreadPoolExecutor(max_workers=1) if overlap else None
    serial = [0.0]  # seconds of forwards run in turn (not beside the candidates)

    def run(fn, *args):
        if pool is not None:
            return pool.submit(fn, *args)
        t = time.perf_counter()
        fut = Future()
        fut.set_result(fn(*args))
        serial[0] += time.perf_counter() - t
        return fut

    try:
        ready = run(prepare)
        probes = []
        for j, b in enumerate(blobs):
            _candidates(b, xp, [b.fixed_bits] if b.fixed_bits is not None and max_error is None else widths,
                        dq=not heavy, variants=max_error is None, gptq=not heavy)
            if max_error is not None and j in last:
                probes.append(run(sense, last[j], ready))
        t_cands = time.perf_counter() - t0 - t_stats - serial[0]
        meter, probe = ready.result()
        for f in probes:
            f.result()
        for b in blobs:
            # the probes' roundings are not measured again: their copies of
            # the weights (as large as the model) go before the joint ones
            b.memo = None
        if probe is not None:
            probe.cuts = {}  # nor are the probes: their cached blobs go too
    finally:  # an error or an interrupt leaves no queued forwards behind
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    t_sens = time.perf_counter() - t0 - t_stats - t_cands  # serial: the forwards' own time
    say(f"calibration: {cal.source}; statistics {t_stats:.1f} s, candidates {t_cands:.1f} s"
        + (" (sensitivity forwards beside them)" if overlap else ""))

    points = []
    if max_error is None:  # fixed widths: compensation only
        # each blob's compensation was chosen on its own output; the net as a
        # whole can still do worse with it (lenet-mnist at 4 bits: 0.061 on
        # the calibration rows with nearest rounding, 0.071 with GPTQ on its
        # convolutions), so the nearest and the uncompensated roundings are
        # measured too and the lowest error kept (ties: the first)
        best, seen = None, []
        for tag, kind in (("k", "fixed"), ("kn", "fixed, nearest rounding"), ("k0", "fixed, uncompensated")):
            choice = {b.name: (tag, b.fixed_bits) if (tag, b.fixed_bits) in b.cands else ("k", b.fixed_bits)
                      for b in blobs}
            if choice in seen:
                continue
            seen.append(choice)
            m = float(np.sqrt(meter.sq_errors(_apply(base, blobs, choice, mantissa)).max(initial=0.0)))
            points.append({"bytes": _nbytes(blobs, choice), "predicted": None, "measured": m, "kind": kind})
            if best is None or m < best[0]:
                best = (m, choice, len(points) - 1)
        m, choice, idx = best
        return _result(_apply(base, blobs, choice, mantissa), blobs, choice, points, idx, None, m, cal, meter.count, t0)

    say(f"sensitivity: {probe.count} forwards of {len(sens_rows)} rows, {t_sens:.1f} s"
        + (" after the candidates" if overlap else "")
        + (f"; {len(small)} blobs under {PROBE_MIN_HEAVY} weights share one" if small else ""))

    if heavy:
        # the grids were made with nearest rounding only; GPTQ-style rounding
        # is added where the allocation can land: near each blob's point in a
        # first allocation at the aim
        t = time.perf_counter()
        first = _greedy(blobs, (float(max_error) * AIM) ** 2)
        for b in blobs:
            if b.fixed_bits is None:
                _gptq_near(b, first[b.name])
        say(f"GPTQ-style rounding near a first allocation, {time.perf_counter() - t:.1f} s")

    target = float(max_error)
    # aim under the target on the calibration rows: inputs calibration did
    # not see move the error by more than the rows' own spread
    max_error = target * AIM
    E2 = float(max_error) ** 2
    tried = {}

    def measure(choice, kind):
        key = tuple(sorted(choice.items()))
        if key in tried:
            return tried[key]
        m = float(np.sqrt(meter.sq_errors(_apply(base, blobs, choice, mantissa)).max(initial=0.0)))
        points.append({"bytes": _nbytes(blobs, choice), "predicted": _predicted(blobs, choice),
                       "measured": m, "kind": kind})
        tried[key] = (m, len(points) - 1, choice)
        return tried[key]

    def skip(choice, kind, why="larger", est=None):
        # a point no smaller than one that held (why "larger"), or predicted
        # far over the aim ("predicted"), is not run (a joint forward each);
        # it is recorded with its size and prediction only (``est``: both
        # estimated, for a ladder rung not made in full)
        nb, pred = est if est is not None else (_nbytes(blobs, choice), _predicted(blobs, choice))
        points.append({"bytes": nb, "predicted": pred, "measured": None, "kind": kind, "skipped": why,
                       **({"estimated": True} if est is not None else {})})

    def hopeless(pred):
        # the prediction, scaled by the best point's measured error over its
        # own prediction, is over SKIP_OVER times the aim
        if best is None or not points[best[1]]["predicted"]:
            return False
        return pred * best[3] / points[best[1]]["predicted"] > SKIP_OVER * max_error

    best = None  # (bytes, point index, choice, measured)
    lo, hi = None, None  # budgets known to pass / fail
    T2 = E2
    for _ in range(MAX_JOINT):
        choice = _greedy(blobs, T2)
        m, idx, _c = measure(choice, "allocation")
        if m <= max_error:
            nb = _nbytes(blobs, choice)
            if best is None or nb < best[0]:
                best = (nb, idx, choice, m)
            lo = T2 if lo is None else max(lo, T2)
            if m >= 0.9 * max_error:
                break
        else:
            hi = T2 if hi is None else min(hi, T2)
        if lo is not None and hi is not None:
            T2 = math.sqrt(lo * hi)
        else:
            r = (max_error / m) ** 2 if m > 0 else 4.0
            T2 *= min(max(r, 0.05), 4.0) * (0.97 if m > max_error else 1.0)
    # the data-free rule, as a floor the allocation must beat
    df = {b.name: ("k", b.fixed_bits) if b.fixed_bits is not None else _df_key(b) for b in blobs}
    nb_df = _nbytes(blobs, df)
    if best is not None and nb_df >= best[0]:
        skip(df, "data-free rule")
    elif hopeless(_predicted(blobs, df)):
        skip(df, "data-free rule", "predicted")
    else:
        m_df, idx_df, _ = measure(df, "data-free rule")
        if m_df <= max_error:
            best = (nb_df, idx_df, df, m_df)
    # the rule's dependent-quantisation grids, every step scaled alike (equal
    # noise a weight, as if the blobs were equally sensitive), coarsest first
    # that holds: per-blob choices fitted to the calibration rows can
    # generalise worse than this one-parameter family
    if blobs and all(b.dq_step is not None or b.fixed_bits is not None for b in blobs):
        def rung(j):
            if ("q", j) not in built:  # a trellis pass over every blob
                built.add(("q", j))
                for b in blobs:
                    if b.fixed_bits is None:
                        b.cands[("q", j)] = exact.pop((b.name, j), None) or _dq_cand(b, b.dq_step * _rung_scale(j))
            return {b.name: (("k", b.fixed_bits) if b.fixed_bits is not None else ("q", j)) for b in blobs}

        def rung_est(j):
            # the rung's bytes and predicted error, big blobs estimated from
            # a sample of their trellis segments (the small ones' candidates
            # are kept for rung)
            if j not in estimates:
                total, p = 0.0, 0.0
                for b in blobs:
                    if b.fixed_bits is not None:
                        c = b.cands[("k", b.fixed_bits)]
                        nb, dist = c.nbytes, c.dist
                    else:
                        step = b.dq_step * _rung_scale(j)
                        est = _dq_sampled(b.w, step)
                        if est is None:
                            exact[(b.name, j)] = c = _dq_cand(b, step)
                            nb, dist = c.nbytes, c.dist
                        else:
                            nb, dist = est[0], est[1] * _white_gain(b)
                    total += nb
                    if b.sens is not None:
                        p = p + b.sens * dist
                estimates[j] = (total, float(np.sqrt(np.max(p, initial=0.0))))
            return estimates[j]

        built: set = set()
        exact: dict = {}
        estimates: dict = {}
        first = -DQ_FINER
        if best is not None:
            # the rungs shrink as the steps grow: those no smaller than a
            # point that held cannot win, and the first smaller one is found
            # by bisection on estimated sizes (a sampled trellis pass each;
            # a rung the estimate placed wrongly is skipped below when made)
            last = DQ_LADDER
            while first < last:
                mid = (first + last) // 2
                if rung_est(mid)[0] < best[0]:
                    last = mid
                else:
                    first = mid + 1
        for j in range(-DQ_FINER, DQ_LADDER):
            kind = "data-free rule, dependent quantisation x%.3g" % _rung_scale(j)
            if j < first and ("q", j) not in built:
                continue  # no smaller than a point that held, and not made
            if ("q", j) not in built and best is not None:
                est = rung_est(j)
                if est[0] < best[0] and hopeless(est[1]):  # not made in full
                    skip(None, kind, "predicted", est)
                    break
            choice_q = rung(j)
            nb_q = _nbytes(blobs, choice_q)
            if best is not None and nb_q >= best[0]:
                skip(choice_q, kind)
                continue
            if hopeless(_predicted(blobs, choice_q)):  # the coarser rungs would be worse still
                skip(choice_q, kind, "predicted")
                break
            m_q, idx_q, _ = measure(choice_q, kind)
            if m_q > max_error:
                break
            best = (nb_q, idx_q, choice_q, m_q)
    if best is None:  # nothing met the target: the most faithful point measured
        idx = min((i for i in range(len(points)) if points[i]["measured"] is not None),
                  key=lambda i: points[i]["measured"])
        key = [k for k, v in tried.items() if v[1] == idx][0]
        best = (points[idx]["bytes"], idx, dict(key), points[idx]["measured"])
    _, idx, choice, m = best
    qm = _apply(base, blobs, choice, mantissa)
    say(f"allocation: {meter.count} joint forwards of {cal.n} rows; error {m:.4f} on the calibration rows")
    return _result(qm, blobs, choice, points, idx, target, m, cal,
                   probe.count + meter.count, t0, aim=max_error)


def _prep_record(prep: dict) -> dict:
    """Preprocessing as JSON scalars; a mean image is described, not stored (its size)."""
    out = {}
    for k, v in prep.items():
        if k == "mean" and np.ndim(v):
            a = np.asarray(v, np.float64)
            v = [float(x) for x in a.ravel()] if a.ndim == 1 else f"image {'x'.join(map(str, a.shape))}"
        elif isinstance(v, (np.floating, np.integer)):
            v = v.item()
        out[k] = v
    return out


def _result(qm, blobs, choice, points, idx, target, m, cal, forwards, t0, aim=None) -> FidelityResult:
    layers = {}
    for b in blobs:
        c = b.cands[choice[b.name]]
        layers[b.name] = {"bits": int(c.bits), "technique": c.technique, "method": "grid" if c.step else "codebook", "dq": bool(c.dq),
                          "stats": "hessian" if (b.stats is not None and b.stats.H is not None)
                          else ("rows" if b.stats is not None else "none")}
    record = {
        "mode": "fidelity" if target is not None else "fixed-bits+compensation",
        "max_error": target,
        "aim": aim,
        "calib_error": m,
        "calibration": cal.source,
        "preprocessing": _prep_record(cal.preprocessing),
        "forwards": int(forwards),
        "seconds": round(time.perf_counter() - t0, 3),
        "allocation": {"points": points, "chosen": int(idx)},
        "layers": layers,
    }
    steps = {b.name: b.cands[choice[b.name]].step for b in blobs if b.cands[choice[b.name]].step is not None}
    dq = {b.name for b in blobs if b.cands[choice[b.name]].dq}
    return FidelityResult(qm, {b.name: int(b.cands[choice[b.name]].bits) for b in blobs}, record, steps, dq)

