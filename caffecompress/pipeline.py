"""Model -> per-blob plan -> engine -> :class:`CompressedModel`, and back.

The pipeline decides, per blob, lossless storage or lossy weight sharing
(see :mod:`caffecompress.config`), runs the engine, and records for every
blob the CRC32 of the array a reader must get back. It touches no files:
:mod:`caffecompress.container` stores a :class:`CompressedModel` in HDF5.

Lossless blobs are byte-shuffled (all first bytes of every value, then all
second bytes, ...) and LZMA2-coded here rather than by HDF5's shuffle +
deflate filters: LZMA2 gains 2-6 % over deflate on the zoo's raw floats,
the result is one contiguous payload with exact per-blob byte counts and no
chunk index, and the bits are kept exactly (NaN payloads, -0.0, subnormals).
"""

from __future__ import annotations

import dataclasses
import functools
import lzma
import math
import os
import time
import zlib
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np

from .backend import get_xp, gpu_available, to_host
from .config import Settings, make_settings, plan_blob
from .errors import (
    BackendUnavailableError,
    CorruptDataError,
    FormatError,
    NonFiniteWeightsError,
)
from .headnet import Levels
from .model import Layer, Model

__all__ = [
    "BlobRecord",
    "CompressedModel",
    "compress",
    "restore",
    "decode_record",
    "sqnr_db",
    "DEEP_COMPRESSION_WARNING",
]

LOSSLESS = "lossless"  # method of blobs stored as byte-shuffled, LZMA2/zlib-coded bytes
_BLOCK = 1 << 22  # elements per block for reductions (bounded temporaries)
_SEARCH_SAMPLE = 1 << 20  # elements the bit-width search clusters per blob at most
_BIG = 1 << 22  # blobs this large are compressed one at a time (peak memory)
# Caffe reads files of at most 2 GiB (protobuf's INT_MAX limit), so no real
# blob has more elements than this; a bigger claim is damage or a hostile file
_MAX_ELEMENTS = (1 << 31) - 1

DEEP_COMPRESSION_WARNING = (
    "deep-compression preset: pruning without retraining moves the outputs; "
    "check them with `caffecompress verify` before deploying"
)


@dataclass
class BlobRecord:
    """One stored blob.

    Attributes
    ----------
    layer, index : int
        Position of the blob (layer index in ``CompressedModel.layers``, blob index).
    shape : tuple of int
    dtype : str
        NumPy dtype string of the restored array (``'<f4'``).
    method : str
        ``"lossless"`` (exact bytes, shuffled + LZMA2/zlib) or an engine method (``raw``, ``exact``,
        ``shared``, ``shared+sparse``); ``"ref"`` for a shared parameter stored once.
    meta : dict
        Plain scalars the decoder needs.
    parts : dict of str -> 1-D numpy.ndarray
        The stored streams.
    crc32 : int
        zlib.crc32 of the restored array's bytes (C order).
    shared : int
        Index of the record this one reuses (``method == "ref"``), else -1.
    kind : str
        ``conv``, ``fc`` or ``other``.
    bits : int
        Codebook bit width (0 for lossless).
    sparsity, sqnr : float
        Fraction of exact zeros after restore; weight SQNR in dB (inf if exact).
    """

    layer: int
    index: int
    shape: tuple
    dtype: str
    method: str
    meta: dict
    parts: dict
    crc32: int
    shared: int = -1
    kind: str = "other"
    bits: int = 0
    sparsity: float = 0.0
    sqnr: float = math.inf

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(math.prod(self.shape))

    @property
    def nbytes(self) -> int:
        """Bytes of the stored streams (0 for a shared reference)."""
        return int(sum(p.nbytes for p in self.parts.values()))

    @property
    def orig_nbytes(self) -> int:
        """Bytes of the restored array."""
        return self.size * np.dtype(self.dtype).itemsize


@dataclass
class CompressedModel:
    """A compressed net in memory: what :func:`caffecompress.save` writes.

    Attributes
    ----------
    layers : list of (name, type, extra)
        ``extra`` holds the other Layer fields (``param_names``, ``storage``).
    records : list of BlobRecord
        In file order (layer, then blob).
    name, skeleton, prototxt, format, unmatched, source
        Carried over from the :class:`~caffecompress.model.Model`.
    settings : dict
        The settings used (for ``info``).
    warnings : list of str
    seconds : float
        Wall time of compression.
    """

    layers: list
    records: list
    name: str = ""
    skeleton: bytes = b""
    prototxt: str | None = None
    format: str = "V2"
    unmatched: list = field(default_factory=list)
    source: str | None = None
    settings: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def payload_nbytes(self) -> int:
        """Bytes of every stored stream."""
        return int(sum(r.nbytes for r in self.records))

    @property
    def orig_nbytes(self) -> int:
        """Bytes of the weights as float arrays (shared parameters counted once per use)."""
        return int(sum(r.orig_nbytes for r in self.records))

    def layer_records(self, i: int) -> list:
        """Records of layer ``i``."""
        return [r for r in self.records if r.layer == i]


# ---------------------------------------------------------------- helpers


def crc32_of(a: np.ndarray) -> int:
    """CRC32 of an array's bytes in C order."""
    return zlib.crc32(memoryview(np.ascontiguousarray(a)).cast("B")) & 0xFFFFFFFF


def sqnr_db(x: np.ndarray, y: np.ndarray) -> float:
    """Signal-to-quantisation-noise ratio of ``y`` against ``x`` in dB.

    Block by block (float32 products, float64 sums across blocks) so
    temporaries stay small and BLAS does the work. Returns ``inf`` when
    ``y == x`` and ``-inf`` for an all-zero ``x`` that changed.
    """
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    sig = 0.0
    err = 0.0
    for s in range(0, xf.size, _BLOCK):
        a = xf[s : s + _BLOCK].astype(np.float32, copy=False)
        d = a - yf[s : s + _BLOCK]
        sig += float(np.dot(a, a))
        err += float(np.dot(d, d))
    if err == 0.0:
        return math.inf
    if sig == 0.0:
        return -math.inf
    return 10.0 * math.log10(sig / err)


def _count_zeros(a: np.ndarray) -> int:
    f = a.reshape(-1)
    return int(sum(np.count_nonzero(f[s : s + _BLOCK] == 0) for s in range(0, f.size, _BLOCK)))


def _shuffle(a: np.ndarray) -> np.ndarray:
    """Byte-shuffle: byte plane 0 of every value, then plane 1, ... (uint8, 1-D)."""
    isz = a.dtype.itemsize
    b = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    if isz == 1:
        return b
    return np.ascontiguousarray(b.reshape(-1, isz).T).reshape(-1)


def _unshuffle(b: np.ndarray, dtype: np.dtype) -> np.ndarray:
    isz = dtype.itemsize
    if isz == 1:
        return b.view(dtype)
    return np.ascontiguousarray(b.reshape(isz, -1).T).reshape(-1).view(dtype)


_LZMA_MAX = 64 << 20  # larger blobs use zlib: LZMA runs at ~5 MB/s, zlib-6 at ~30
_FPACK_MAX = 1 << 16  # float32 blobs up to this many values may be stored as packed fields


def _lzma_filters(nbytes: int) -> list:
    # a dictionary no larger than the blob keeps small blobs cheap; lc/lp/pb = 0
    # because shuffled float planes have no byte-position structure
    d = max(4096, 1 << max(nbytes - 1, 1).bit_length())
    return [{"id": lzma.FILTER_LZMA2, "preset": 6, "dict_size": min(d, 1 << 26),
             "lc": 0, "lp": 0, "pb": 0}]


def _encode_lossless(x: np.ndarray) -> tuple[dict, dict]:
    """Byte-shuffle, then LZMA2 (raw, no container) or zlib for huge blobs;
    small float32 blobs as packed fields where those are shorter.

    Measured on the zoo's raw float blobs: shuffle + LZMA2 gives 1.15-1.20x,
    shuffle + zlib-9 1.09-1.18x (worst on small nets, where zlib's block
    overhead shows); LZMA2 costs ~2x the time, which only matters for blobs
    above 64 MiB.
    """
    raw = _shuffle(x).tobytes()
    if len(raw) <= _LZMA_MAX:
        data = lzma.compress(raw, format=lzma.FORMAT_RAW, filters=_lzma_filters(len(raw)))
        meta = {"codec": "lzma", "shuffle": int(x.dtype.itemsize)}
    else:
        data = zlib.compress(raw, 6)
        meta = {"codec": "zlib", "shuffle": int(x.dtype.itemsize)}
    if x.dtype == np.float32 and x.size <= _FPACK_MAX:
        # small float blobs: LZMA's start-up outweighs what it finds in ~100 floats;
        # the packed fields are exact too, and much shorter where mantissas were rounded
        from .engine import floatpack  # noqa: PLC0415

        if floatpack.pack_nbytes(x) < len(data):
            meta, stream = floatpack.pack(x)
            return {"codec": "fpack", **meta}, {"data": stream}
    return meta, {"data": np.frombuffer(data, np.uint8)}


def _decode_lossless(meta: dict, parts: dict, shape: tuple, dtype: np.dtype, where: dict):
    n = int(math.prod(shape)) * dtype.itemsize
    data = parts.get("data")
    if data is None:
        raise CorruptDataError("lossless blob has no 'data' part", **where)
    codec = meta.get("codec")
    if codec == "fpack":
        from .engine import floatpack  # noqa: PLC0415

        if dtype != np.float32:
            raise CorruptDataError(f"lossless blob: fpack holds float32, not {dtype}", **where)
        try:
            return floatpack.unpack(meta, data, int(math.prod(shape))).reshape(shape)
        except ValueError as exc:
            raise CorruptDataError(f"fpack stream damaged: {exc}", **where) from None
    if meta.get("shuffle") != dtype.itemsize:
        raise CorruptDataError(f"lossless blob: shuffle {meta.get('shuffle')!r} does not fit {dtype}", **where)
    buf = memoryview(np.ascontiguousarray(data)).cast("B")
    # max_length bounds the output: a damaged stream cannot balloon in memory
    try:
        if codec == "lzma":
            d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_lzma_filters(n))
            raw = d.decompress(buf, max_length=n)
            extra = d.decompress(b"", max_length=1) if not d.eof and not d.needs_input else b""
            complete = d.eof or (len(raw) == n and not extra)
        elif codec == "zlib":
            d = zlib.decompressobj()
            raw = d.decompress(buf, n)
            extra = d.unconsumed_tail
            complete = d.eof
        else:
            raise CorruptDataError(f"lossless blob: unknown codec {codec!r}", **where)
    except (lzma.LZMAError, zlib.error) as exc:
        raise CorruptDataError(f"{codec} stream damaged: {exc}", **where) from None
    if len(raw) != n or extra or not complete:
        raise CorruptDataError(f"{codec} stream gives {len(raw)} bytes, expected {n}", **where)
    return _unshuffle(np.frombuffer(raw, np.uint8), dtype).reshape(shape)


_TRIM_AT = 1 << 20  # after coding a blob this large, hand freed heap pages back


def _trim_heap() -> None:
    """Return free heap memory to the OS (glibc ``malloc_trim``; no-op elsewhere).

    A big blob's block temporaries (4M-element float64/int32 arrays, under
    glibc's 32 MiB mmap threshold) come from the per-thread malloc arenas;
    freed, they stay resident as fragments. Measured on the VGG-16-sized
    model (two worker threads): ~100-150 MB of peak RSS, at ~1 ms a call.
    """
    fn = _malloc_trim()
    if fn is not None:
        fn(0)


@functools.cache
def _malloc_trim():
    try:
        import ctypes  # noqa: PLC0415

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _engine():
    from .engine import blob as engine_blob  # noqa: PLC0415  (engine loads numpy-only code)

    return engine_blob


_ONE_LEVEL_CRC_BYTES = 1 << 20  # bytes of a one-level blob's values checksummed at a time


def _one_level(rec: BlobRecord, size: int):
    """The values of a record that stores no labels, as one period (float32,
    1-D), else None.

    A one-entry ``exact``/``shared`` codebook, or ``shared+sparse`` with
    nothing pruned (``p_method`` ``all``), restores its entry everywhere; a
    ``grid`` blob with ``nsym`` 1 its one level, or with dependent
    quantisation (``dq_seg``) the one segment every segment repeats. Such a
    record is a few bytes whatever size it claims, so its CRC32 is checked
    (:func:`_periodic_crc`) before the output is allocated. Checked as the
    decoder checks it (codebook, level, label count, no label stream).
    """
    meta, parts = rec.meta, rec.parts
    if rec.method not in ("exact", "shared", "shared+sparse", "grid") or "coder" in meta:
        return None  # (a rANS stream spends bits on every value, bounded by its check)
    eng = _engine()
    if rec.method == "shared+sparse":
        if meta.get("p_method") != "all" or eng.codebook_of(meta, parts).size != 1:
            return None
        try:
            if int(meta["p_count"]) != size or int(meta.get("nlab", -1)) != size:
                return None  # (the decoder refuses these)
        except (KeyError, TypeError, ValueError):
            return None
        book = eng._checked_codebook("shared", meta, parts, size)
    else:
        book = eng._checked_codebook(rec.method, meta, parts, size)
    if book.size != 1:
        return None
    eng._label_stream(meta, parts, 1)  # refuses a label stream beside one level
    if rec.method == "grid" and "dq_seg" in meta:
        from .engine import trellis  # noqa: PLC0415

        seg = eng._dq_seg(meta)
        step, qmin = float.fromhex(str(meta["step"])), int(meta["qmin"])
        return trellis.values(np.zeros(min(seg, size), np.uint8), qmin, step, start=0, seg=seg)
    return book[:1]


def _periodic_crc(period: np.ndarray, n: int) -> int:
    """:func:`crc32_of` of the ``n`` values that repeat ``period`` (1-D), a
    tile of whole periods at a time: nothing of size ``n`` is built."""
    reps = max(1, _ONE_LEVEL_CRC_BYTES // max(period.nbytes, 1))
    tile = np.ascontiguousarray(np.tile(period, reps))
    whole, rest = divmod(n, tile.size)
    crc = 0
    buf = memoryview(tile).cast("B")
    for _ in range(whole):
        crc = zlib.crc32(buf, crc)
    return zlib.crc32(memoryview(tile[:rest]).cast("B"), crc) & 0xFFFFFFFF


def decode_record(rec: BlobRecord, *, xp=np, where: dict | None = None) -> np.ndarray:
    """Decode one record to its restored host array and check its CRC32.

    What can be checked without the output is checked before it is
    allocated: the codec's shape against the record's, and the CRC32 of a
    record that stores no labels (:func:`_one_level`), which a forged index
    could otherwise make claim 2**31 values in a few bytes.

    Raises
    ------
    CorruptDataError
        The streams do not decode, or decode to another array than was stored.
    """
    where = where or {}
    dtype = np.dtype(rec.dtype)
    if rec.size > _MAX_ELEMENTS:
        raise CorruptDataError(f"blob claims {rec.size} elements", **where)
    if rec.method == LOSSLESS:
        out = _decode_lossless(rec.meta, rec.parts, rec.shape, dtype, where)
    else:
        try:
            eng = _engine()
            n = math.prod(eng._parse_shape(rec.meta))
            if n != rec.size:
                raise CorruptDataError(f"the codec's shape holds {n} values, the record {rec.size}")
            period = _one_level(rec, n)
            if period is not None and _periodic_crc(period.astype(dtype), n) != rec.crc32:
                raise CorruptDataError("CRC32 of the restored blob does not match")
            y = eng.decode_blob(rec.method, rec.meta, rec.parts, xp=xp)
        except CorruptDataError as exc:
            raise CorruptDataError(exc.reason, **where) from None
        except (ValueError, KeyError, IndexError, TypeError, OverflowError) as exc:
            raise CorruptDataError(f"{rec.method} stream does not decode: {exc}", **where) from None
        y = to_host(y)
        if y.size != rec.size:
            raise CorruptDataError(f"decoded {y.size} values, expected {rec.size}", **where)
        out = y.reshape(rec.shape).astype(dtype, copy=False)
    if crc32_of(out) != rec.crc32:
        raise CorruptDataError("CRC32 of the restored blob does not match", **where)
    return out


# ---------------------------------------------------------------- planning


def _positions(model: Model) -> dict:
    """First conv and last fc weight (deep-compression prunes them less)."""
    from .config import blob_kind  # noqa: PLC0415

    conv = [i for i, lay in enumerate(model.layers)
            if lay.blobs and blob_kind(lay.type, 0, lay.blobs[0].shape) == "conv"]
    fc = [i for i, lay in enumerate(model.layers)
          if lay.blobs and blob_kind(lay.type, 0, lay.blobs[0].shape) == "fc"]
    pos = {}
    if conv:
        pos[conv[0]] = "first_conv"
    if fc:
        pos[fc[-1]] = "last_fc"
    return pos


def _lossy(x, plan, xp, where):
    """Encode ``x`` under ``plan``; return ((method, meta, parts), bits, sqnr, crc32, zeros).

    The stored streams are decoded back block by block (never the whole
    restored blob at once): the CRC32 and zero count of the restored array
    (in ``x``'s dtype) and the weight SQNR come from that decode, with the
    same block order and arithmetic as :func:`crc32_of`, :func:`_count_zeros`
    and :func:`sqnr_db`, so the figures are those of the whole array.
    """
    eng = _engine()
    f = x.reshape(-1)
    if not all(np.isfinite(f[s : s + _BLOCK]).all() for s in range(0, f.size, _BLOCK)):
        raise NonFiniteWeightsError("NaN or Inf weights cannot be quantised", **where)
    xd = x if x.dtype == np.float32 else x.astype(np.float32)
    xin = xd if xp is np else xp.asarray(xd)
    if plan.step is not None:
        if plan.prune:
            raise ValueError("the grid method takes no pruning")
        from .engine.uniform import floored_step  # noqa: PLC0415

        if plan.dq and plan.sqnr_target is not None:
            # the SQNR floor is the plain grid's: apply it to the plain-equivalent step
            from .config import DQ_STEP_SCALE  # noqa: PLC0415

            s = floored_step(xd, plan.step / DQ_STEP_SCALE, plan.sqnr_target) * DQ_STEP_SCALE
        else:
            s = floored_step(xd, plan.step, plan.sqnr_target)
        enc = eng.encode_blob(xin, step=s, dq=plan.dq, xp=xp)
        bits = int(enc.meta.get("bits", 32))
    else:
        bits = plan.bits if plan.bits is not None else _search_bits(xin, plan, xp)
        enc = eng.encode_blob(xin, bits=bits, prune=plan.prune, init=plan.init, xp=xp)
    del xin
    parts = {k: to_host(v) for k, v in enc.parts.items()}
    xf = xd.reshape(-1)
    crc, zeros, sig, err, s = 0, 0, 0.0, 0.0, 0
    for yb in eng.iter_decode_blob(enc.method, enc.meta, parts, block=_BLOCK):
        a = xf[s : s + yb.size]
        d = a - yb
        sig += float(np.dot(a, a))
        err += float(np.dot(d, d))
        del d
        ob = yb.astype(x.dtype, copy=False)
        crc = zlib.crc32(memoryview(ob).cast("B"), crc)
        zeros += int(np.count_nonzero(ob == 0))
        s += yb.size
    if s != f.size:
        raise CorruptDataError(f"decoded {s} values, expected {f.size}", **where)
    if err == 0.0:
        sq = math.inf
    elif sig == 0.0:
        sq = -math.inf
    else:
        sq = 10.0 * math.log10(sig / err)
    return (enc.method, dict(enc.meta), parts), bits, sq, crc & 0xFFFFFFFF, zeros


def _search_bits(xin, plan, xp) -> int:
    """Smallest width in ``[min_bits, max_bits]`` whose weight SQNR reaches the target.

    Uses the clustering alone (no coding); each bit buys ~6 dB for a
    uniform-ish codebook, so one probe predicts the width and a step or two
    confirms it. Pruning (if asked) is applied first, as the encoder will.
    """
    from .engine import kmeans  # noqa: PLC0415
    from .engine.prune import prune_mask  # noqa: PLC0415

    lo, hi, target = plan.min_bits, plan.max_bits, plan.sqnr_target
    n = int(xin.size)
    if n > _SEARCH_SAMPLE:
        # a regular subsample predicts a big blob's SQNR to a fraction of a dB
        # at a fraction of the cost; the final SQNR is measured on the whole blob
        xin = xp.ascontiguousarray(xin.reshape(-1)[:: -(-n // _SEARCH_SAMPLE)])
    mask = prune_mask(xin, sparsity=plan.prune, xp=xp) if plan.prune > 0 else None
    tried: dict[int, float] = {}

    def at(b):
        if b not in tried:
            sw = kmeans.share_weights(xin, k=1 << b, init=plan.init, keep_zero=False,
                                      mask=mask, xp=xp)
            tried[b] = math.inf if sw.exact else float(sw.sqnr_db)
        return tried[b]

    b0 = b = min(max(7, lo), hi)
    s = at(b)
    if s < target:
        b = min(hi, b + max(1, math.ceil((target - s) / 6.02)))
        while at(b) < target and b < hi:
            b += 1
        while b - 1 > b0 and at(b - 1) >= target:  # the jump may have overshot
            b -= 1
    else:
        while b > lo and at(b - 1) >= target:
            b -= 1
    ok = [bb for bb, ss in tried.items() if ss >= target]
    return min(ok) if ok else max(tried)


def _round_other(arr: np.ndarray, bits: int) -> np.ndarray:
    """``arr`` rounded to ``bits`` mantissa bits (:func:`~caffecompress.engine.floatpack.round_mantissa`),
    or ``arr`` itself where that changes nothing."""
    from .engine.floatpack import round_mantissa  # noqa: PLC0415

    y = round_mantissa(arr, bits)
    return arr if np.array_equal(y.view(np.uint32), np.ascontiguousarray(arr).view(np.uint32)) else y


def _rounded_others(model: Model, settings: Settings, positions: dict) -> Model:
    """A shallow copy of ``model`` whose blobs planned with a mantissa width are
    rounded to it (the fidelity pass measures the model as it will be stored)."""
    layers = list(model.layers)
    for li, lay in enumerate(model.layers):
        arrs = None
        for bi, arr in enumerate(lay.blobs):
            a = None if arr is None else np.asarray(arr)
            if a is None or a.dtype != np.float32:
                continue
            plan = plan_blob(settings, lay.name, lay.type, bi, a.shape, position=positions.get(li, ""))
            if plan.lossless and plan.mantissa is not None:
                y = _round_other(a, plan.mantissa)
                if y is not a:
                    arrs = arrs or list(lay.blobs)
                    arrs[bi] = y
        if arrs is not None:
            layers[li] = dataclasses.replace(lay, blobs=arrs)
    return dataclasses.replace(model, layers=layers)


class _StoreLossless(Exception):
    """Internal: the engine found no smaller coding than the raw floats."""


def _settings_dict(s: Settings, fidelity=None) -> dict:
    d = {
        "preset": s.preset, "bits": s.bits, "conv_bits": s.conv_bits, "fc_bits": s.fc_bits,
        "prune": s.prune, "init": s.init, "sqnr_target": s.sqnr_target,
        "min_size": s.min_size, "layers": s.layers, "backend": s.backend,
        "mode": "data-free",
    }
    if fidelity is not None:
        rec = dict(fidelity.record)
        d["allocation"] = rec.pop("allocation")
        d["mode"] = rec["mode"]
        d["fidelity"] = rec
        # the allocation's widths are its own choice, not the user's overrides
        d["layers"] = {k: v for k, v in s.layers.items() if k not in fidelity.bits}
    return d


OPENCV_NOTICE = ("OpenCV 4.x not found: compressing data-free (pip install 'caffecompress[verify]' "
                 "for the fidelity-targeted default)")
NO_PROTOTXT_NOTICE = "no deploy prototxt: compressing data-free (pass --prototxt for the fidelity-targeted default)"


def _fidelity(model: Model, settings: Settings, positions: dict, xp, calib_opts: dict, warn: list):
    """Run the fidelity-targeted allocation when the settings ask for it (else None).

    The default preset targets ``max_error`` (default 0.02) whenever OpenCV
    4.x and the deploy prototxt are there; fixed widths (``--bits``) with
    calibration still get error-compensating rounding. Without OpenCV or a
    prototxt the default falls back to the data-free rule with one notice,
    and an explicit ``max_error`` is an error.
    """
    from .config import DEFAULT_MAX_ERROR, OTHER_MANTISSA_BITS  # noqa: PLC0415
    from .errors import FormatError, MissingDependencyError, SchemaMismatchError  # noqa: PLC0415

    if settings.preset != "default" or settings.data_free:
        return None
    explicit = settings.max_error is not None or "calib" in calib_opts
    if not model.prototxt:
        if explicit:
            raise SchemaMismatchError("fidelity-targeted compression needs the deploy prototxt (--prototxt)",
                                      path=model.source)
        warn.append(NO_PROTOTXT_NOTICE)
        return None
    from . import runtime  # noqa: PLC0415

    if not runtime.available():
        if explicit:
            raise MissingDependencyError(
                "fidelity-targeted compression (max_error, calib) needs OpenCV 4.x: "
                "pip install 'caffecompress[verify]' (opencv-python-headless<5)")
        warn.append(OPENCV_NOTICE)
        return None
    from .caffe.graph import net_graph  # noqa: PLC0415

    try:
        graph = net_graph(model.prototxt, path=model.source)
    except FormatError as exc:
        if explicit:
            raise
        warn.append(f"the deploy prototxt cannot be run ({exc.reason}): compressing data-free")
        return None
    if not graph.inputs:
        if explicit:
            raise SchemaMismatchError("fidelity-targeted compression needs the prototxt's input shape "
                                      "(Input layer, input_shape or input_dim)", path=model.source)
        warn.append("the deploy prototxt declares no input shape: compressing data-free")
        return None
    lossy = []
    for li, lay in enumerate(model.layers):
        if not lay.blobs or lay.blobs[0] is None:
            continue
        pname = lay.param_names[0] if lay.param_names else ""
        plan = plan_blob(settings, lay.name, lay.type, 0, tuple(np.shape(lay.blobs[0])),
                         position=positions.get(li, ""))
        # pruned blobs and shared parameters keep the data-free path
        if plan.lossless or plan.prune > 0 or pname:
            continue
        if not np.isfinite(np.asarray(lay.blobs[0])).all():
            continue
        lossy.append((li, plan))
    if not lossy:
        return None
    fixed = all(p.bits is not None for _, p in lossy)
    target = None if fixed and settings.max_error is None else (settings.max_error or DEFAULT_MAX_ERROR)
    from .allocate import allocate  # noqa: PLC0415
    from .heap import kept_heap  # noqa: PLC0415

    with kept_heap():  # OpenCV's repeated net loads re-fault fresh pages otherwise
        return allocate(model, lossy, target, xp=xp, calib=calib_opts.get("calib"), mean=calib_opts.get("mean"),
                        scale=calib_opts.get("scale"), swap_rb=bool(calib_opts.get("swap_rb", False)),
                        rows=calib_opts.get("calib_rows"), log=calib_opts.get("log"), graph=graph,
                        overlap=settings.backend == "hybrid", base=_rounded_others(model, settings, positions),
                        mantissa=OTHER_MANTISSA_BITS)


def _release_replaced(model: Model, kept: Model) -> None:
    """Drop ``model``'s arrays that ``kept`` (its fidelity-pass copy) replaced.

    With ``release`` the caller gave ``model`` up; what is coded from here on
    is the copy, so the float weights it replaced (as large as the model)
    need not stay alive beside it.
    """
    for old, new in zip(model.layers, kept.layers):
        if old is new or old.blobs is new.blobs:
            continue  # the same arrays: released as they are coded
        for i, arr in enumerate(old.blobs):
            if i < len(new.blobs) and new.blobs[i] is not arr:
                old.blobs[i] = None


def _resolve_backend(name: str):
    """Array module for lossy blobs; ``auto`` falls back to NumPy."""
    if name == "auto":
        return get_xp("gpu") if gpu_available() else np
    if name in ("gpu", "hybrid"):
        try:
            return get_xp(name)
        except BackendUnavailableError as exc:
            raise BackendUnavailableError(f"--backend {name}: {exc}") from None
    return get_xp(name)


def compress(
    model: Model,
    preset: str | None = "default",
    *,
    config=None,
    progress=None,
    jobs: int | None = None,
    release: bool = False,
    **overrides,
) -> CompressedModel:
    """Compress a :class:`~caffecompress.model.Model`.

    Parameters
    ----------
    model : Model or path
        As returned by :func:`caffecompress.read_caffemodel` (a path is read
        with it, without prototxt).
    preset : {"default", "lossless", "deep-compression"} or None
        None takes the preset from ``config`` (else ``default``).
    config : path or dict, optional
        TOML file (or its parsed dict) with settings and ``[layers]`` overrides.
    progress : callable, optional
        Called as ``progress(n_done_elements, n_total_elements)``.
    jobs : int, optional
        Worker threads (default: 2; NumPy, LZMA and zlib release the GIL).
        Blobs of 4M elements and more are coded after the others, one at a
        time (peak memory).
    release : bool
        Drop each blob from ``model`` once it is coded (the CLI does, to keep
        peak memory near the model's size); ``model`` is unusable afterwards.
    **overrides
        Any :class:`~caffecompress.config.Settings` field: ``bits``,
        ``conv_bits``, ``fc_bits``, ``prune``, ``init``, ``sqnr_target``,
        ``min_size``, ``layers`` ({name_or_glob: {bits, prune, init,
        lossless}}), ``backend`` (``cpu | gpu | hybrid | auto``).

    Returns
    -------
    CompressedModel

    Raises
    ------
    BackendUnavailableError
        ``backend="gpu"`` or ``"hybrid"`` without a usable GPU.
    """
    t0 = time.perf_counter()
    if isinstance(model, (str, os.PathLike)):
        from .caffe import read_caffemodel  # noqa: PLC0415

        model, release = read_caffemodel(model), True
    check_model(model)
    calib_opts = {k: overrides.pop(k) for k in ("calib", "mean", "scale", "swap_rb", "calib_rows", "log")
                  if k in overrides}
    settings = overrides.pop("settings", None) or make_settings(preset, config, **overrides)
    xp = _resolve_backend(settings.backend)
    positions = _positions(model)
    src = model.source
    fid_warn: list[str] = []
    fidelity = _fidelity(model, settings, positions, xp, calib_opts, fid_warn)
    if fidelity is not None:
        if release:
            _release_replaced(model, fidelity.model)
        model = fidelity.model
        chosen = {n: ({"step": fidelity.steps[n], "dq": n in fidelity.dq} if n in fidelity.steps else {"bits": b})
                  for n, b in fidelity.bits.items()}
        settings = dataclasses.replace(settings, layers={**chosen, **settings.layers})

    records: list[BlobRecord | None] = []
    tasks = []  # (record slot, layer idx, blob idx, plan or None, owner slot)
    owners: dict[str, tuple] = {}  # param name -> (record slot, array)
    layers = []
    sizes = []
    total = 0
    for li, lay in enumerate(model.layers):
        layers.append((lay.name, lay.type, _layer_extra(lay)))
        for bi, arr in enumerate(lay.blobs):
            if not isinstance(arr, Levels):  # (the fidelity pass's; dense when coded)
                arr = np.asarray(arr)
            pname = lay.param_names[bi] if bi < len(lay.param_names) else ""
            slot = len(records)
            records.append(None)
            sizes.append(arr.size)
            if pname and pname in owners:
                oslot, oarr = owners[pname]
                if oarr.shape == arr.shape and oarr.dtype == arr.dtype and np.array_equal(
                    oarr.view(np.uint8), arr.view(np.uint8)
                ):
                    tasks.append((slot, li, bi, None, oslot))
                    continue
            if pname and pname not in owners:
                owners[pname] = (slot, arr)
            plan = plan_blob(settings, lay.name, lay.type, bi, tuple(arr.shape),
                             position=positions.get(li, ""))
            tasks.append((slot, li, bi, plan, -1))
            total += arr.size
    owners.clear()

    warn: list[str] = list(fid_warn)
    if settings.preset == "deep-compression":
        warn.append(DEEP_COMPRESSION_WARNING)

    def work(task):
        slot, li, bi, plan, oslot = task
        lay = model.layers[li]
        arr = np.asarray(lay.blobs[bi])
        where = {"path": src, "layer": lay.name}
        shape = tuple(int(s) for s in arr.shape)
        if plan is None:  # CRC and stats copied from the owner below
            return BlobRecord(li, bi, shape, arr.dtype.str, "ref", {}, {}, 0, shared=oslot), None
        out = _one(arr, shape, li, bi, plan, where)
        if arr.size >= _TRIM_AT:
            _trim_heap()
        if release:
            # the caller gave the arrays up: drop this one as soon as it is
            # coded (blobs finish out of order across the two pools; waiting
            # for the in-order loop below kept a 400 MB fc blob alive while
            # the next big one was coded)
            del arr
            lay.blobs[bi] = None
        return out

    def _one(arr, shape, li, bi, plan, where):
        msg = None
        if not plan.lossless:
            try:
                (method, meta, parts), bits, s, crc, zeros = _lossy(arr, plan, xp, where)
                if method == "raw":  # coding would not shrink it: store the exact bytes
                    raise _StoreLossless
                sp = zeros / max(arr.size, 1)
                return BlobRecord(li, bi, shape, arr.dtype.str, method, meta, parts,
                                  crc, kind=plan.kind, bits=int(bits),
                                  sparsity=sp, sqnr=s), None
            except NonFiniteWeightsError as exc:
                msg = f"{exc}; stored losslessly"
            except _StoreLossless:
                pass
        s = math.inf
        if plan.mantissa is not None and arr.dtype == np.float32:
            y = _round_other(arr, plan.mantissa)
            if y is not arr:
                s = sqnr_db(arr, y)
                arr = y
        meta, parts = _encode_lossless(arr)
        sp = _count_zeros(arr) / max(arr.size, 1)
        return BlobRecord(li, bi, shape, arr.dtype.str, LOSSLESS, meta, parts,
                          crc32_of(arr), kind=plan.kind, sparsity=sp, sqnr=s), msg

    done = 0
    n_jobs = jobs or 2
    # a GPU backend serialises lossy blobs on the device; "hybrid" overlaps
    # them with CPU-side work (LZMA of lossless blobs, decode checks, CRCs)
    # of the other blobs through the pool
    if xp is not np and settings.backend != "hybrid":
        n_jobs = 1
    # the blobs under _BIG elements go through the whole pool first; the big
    # ones then go one at a time, alone (peak memory: a big blob's working
    # set never meets another blob's, and most of the model is released by then)
    small = [t for t in tasks if sizes[t[0]] < _BIG]
    with ThreadPoolExecutor(max_workers=max(1, n_jobs)) as small_pool, \
            ThreadPoolExecutor(max_workers=1) as big_pool:
        futs = {t[0]: small_pool.submit(work, t) for t in small}
        first = list(futs.values())

        def big_work(task):
            wait(first)
            return work(task)

        for t in tasks:
            if t[0] not in futs:
                futs[t[0]] = big_pool.submit(big_work, t)
        for task in tasks:
            rec, msg = futs[task[0]].result()
            records[task[0]] = rec
            if msg:
                warn.append(msg)
            if release and task[3] is not None:
                # the caller gave the arrays up: drop each one once coded
                model.layers[task[1]].blobs[task[2]] = None
            if task[3] is not None:
                done += sizes[task[0]]
                if progress is not None:
                    progress(done, total)

    for rec in records:  # a shared blob restores to whatever its owner restores to
        if rec.method == "ref":
            own = records[rec.shared]
            rec.crc32, rec.kind, rec.bits = own.crc32, own.kind, own.bits
            rec.sparsity, rec.sqnr = own.sparsity, own.sqnr
    return CompressedModel(
        layers=layers,
        records=records,
        name=model.name,
        skeleton=bytes(model.skeleton or b""),
        prototxt=model.prototxt,
        format=model.format,
        unmatched=list(model.unmatched),
        source=src,
        settings=_settings_dict(settings, fidelity),
        warnings=warn,
        seconds=time.perf_counter() - t0,
    )


def restore(cm: CompressedModel, *, xp=np, source: str | None = None) -> Model:
    """Decode every blob of ``cm`` into a dense :class:`Model` (CRC-checked)."""
    arrays: list[np.ndarray | None] = [None] * len(cm.records)
    for i, rec in enumerate(cm.records):
        where = {"path": source or cm.source, "layer": _layer_name(cm, rec.layer)}
        if rec.method == "ref":
            if not 0 <= rec.shared < i or arrays[rec.shared] is None:
                raise CorruptDataError(f"shared blob points at record {rec.shared}", **where)
            a = arrays[rec.shared]
            if a.shape != tuple(rec.shape) or crc32_of(a) != rec.crc32:
                raise CorruptDataError("shared blob does not match its owner", **where)
            arrays[i] = a.copy()
        else:
            arrays[i] = decode_record(rec, xp=xp, where=where)
    blobs: list[list] = [[] for _ in cm.layers]
    for rec, a in zip(cm.records, arrays):
        if not 0 <= rec.layer < len(cm.layers) or rec.index != len(blobs[rec.layer]):
            raise CorruptDataError(f"blob ({rec.layer}, {rec.index}) out of order",
                                   path=source or cm.source)
        blobs[rec.layer].append(a)
    layers = [_make_layer(name, typ, blobs[i], extra) for i, (name, typ, extra) in enumerate(cm.layers)]
    return Model(
        layers=layers,
        name=cm.name,
        skeleton=cm.skeleton,
        prototxt=cm.prototxt,
        source=source or cm.source,
        format=cm.format,
        unmatched=list(cm.unmatched),
    )


def _layer_extra(lay: Layer) -> dict:
    """Every Layer field besides name, type and blobs (param_names, storage, ...)."""
    return {f.name: list(getattr(lay, f.name)) for f in dataclasses.fields(Layer)
            if f.name not in ("name", "type", "blobs")}


def _make_layer(name, typ, blobs, extra: dict) -> Layer:
    known = {f.name for f in dataclasses.fields(Layer)}
    kw = {k: list(v) for k, v in extra.items() if k in known}
    return Layer(name, typ, blobs, **kw)


def _layer_name(cm: CompressedModel, i: int):
    return cm.layers[i][0] if 0 <= i < len(cm.layers) else f"#{i}"


def check_model(model) -> None:
    """Raise FormatError when ``model`` is not a Model."""
    if not isinstance(model, Model):
        raise FormatError(f"expected a caffecompress.Model, got {type(model).__name__}")

