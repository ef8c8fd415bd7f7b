"""The per-blob codec: one float32 blob <-> ``(method, meta, parts)``.

Methods:

``raw``
    The float32 values as they are (lossless, NaN/Inf bits kept); the
    container compresses the bytes. Chosen whenever a coded form would not be
    smaller.
``exact``
    The blob has at most ``2**bits`` distinct values (4096 when lossless
    storage is asked for): a codebook of those values (bit patterns kept)
    plus Huffman-coded indices. Lossless. A blob with one distinct value
    stores no indices at all.
``shared``
    Weight sharing by 1-D k-means (:func:`~caffecompress.engine.kmeans.share_weights`):
    the codebook plus Huffman-coded labels.
``shared+sparse``
    Magnitude pruning first (:func:`~caffecompress.engine.prune.prune_mask`;
    on the host its packed form, :func:`~caffecompress.engine.prune.prune_packed`,
    1 bit a weight), then the positions of the kept weights
    (:mod:`~caffecompress.engine.sparse`) plus the codebook and the labels
    of the kept weights only. Pruned weights restore to +0.0.
``grid``
    A uniform, zero-anchored grid (:mod:`~caffecompress.engine.uniform`):
    ``step`` (float64, as ``float.hex``), the lowest index ``qmin`` and the
    alphabet size ``nsym`` in ``meta``, no codebook stored; the indices
    ``q - qmin`` Huffman-coded, or with meta ``coder = "rans"`` coded by the
    context-adaptive rANS coder (:mod:`~caffecompress.engine.rans`, parts
    ``a_w``, ``a_n``, ``a_x``, meta ``seg``), whichever is smaller.
    Restores ``float32((qmin + label) * step)``.
    With ``dq_seg`` in ``meta`` the indices are dependent-quantisation
    indices ``k`` (:mod:`~caffecompress.engine.trellis`, a state machine
    restarted every ``dq_seg`` weights): a value restores as
    ``float32(m * step)``, ``m`` the grid multiple the state gives ``k``.

``meta`` holds plain ints/strs only (the shape as ``"d0,d1,..."``), ``parts``
1-D NumPy arrays; prefixes keep the sub-streams apart (``l_`` labels, ``p_``
positions).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import CorruptDataError
from . import huffman as H
from . import sparse as S
from .packedmask import PackedMask

__all__ = ["EncodedBlob", "METHODS", "encode_blob", "decode_blob", "iter_decode_blob", "blob_stats", "grid_codebook"]

METHODS = ("raw", "exact", "shared", "shared+sparse", "grid")
#: Largest codebook of the lossless ``exact`` method.
EXACT_MAX = H.MAX_SYMBOLS
_PROBE = 1 << 16  # elements looked at before a full distinct-value count
#: What a Caffe blob can be (``Blob::Reshape``: count <= INT_MAX, kMaxBlobAxes):
#: a larger claimed shape is damage, refused before anything is allocated.
MAX_ELEMENTS = (1 << 31) - 1
MAX_AXES = 32


@dataclasses.dataclass(frozen=True)
class EncodedBlob:
    """A coded blob: ``method``, plain ``meta`` and 1-D NumPy ``parts``."""

    method: str
    meta: dict
    parts: dict

    @property
    def nbytes(self) -> int:
        """Bytes of the parts plus 8 per meta entry (the container's cost is its own)."""
        return int(sum(np.asarray(p).nbytes for p in self.parts.values()) + 8 * len(self.meta))


def _host(a) -> np.ndarray:
    return a if isinstance(a, np.ndarray) else a.get()


def _shape_str(shape) -> str:
    return ",".join(str(int(d)) for d in shape)


def _parse_shape(meta) -> tuple:
    try:
        s = str(meta["shape"])
        shape = tuple(int(d) for d in s.split(",")) if s else ()
    except (KeyError, ValueError) as exc:
        raise CorruptDataError(f"blob meta has no valid shape: {exc}") from exc
    if any(d < 0 for d in shape):
        raise CorruptDataError(f"blob shape {shape} is negative")
    if len(shape) > MAX_AXES or int(np.prod(shape, dtype=object)) > MAX_ELEMENTS:
        raise CorruptDataError(f"blob shape {shape} is larger than a Caffe blob can be "
                               f"({MAX_AXES} axes, {MAX_ELEMENTS} values)")
    return shape


def _raw(x32: np.ndarray, shape) -> EncodedBlob:
    return EncodedBlob("raw", {"shape": _shape_str(shape)}, {"data": np.ascontiguousarray(x32).reshape(-1)})


def _labels_parts(labels, nsym: int, xp, meta: dict, parts: dict) -> None:
    """Huffman-code ``labels`` (skipped for a one-entry codebook) into meta/parts."""
    meta["nlab"] = int(labels.size)
    if nsym <= 1:
        return
    s = H.encode(labels, nsym=nsym, xp=xp)
    m, p = H.stream_parts(s, "l_")
    meta.update(m)
    parts.update(p)


_LABEL_BLOCK = 1 << 18  # labels made per step when streamed (temporaries ~5 MiB)


def _labels_parts_blocks(blocks, counts, mflat, nsym: int, meta: dict, parts: dict) -> None:
    """:func:`_labels_parts` for labels made block by block (host only): the
    kept labels' ``counts`` fix the code, each block is packed as it comes."""
    n = int(np.sum(counts))
    meta["nlab"] = n
    if nsym <= 1:
        return

    def kept():
        s0 = 0
        for lab in blocks(_LABEL_BLOCK):
            if mflat is None:
                yield lab
            else:
                yield lab[mflat[s0 : s0 + lab.size]]
            s0 += lab.size

    s = H.encode_blocks(kept(), n=n, counts=counts, nsym=nsym)
    m, p = H.stream_parts(s, "l_")
    meta.update(m)
    parts.update(p)


def _kept_labels(labels: np.ndarray, m: PackedMask) -> np.ndarray:
    """``labels[mask]`` for a packed mask, expanded one block at a time."""
    out = np.empty(m.count, labels.dtype)
    o = 0
    for s0 in range(0, labels.size, _LABEL_BLOCK):
        part = labels[s0 : s0 + _LABEL_BLOCK][m[s0 : s0 + _LABEL_BLOCK]]
        out[o : o + part.size] = part
        o += part.size
    return out


def codebook_nbytes(book: np.ndarray) -> int:
    """Bytes :func:`_put_codebook` stores ``book`` (float32 levels) in."""
    from . import floatpack as F  # noqa: PLC0415
    from . import levelpack as LP  # noqa: PLC0415

    book = np.ascontiguousarray(book, np.float32).reshape(-1)
    if not 0 < book.size <= EXACT_MAX:
        return int(book.nbytes)
    lp = LP.pack_nbytes(book)
    return int(min(book.nbytes, F.pack_nbytes(book), book.nbytes if lp is None else lp))


def _put_fields(book: np.ndarray, meta: dict, parts: dict) -> None:
    """Store a codebook (float32, 1-D) as packed float fields
    (:mod:`~caffecompress.engine.floatpack`, meta ``cb_n``, ``cb_ebase``,
    ``cb_ebits``, ``cb_mbits``; format 2.1) where that is shorter than the
    floats, else as the floats."""
    from . import floatpack as F  # noqa: PLC0415

    if 0 < book.size <= EXACT_MAX and F.pack_nbytes(book) < book.nbytes:
        m, stream = F.pack(book)
        meta.update(cb_n=int(book.size), cb_ebase=m["ebase"], cb_ebits=m["ebits"], cb_mbits=m["mbits"])
        parts["codebook"] = stream
    else:
        parts["codebook"] = book


def _put_codebook(book: np.ndarray, meta: dict, parts: dict) -> None:
    """Store a codebook (float32) in the fewest bytes: the floats; packed
    fields (:func:`_put_fields`), short for the sorted levels of one blob
    (few exponents) and shorter where the levels were rounded; or
    exp-Golomb-coded gaps between the sorted levels' float keys
    (:mod:`~caffecompress.engine.levelpack`, meta ``cb_n``, ``cb_lmbits``,
    ``cb_lbase``, ``cb_lk``; format 2.3), about half of those where the
    levels were rounded (the fidelity pass's)."""
    from . import floatpack as F  # noqa: PLC0415
    from . import levelpack as LP  # noqa: PLC0415

    book = np.ascontiguousarray(book, np.float32).reshape(-1)
    gaps = LP.pack(book) if 0 < book.size <= EXACT_MAX else None
    if gaps is not None and gaps[1].size < min(F.pack_nbytes(book), book.nbytes):
        m, stream = gaps
        meta.update(cb_n=int(book.size), cb_lmbits=m["lmbits"], cb_lbase=m["lbase"], cb_lk=m["lk"])
        parts["codebook"] = stream
    else:
        _put_fields(book, meta, parts)


def codebook_of(meta: dict, parts: dict) -> np.ndarray:
    """A codebook blob's levels (float32, 1-D), unpacked where stored packed.

    Raises
    ------
    CorruptDataError
        Packed fields that do not decode (meta out of range, wrong length).
    """
    book = parts.get("codebook", np.zeros(0, np.float32))
    if "cb_n" not in meta:
        return np.asarray(book)
    from . import floatpack as F  # noqa: PLC0415

    n = meta["cb_n"]
    if type(n) is not int or not 1 <= n <= EXACT_MAX:  # noqa: E721  (bool is an int subclass)
        raise CorruptDataError(f"blob codebook count {n!r} is not an integer in 1..{EXACT_MAX}")
    b = np.asarray(book)
    if b.dtype != np.uint8 or b.ndim != 1:
        raise CorruptDataError("a packed codebook is a uint8 stream")
    lev = [k for k in ("cb_lmbits", "cb_lbase", "cb_lk") if k in meta]
    if lev and any(k in meta for k in ("cb_ebase", "cb_ebits", "cb_mbits")):
        raise CorruptDataError("a codebook packed both as float fields and as key gaps")
    try:
        if lev:
            from . import levelpack as LP  # noqa: PLC0415

            return LP.unpack({k: meta.get("cb_" + k) for k in ("lmbits", "lbase", "lk")}, b, n)
        return F.unpack({k: meta.get("cb_" + k) for k in ("ebase", "ebits", "mbits")}, b, n)
    except ValueError as exc:
        raise CorruptDataError(f"packed codebook damaged: {exc}") from None


def _exact_lossless(x32: np.ndarray, shape, xp) -> EncodedBlob | None:
    """Codebook of distinct bit patterns (<= EXACT_MAX) + coded indices, else None."""
    keys = x32.reshape(-1).view(np.uint32)
    if keys.size > _PROBE and np.unique(keys[:_PROBE]).size > EXACT_MAX:
        return None
    book, inv = np.unique(keys, return_inverse=True)
    if book.size > EXACT_MAX:
        return None
    dt = np.uint8 if book.size <= 256 else np.uint16
    meta = {"shape": _shape_str(shape)}
    parts: dict = {}
    _put_codebook(book.view(np.float32), meta, parts)
    _labels_parts(xp.asarray(inv.astype(dt).reshape(-1)), int(book.size), xp, meta, parts)
    return EncodedBlob("exact", meta, parts)


def _grid(x32: np.ndarray, shape, step: float, lam: float, dq: bool, xp) -> EncodedBlob:
    """The ``grid`` method: indices on a uniform grid of ``step`` (or coarser, see
    :func:`~caffecompress.engine.uniform.grid_step_for`), Huffman-coded; with
    ``dq``, dependent-quantisation indices (:mod:`~caffecompress.engine.trellis`,
    chosen on the host)."""
    from . import uniform as U  # noqa: PLC0415

    xd = xp.asarray(x32) if xp is not np else x32
    if dq:
        from . import trellis as TR  # noqa: PLC0415

        # a dependent-quantisation index k stands for the multiple ~2k, so the
        # grid may hold twice the plain range before it must coarsen
        s = TR.grid_step_for(xd, step, xp=xp)
        q = xp.asarray(TR.quantize(x32, s))
    else:
        s = U.grid_step_for(xd, step, xp=xp)
        q = U.quantize(xd, s, lam=lam, xp=xp)
    qmin, qmax = int(q.min()), int(q.max())
    nsym = qmax - qmin + 1
    q -= qmin  # in place: a big blob's index copy is the largest temporary here
    lab = q.astype(np.uint8) if nsym <= 256 else (q.view(np.uint16) if q.dtype == np.int16 else q.astype(np.uint16))
    del q
    meta = {"shape": _shape_str(shape), "bits": max(1, (nsym - 1).bit_length()), "step": s.hex(),
            "qmin": qmin, "nsym": nsym}
    if dq:
        from .trellis import SEGMENT  # noqa: PLC0415

        meta["dq_seg"] = SEGMENT
    parts: dict = {}
    if nsym >= 2 and lab.size >= RANS_MIN and _rans_ready() and _rans_parts(_host(lab), nsym, qmin, meta, parts):
        meta["nlab"] = int(lab.size)
    else:
        _labels_parts(lab, nsym, xp, meta, parts)
    return EncodedBlob("grid", meta, parts)


#: Smallest grid blob whose indices the adaptive rANS coder is tried on.
RANS_MIN = 64
#: The rANS code replaces the Huffman code when it is smaller than this
#: fraction of it: the static table decodes ~3x faster, so it stays where
#: it is as good (VGG-16's fc6 at the data-free rule: rANS 0.8 % smaller,
#: 1.3 s more to restore; the zoo's blobs: 2-7 % smaller).
RANS_MIN_GAIN = 0.99
#: The rANS code is not even tried where :func:`~caffecompress.engine.rans.estimate_nbytes`
#: (a lower bound on the zoo's 198 data-free blobs) is over this fraction of
#: the Huffman code's bytes: on the zoo every blob rANS won had an estimate
#: under 0.985 of Huffman's, and 56 of the 57 it lost had one over it.
RANS_GATE = 0.985


#: Grid blobs of at most this many values have their labels coded with both
#: rANS context rules, the smaller kept: the running magnitude's 16 contexts
#: (:data:`~caffecompress.engine.rans.CTX_EMA`) pay more to learn than the
#: previous index's 4, which wins on some blobs of a few thousand values
#: (+0.3-1.8 % on 11 of the zoo's fidelity-targeted blobs, one of 147,456
#: values); a big blob's coding is not doubled.
RANS_BOTH_MAX = 1 << 18


def _rans_ready() -> bool:
    """The rANS coder is tried where its compiled twin runs (numba): the NumPy
    twin's ~4096 lock-step array steps a blob make small blobs ~50x slower,
    so without numba grid indices keep the Huffman code (either file reads
    everywhere)."""
    from . import rans as R  # noqa: PLC0415

    return R.have_compiled()


def _rans_parts(lab: np.ndarray, nsym: int, qmin: int, meta: dict, parts: dict) -> bool:
    """Code grid indices with the context-adaptive rANS coder
    (:mod:`~caffecompress.engine.rans`, meta ``coder``) when that is smaller
    than the Huffman code would be (sized from the counts, not packed);
    False (nothing written) otherwise."""
    from . import rans as R  # noqa: PLC0415

    counts = H._symbol_counts(lab, nsym, np)
    lengths = H.code_lengths(counts, H.auto_max_len(int(np.count_nonzero(counts))))
    hb = H.stream_nbytes(counts, lengths, lab.size)
    if R.estimate_nbytes(lab, nsym, qmin) >= RANS_GATE * hb:  # it would not win: spare the coding
        return False
    huff = RANS_MIN_GAIN * hb
    m, p = R.encode(lab, nsym, qmin)
    if lab.size <= RANS_BOTH_MAX:  # the older rule's 4 contexts learn faster on small blobs
        m0, p0 = R.encode(lab, nsym, qmin, ctx=0)
        if sum(v.nbytes for v in p0.values()) < sum(v.nbytes for v in p.values()):
            m, p = m0, p0
    if sum(v.nbytes for v in p.values()) >= huff:
        return False
    meta["coder"] = "rans"
    meta.update(m)
    parts.update(p)
    return True


def legacy_parts(meta: dict, parts: dict) -> tuple[dict, dict]:
    """A blob's meta and parts as format 1.x readers decode them: labels of
    the running-magnitude rANS context (meta ``ctx``, format 2.2) recoded
    with the previous-index context those readers know, a codebook of key
    gaps (``cb_lk``, format 2.3) stored as packed float fields; any other
    blob as it is."""
    if "cb_lk" in meta:
        book = codebook_of(meta, parts)
        meta = {k: v for k, v in meta.items() if k not in ("cb_n", "cb_lmbits", "cb_lbase", "cb_lk")}
        parts = {k: v for k, v in parts.items() if k != "codebook"}
        _put_fields(book, meta, parts)
    if meta.get("coder") != "rans" or not meta.get("ctx"):
        return meta, parts
    from . import rans as R  # noqa: PLC0415

    nsym = int(meta["nsym"])
    lab = np.concatenate(list(_rans_blocks(meta, parts, int(meta["nlab"]), nsym)))
    m, p = R.encode(lab, nsym, int(meta["qmin"]), seg=int(meta["seg"]), ctx=0)
    keep = {k: v for k, v in meta.items() if k not in ("ctx", "tok")}
    keep.update(m)
    return keep, {k: v for k, v in parts.items() if not k.startswith("a_")} | p


_MAX_DQ_SEG = 1 << 20


def _dq_seg(meta: dict) -> int | None:
    """A grid blob's dependent-quantisation segment length, checked; None without one."""
    if "dq_seg" not in meta:
        return None
    v = meta["dq_seg"]
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= int(v) <= _MAX_DQ_SEG:
        raise CorruptDataError(f"grid blob's dq_seg {v!r} is not an integer in 1..{_MAX_DQ_SEG}")
    return int(v)


def _grid_dq_values(meta, parts, size: int, block: int):
    """A dependent-quantisation grid blob's values in pieces of ``block`` (the
    state scan runs on whole segments, then the pieces are regrouped)."""
    from . import trellis as TR  # noqa: PLC0415

    seg = _dq_seg(meta)
    # step, qmin and nsym were checked by the caller's _checked_codebook
    step, qmin = float.fromhex(str(meta["step"])), int(meta["qmin"])
    nsym = int(meta["nsym"])

    def segments():
        pos, pend = 0, None
        for lab in _label_blocks(meta, parts, nsym, max(block, seg)):
            pend = lab if pend is None else np.concatenate([pend, lab])
            cut = pend.size - pend.size % seg
            if cut:
                yield TR.values(pend[:cut], qmin, step, start=pos, seg=seg)
                pos += cut
                pend = pend[cut:]
        if pend is not None and pend.size:
            yield TR.values(pend, qmin, step, start=pos, seg=seg)

    yield from _regroup(segments(), block)


def _regroup(pieces, block: int):
    """Re-cut a stream of 1-D arrays into pieces of exactly ``block`` (the last may be shorter)."""
    pend, have = [], 0
    for p in pieces:
        pend.append(p)
        have += p.size
        while have >= block:
            cat = np.concatenate(pend) if len(pend) > 1 else pend[0]
            yield cat[:block]
            rest = cat[block:]
            pend, have = ([rest] if rest.size else []), rest.size
    if have:
        yield np.concatenate(pend) if len(pend) > 1 else pend[0]


def grid_codebook(meta: dict) -> np.ndarray:
    """The levels of a ``grid`` blob, ``float32((qmin + i) * step)``, checked (host)."""
    from .uniform import MAX_LEVEL  # noqa: PLC0415

    try:
        step = float.fromhex(str(meta["step"]))
        qmin, nsym = int(meta["qmin"]), int(meta["nsym"])
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise CorruptDataError(f"grid blob meta is incomplete: {exc}") from exc
    if not (step > 0.0 and np.isfinite(step)):
        raise CorruptDataError(f"grid step {meta['step']!r} is not a positive finite number")
    if not (1 <= nsym <= 2 * MAX_LEVEL + 1 and -MAX_LEVEL <= qmin and qmin + nsym - 1 <= MAX_LEVEL):
        raise CorruptDataError(f"grid indices {qmin}..{qmin + nsym - 1} exceed +-{MAX_LEVEL}")
    # float64 products rounded once to float32: what the encoder's levels are
    with np.errstate(over="ignore"):
        levels = ((np.arange(nsym, dtype=np.float64) + qmin) * step).astype(np.float32)
    if not np.isfinite(levels).all():  # the encoder keeps every level finite (uniform.F32_OVERFLOW)
        raise CorruptDataError(f"grid step {meta['step']!r} puts levels {qmin}..{qmin + nsym - 1} "
                               "past float32's range")
    return levels


def encode_blob(x, *, bits=None, prune: float = 0.0, init: str = "linear", keep_zero=None,
                step: float | None = None, lam: float = 0.0, dq: bool = False, xp=np) -> EncodedBlob:
    """Code one blob.

    Parameters
    ----------
    x : array
        The blob (NumPy, or ``xp``), any shape; stored as float32.
    bits : int, optional
        Codebook size ``2**bits`` (1..12) for weight sharing. None asks for
        lossless storage: ``exact`` when the blob has few distinct values,
        else ``raw``.
    prune : float
        Fraction of weights pruned by magnitude before sharing (0 = none).
    init : str
        k-means initialisation (see :func:`~caffecompress.engine.kmeans.share_weights`).
    step : float, optional
        A uniform grid step instead of a codebook: the ``grid`` method
        (``bits`` and ``prune`` must then be left out).
    lam : float
        The ``grid`` method's rate weight (0: nearest level; see
        :func:`~caffecompress.engine.uniform.quantize`).
    dq : bool
        The ``grid`` method with dependent (trellis-coded) quantisation
        (:mod:`~caffecompress.engine.trellis`); ``lam`` is then unused.
    keep_zero : bool, optional
        Keep 0.0 as an exact centroid. Default False: a ``shared+sparse``
        blob restores its pruned positions from the position stream, so only
        the kept weights are clustered and no code is spent on zero.
    xp : module
        numpy or cupy: where the per-element work runs.

    Returns
    -------
    EncodedBlob
        ``raw`` whenever the coded form would not be smaller than the floats.

    Raises
    ------
    NonFiniteWeightsError
        NaN/Inf weights on a lossy path (``bits`` given).
    """
    shape = tuple(x.shape) if hasattr(x, "shape") else np.shape(x)
    x32 = np.ascontiguousarray(_host(xp.asarray(x)) if xp is not np else np.asarray(x), dtype=np.float32)
    raw_bytes = 4 * x32.size
    if step is not None:
        if bits is not None or prune:
            raise ValueError("step= (the grid method) takes neither bits= nor prune=")
        if x32.size == 0:
            return _raw(x32, shape)
        enc = _grid(x32, shape, step, float(lam), bool(dq), xp)
        return enc if enc.nbytes < raw_bytes else _raw(x32, shape)
    if bits is None:
        if prune:
            raise ValueError("pruning is lossy: give bits= with prune=")
        enc = _exact_lossless(x32, shape, xp)
        return enc if enc is not None and enc.nbytes < raw_bytes else _raw(x32, shape)

    from . import kmeans  # noqa: PLC0415  (the clustering engineer's module)
    from .prune import prune_mask, prune_packed  # noqa: PLC0415

    bits = int(bits)
    if not 1 <= bits <= 12:
        raise ValueError(f"bits must be in 1..12, got {bits}")
    if not 0.0 <= float(prune) <= 1.0:
        raise ValueError(f"prune must be in [0, 1], got {prune}")
    k = 1 << bits
    xd = xp.asarray(x32) if xp is not np else x32
    mask = None
    if prune > 0:
        # on the host the mask stays packed (1 bit a weight) and every stage
        # expands only the block it reads; a device mask stays on the device
        if xp is np:
            mask = prune_packed(xd, sparsity=float(prune))
        else:
            mask = prune_mask(xd, sparsity=float(prune), xp=xp)
        if bool(mask.all()):
            mask = None
    kz = bool(keep_zero)  # pruned positions come back from the position stream, not a zero code
    # on the host the labels are never held whole: they are made block by
    # block and packed straight into the Huffman stream (same bytes)
    sw, lazy = kmeans._share(xd, k, init, kz, mask, 0, kmeans.DEFAULT_MAX_ITER, None, "auto", xp,
                             lazy=xp is np)
    meta = {"shape": _shape_str(shape), "bits": bits}
    parts: dict = {}
    _put_codebook(_host(sw.codebook), meta, parts)
    nsym = int(sw.codebook.size)
    packed = isinstance(mask, PackedMask)
    mflat = None if mask is None else mask if packed else mask.reshape(-1)
    if mask is None:
        method = "exact" if sw.exact else "shared"
    else:
        method = "shared+sparse"
        sp = S.encode_positions(mflat if packed else _host(mflat))
        meta["p_method"] = sp.method
        meta.update({"p_" + k_: v for k_, v in sp.meta.items()})
        parts.update({"p_" + k_: v for k_, v in sp.parts.items()})
    if lazy is None:
        labels = sw.labels.reshape(-1)
        if mflat is not None:
            labels = _kept_labels(labels, mflat) if packed else labels[mflat]
        _labels_parts(labels, nsym, xp, meta, parts)
    else:
        blocks, counts = lazy
        _labels_parts_blocks(blocks, counts, mflat, nsym, meta, parts)
    enc = EncodedBlob(method, meta, parts)
    return enc if enc.nbytes < raw_bytes else _raw(x32, shape)


def _label_stream(meta, parts, nsym: int):
    """Check a blob's label count and stream: ``(n, HuffmanStream)``, or
    ``(n, None)`` for a one-value codebook (which stores no labels)."""
    n = int(meta.get("nlab", -1))
    if n < 0:
        raise CorruptDataError("blob meta lacks the label count")
    if "coder" in meta:
        from . import rans as R  # noqa: PLC0415

        if meta["coder"] != "rans" or "qmin" not in meta:
            raise CorruptDataError(f"unknown label coder {meta['coder']!r} (only grid blobs take 'rans')")
        if any(k.startswith("l_") for k in list(meta) + list(parts)):
            raise CorruptDataError("a rANS-coded blob with a Huffman label stream")
        R.check(meta, parts, n, nsym, qmin=int(meta["qmin"]))
        return n, _RANS
    if nsym <= 1:
        if "l_lengths" in parts or "l_n" in meta:
            raise CorruptDataError("a one-value codebook with a label stream")
        return n, None
    s = H.stream_from_parts(meta, parts, "l_")
    if s.n != n or s.nsym != nsym:
        raise CorruptDataError(f"label stream has {s.n} labels over {s.nsym} symbols, expected {n} over {nsym}")
    if 8 * np.asarray(s.payload).nbytes < n:  # a code of two or more symbols spends >= 1 bit a label
        raise CorruptDataError(f"label stream of {np.asarray(s.payload).nbytes} bytes cannot hold {n} labels")
    return n, s


_RANS = object()  # _label_stream's stream for a rANS-coded blob (decoded by engine.rans)


def _decode_labels(meta, parts, nsym: int, xp):
    n, s = _label_stream(meta, parts, nsym)
    if s is _RANS:  # a host coder: the device gets the labels
        return xp.asarray(np.concatenate(list(_rans_blocks(meta, parts, n, nsym))))
    return xp.zeros(n, np.uint8) if s is None else H.decode(s, xp=xp)


def _rans_blocks(meta, parts, n: int, nsym: int):
    from . import rans as R  # noqa: PLC0415

    yield from R.decode_groups(meta, parts, n, nsym, int(meta["qmin"]))


def _checked_codebook(method: str, meta: dict, parts: dict, size: int) -> np.ndarray:
    """The blob's float32 codebook, checked, and for ``exact``/``shared``
    the label count against the blob size (both decoders)."""
    if method == "grid":
        if "codebook" in parts:
            raise CorruptDataError("a grid blob stores no codebook")
        book = grid_codebook(meta)
        if int(meta.get("nlab", -1)) != size:
            raise CorruptDataError(f"blob has {meta.get('nlab')} labels for {size} weights")
        return book
    if "coder" in meta:
        raise CorruptDataError(f"a {method} blob takes no label coder (meta coder {meta['coder']!r})")
    book = codebook_of(meta, parts)
    if book.dtype != np.float32 or book.ndim != 1 or not 1 <= book.size <= EXACT_MAX:
        raise CorruptDataError(f"blob codebook must be 1..{EXACT_MAX} float32 values")
    if method in ("exact", "shared", "grid") and int(meta.get("nlab", -1)) != size:
        raise CorruptDataError(f"blob has {meta.get('nlab')} labels for {size} weights")
    return book


_DECODE_PIECE = 1 << 22  # values restored at a time on the host


def decode_blob(method: str, meta: dict, parts: dict, *, xp=np) -> np.ndarray:
    """Restore a blob coded by :func:`encode_blob`: float32, original shape (host NumPy).

    Raises
    ------
    CorruptDataError
        Unknown method, missing/mistyped parts, or sizes that do not agree.
    """
    shape = _parse_shape(meta)
    size = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if method == "raw":
        data = np.asarray(parts.get("data", np.zeros(0, np.float32)))
        if data.dtype != np.float32 or data.size != size:
            raise CorruptDataError(f"raw blob holds {data.size} {data.dtype} values, expected {size} float32")
        return data.reshape(shape).copy()
    if method not in METHODS:
        raise CorruptDataError(f"unknown blob method {method!r}")
    if method == "grid" and _dq_seg(meta) is not None:
        xp = np  # the state scan runs on the host
    if xp is np:
        # on the host in pieces: never the whole label stream decoded at
        # once (without numba the lock-step decoder reads a whole stream
        # through int64 windows, 8 bytes per payload byte: ~600 MB for
        # VGG-16's fc6), only the float32 output whole; the pieces add up
        # to ``size`` values (label counts are checked against it, and the
        # label stream against its byte size, before the output exists)
        if method in ("exact", "shared", "grid"):
            _label_stream(meta, parts, _checked_codebook(method, meta, parts, size).size)
        out = np.empty(size, np.float32)
        s0 = 0
        for piece in iter_decode_blob(method, meta, parts, block=_DECODE_PIECE):
            out[s0 : s0 + piece.size] = piece
            s0 += piece.size
        return out.reshape(shape)
    book = _checked_codebook(method, meta, parts, size)
    if method in ("exact", "shared", "grid"):
        lab = _host(_decode_labels(meta, parts, book.size, xp))
        return book[lab].reshape(shape)
    # shared+sparse
    mask = _kept_mask(meta, parts, size)
    lab = _host(_decode_labels(meta, parts, book.size, xp))
    out = np.zeros(size, np.float32)
    out[mask] = book[lab]
    return out.reshape(shape)


def _label_blocks(meta, parts, nsym: int, block: int):
    """The label stream in consecutive pieces of ``block`` labels (checked by :func:`_label_stream`)."""
    n, st = _label_stream(meta, parts, nsym)
    if st is _RANS:
        yield from _regroup(_rans_blocks(meta, parts, n, nsym), block)
        return
    if st is None:
        for s in range(0, n, block):
            yield np.zeros(min(block, n - s), np.uint8)
        return
    yield from H.decode_blocks(st, block)


def iter_decode_blob(method: str, meta: dict, parts: dict, *, block: int = 1 << 22):
    """Restore a blob piece by piece: yield its flat float32 values in order.

    Every piece but the last holds exactly ``block`` values (host NumPy), so
    the concatenation equals ``decode_blob(...).reshape(-1)`` while no more
    than a piece (plus, for ``shared+sparse``, the blob's boolean keep-mask)
    is decoded at a time: for checksums and error sums over big blobs.

    Raises
    ------
    CorruptDataError
        As :func:`decode_blob`; a damaged stream may raise after some pieces
        were yielded.
    """
    block = max(int(block), 1)
    shape = _parse_shape(meta)
    size = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if method in ("raw",) or method not in METHODS:
        y = decode_blob(method, meta, parts).reshape(-1)
        for s in range(0, size, block):
            yield y[s : s + block]
        return
    book = _checked_codebook(method, meta, parts, size)
    if method == "grid" and _dq_seg(meta) is not None:
        yield from _grid_dq_values(meta, parts, size, block)
        return
    if method in ("exact", "shared", "grid"):
        # label pieces come in whole Huffman chunks: regroup them to ``block``
        for lab in _regroup(_label_blocks(meta, parts, book.size, block), block):
            yield book[lab]
        return
    # shared+sparse: the keep-mask whole (1 byte a weight), the labels in pieces
    mask = _kept_mask(meta, parts, size)
    labs = _label_blocks(meta, parts, book.size, block)
    buf = np.zeros(0, np.uint8)
    for s in range(0, size, block):
        m = mask[s : s + block]
        need = int(np.count_nonzero(m))
        while buf.size < need:
            more = next(labs, None)
            if more is None:
                raise CorruptDataError("label stream ends before the kept weights do")
            buf = np.concatenate([buf, more])
        out = np.zeros(m.size, np.float32)
        out[m] = book[buf[:need]]
        buf = buf[need:]
        yield out


def blob_stats(x, enc: EncodedBlob, y=None) -> dict:
    """Size and fidelity of one coded blob.

    Parameters
    ----------
    x : array_like
        The original blob.
    enc : EncodedBlob
        Its coded form.
    y : array_like, optional
        The restored blob (decoded here when not given).

    Returns
    -------
    dict
        ``method``; ``bits`` (codebook bits, 32 for raw); ``sparsity``
        (fraction of exact zeros restored where the original was not 0);
        ``sse`` and ``sqnr_db`` (float64); ``bytes`` (parts + meta) and
        ``bits_per_weight``.
    """
    x = np.asarray(x, np.float32).reshape(-1)
    if y is None:
        y = decode_blob(enc.method, enc.meta, enc.parts)
    y = np.asarray(y, np.float32).reshape(-1)
    fin = np.isfinite(x) & np.isfinite(y)
    d = x[fin].astype(np.float64) - y[fin]
    sse = float(d @ d)
    sig = float(x[fin].astype(np.float64) @ x[fin])
    if sse == 0:
        sqnr = float("inf")
    else:
        sqnr = float(10 * np.log10(sig / sse)) if sig > 0 else float("-inf")
    nb = enc.nbytes
    return {
        "method": enc.method,
        "bits": int(enc.meta.get("bits", 32 if enc.method == "raw" else 0)),
        "sparsity": float(np.count_nonzero((y == 0) & (x != 0)) / max(x.size, 1)),
        "sse": sse,
        "sqnr_db": sqnr,
        "bytes": nb,
        "bits_per_weight": 8.0 * nb / max(x.size, 1),
    }


def _kept_mask(meta, parts, size: int) -> np.ndarray:
    """Decode a shared+sparse blob's keep-mask (its ``p_`` streams) and check
    that the label count matches the kept weights."""
    pmeta = {k[2:]: v for k, v in meta.items() if k.startswith("p_")}
    pparts = {k[2:]: v for k, v in parts.items() if k.startswith("p_")}
    pm = str(pmeta.pop("method", ""))
    mask = S.decode_positions(S.SparsePositions(pm, pmeta, pparts), size)
    count = int(np.count_nonzero(mask))
    if int(meta.get("nlab", -1)) != count:
        raise CorruptDataError(f"blob has {meta.get('nlab')} labels for {count} kept weights")
    return mask
