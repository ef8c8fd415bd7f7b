"""The compressed file: versioned HDF5, format ``caffecompress`` 2.3 (1.x read forever).

Layout: one dataset, three root attributes, nothing else::

    /          attrs: format = "caffecompress"   (fixed-length string)
                      format_version = "2.3"      (fixed-length string: the
                                                   lowest 2.x its blobs need)
                      index = uint64[3]           (offset, length, CRC32 of the index block)
    /payload   uint8[N], contiguous: every blob's streams, concatenated
               (records in order, each record's parts by name), then the
               index block

The index block (2.x) is one raw LZMA2 stream (filters
:data:`_BLOCK_FILTERS`: preset 9, 1 MiB dictionary, lc 3, lp 0, pb 0) of a
12-byte header (uint32 little-endian: the prototxt's length, 0xFFFFFFFF
when there is none; the skeleton's length; the JSON index's length), the
deploy prototxt (UTF-8, verbatim), the skeleton (the caffemodel's
NetParameter without blob values) and the JSON index. The three share one
LZMA model, so the layer names they all repeat cost once; its inflated size
is bounded (1032x the block, as deflate's limit, and 16 MiB a text).

The JSON index holds the model description (name, source format,
settings, unmatched layers), one entry per layer (name, type,
``param_names`` and the other Layer fields) and one per blob: method, kind,
dtype, shape, CRC32 of the restored array, the blob it shares (for shared
parameters), bits, sparsity, SQNR, the codec's meta, and its parts as
``{name: [length, dtype]}``: a part's offset is the sum of the lengths
before it (records in order, parts by name) and the parts fill the payload
up to the index block exactly. ``layout`` is a CRC32 over the layer entries
and each blob's position, shape, dtype, CRC32 and owner
(:func:`~caffecompress.indexschema.layout_crc`).

Format 1.x (written on request, ``save(..., format_major=1)``, for readers
before 2.0; read forever): the index is deflated JSON at the end of the
payload with a ``streams`` object (the deflated skeleton and prototxt) and
part entries ``[offset, length, dtype, count, CRC32]``; ``format_version``
is the lowest 1.x its blobs need. 2.0 dropped the per-part CRC32s and
offsets and moved the texts into the block: on the zoo's fidelity-targeted
files that is 0.2-2.6 % of the file (mtcnn-retrained/det4 1.6 %,
ultraface 2.6 %), every bit of it overhead.

A reader validates the whole index against its schema
(:mod:`caffecompress.indexschema`) and against the skeleton's blob
placeholders before it decodes or allocates anything on the index's word.

Why a single dataset: HDF5 spends ~270-400 bytes of object header per
dataset (more for compound types and filter pipelines); with the index as
three compound tables a 15 KB deep-compressed HyperLPR net paid 13 % of its
size in HDF5 metadata, with one dataset it pays ~4 %. The index is data: it
counts in the file's dataset storage and is reported by ``info``.

Integrity: files are written with ``libver=('v110', 'v110')`` so HDF5
checksums all metadata (the attributes included); the index block (with the
skeleton and prototxt) is covered by its CRC32 in the ``index`` attribute
and every restored blob by the CRC32 of its array (1.x also checks each
stream's own CRC32), so a damaged file raises
:class:`~caffecompress.errors.CorruptDataError` and is never decoded into
other weights: the decoders refuse what they cannot decode (the fuzz
contract) and a stream that decodes to other values fails its blob's CRC32.
One layer is read by slicing the payload.

Blob methods (``method`` of a blob entry; the codec's ``meta`` and streams
are those of :mod:`caffecompress.engine.blob`): ``lossless``, ``ref`` (a
shared parameter), ``raw``, ``exact``, ``shared``, ``shared+sparse`` (1.0),
and, since 1.1, ``grid``: a uniform grid, meta ``step`` (a float64 in
``float.hex`` form, > 0), ``qmin`` and ``nsym`` (indices ``qmin .. qmin +
nsym - 1`` within +-2047), ``bits`` (informative), ``nlab`` and the label
stream's ``l_`` meta; streams ``l_lengths``, ``l_payload``, ``l_offsets``
(one Huffman code, as for ``shared``) and no codebook. A value restores as
``float32((qmin + label) * step)``, the product taken in float64.

Since 1.2 a ``grid`` blob may carry, in its meta:

- ``dq_seg`` (an int in 1..2**20): the indices are dependent-quantisation
  indices ``k`` (:mod:`caffecompress.engine.trellis`): a 4-state machine,
  reset to state 0 every ``dq_seg`` values, starts in state 0; in states 0
  and 1 the multiple is ``m = 2k``, in 2 and 3 ``m = 2k - sign(k)``; the next
  state is ``[[0, 2], [2, 0], [1, 3], [3, 1]][state][k & 1]``; the value
  restores as ``float32(m * step)``;
- ``coder = "rans"`` and ``seg`` (an int in 1..2**20) in place of the ``l_``
  meta and streams: the labels are coded by the context-adaptive
  interleaved rANS coder of :mod:`caffecompress.engine.rans` (lanes of
  ``ceil(n / ceil(n / seg))`` values, groups of 256 lanes, each with its own
  model (4 contexts, the previous index's class; 16 with ``ctx = 1``, see
  2.2) and its own word stream; 16-bit frequency tables
  renormalised every 16 steps; the module docstring gives every constant),
  streams ``a_w`` (uint16 words, groups in order), ``a_n`` (uint32 words per
  group) and ``a_x`` (uint32 final state per lane); for alphabets over 256
  labels meta ``tok = 1``: the coded symbols are magnitude-class tokens of
  the indices, their raw bits in ``a_e`` (uint8, each group's bits
  byte-aligned) with ``a_m`` (uint32 bytes per group).

Since 2.2 a rANS-coded ``grid`` blob may carry meta ``ctx = 1``: its
contexts are the 16 classes of a running magnitude of the indices before
it in its lane (:mod:`caffecompress.engine.rans` gives the rule and its
constants), not the class of the index before it (``ctx`` absent or 0).
A 1.x file never holds it: ``save(..., format_major=1)`` recodes such
labels with the older rule.

Since 2.3 a packed codebook (``cb_n``) may be stored as exp-Golomb-coded
gaps between the float keys of its sorted levels
(:mod:`caffecompress.engine.levelpack`): meta ``cb_lmbits`` (the mantissa
bits every level fits in), ``cb_lbase`` (the first key) and ``cb_lk`` (the
code's order) in place of ``cb_ebase``, ``cb_ebits`` and ``cb_mbits``; the
``codebook`` part is the uint8 bit string. The writer takes it where it is
shorter than the float fields, which it is for the fidelity-targeted
default's rounded k-means levels (about half). A 1.x file stores such
codebooks as float fields.

Since 1.3 a ``lossless`` blob of float32 values may use codec ``fpack``
(:mod:`caffecompress.engine.floatpack`; at most 2**20 values): meta
``ebase`` (0..255), ``ebits`` (0..8), ``mbits`` (0..23), stream ``data``:
one bit string, most significant bit first, zero-padded to a byte, of the
``n`` sign bits, then ``n`` exponent offsets of ``ebits`` bits each, then
``n`` mantissa heads of ``mbits`` bits; value ``i`` restores as the float32
of bits ``sign << 31 | (ebase + offset) << 23 | head << (23 - mbits)``
(an exponent past 255 is a damaged stream). It is exact: the writer takes
it where it is shorter than LZMA, which is most small blobs, and all of
those whose mantissas were rounded (the lossy presets round the blobs of
kind ``other`` to :data:`caffecompress.config.OTHER_MANTISSA_BITS` bits).

Since 2.1 (1.4 in the 1.x layout) the codebook of an ``exact``, ``shared``
or ``shared+sparse`` blob may be stored as packed fields: meta ``cb_n``
(1..4096 levels), ``cb_ebase``, ``cb_ebits``, ``cb_mbits`` as ``fpack``'s,
the ``codebook`` part a uint8 ``fpack`` stream of the levels. The writer
takes it where it is shorter than the floats; the fidelity-targeted
default rounds its k-means levels to ``bits + 10`` mantissa bits
(:data:`caffecompress.config.CODEBOOK_MANTISSA_EXTRA`), where it always is.

A file is written with the lowest version its blobs need (1.x: 1.0 without
``grid``, 1.1 with plain ``grid`` blobs only, 1.2 without ``fpack``, 1.3
without packed codebooks; 2.x: 2.0 without packed codebooks, 2.1 without
``ctx``, 2.2 without key-gap codebooks), so older readers keep reading
what they can. 2.0 holds every
method of 1.3. A 2.1 reader given a 2.2 file fails on its first ``ctx``
blob with :class:`~caffecompress.errors.CorruptDataError` (the stream does
not end in its start state), and a 2.2 reader given a 2.3 file on its first
key-gap codebook (the float-field meta is missing), never with other
weights.

A reader accepts any 1.x and 2.x file and refuses a newer major version.
"""

from __future__ import annotations

import dataclasses
import json
import lzma
import math
import os
import re
import struct
import zlib
from pathlib import Path

import h5py
import numpy as np

from .caffe.skeleton import skeleton_blobs
from .caffe.wire import WireError
from .errors import (
    CaffeCompressError,
    CorruptDataError,
    FormatError,
    OutputExistsError,
    TruncatedFileError,
    UnsupportedVersionError,
)
from .fileio import atomic_write, same_file
from .indexschema import check_index, check_layout, check_skeleton, layout_crc
from .engine.blob import legacy_parts
from .model import Model
from .pipeline import _MAX_ELEMENTS, BlobRecord, CompressedModel, restore

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "save",
    "open_compressed",
    "decompress",
    "read_layer",
    "file_info",
    "caffemodel_bytes",
    "is_compressed",
    "check_output_path",
    "atomic_write",
]

FORMAT = "caffecompress"
FORMAT_VERSION = (2, 3)
#: The minor version each method first appeared in (a file is written with
#: the lowest version its blobs need).
_METHOD_MINOR = {"grid": 1}


def _record_minor(r, major: int = 1) -> int:
    """The format minor version a record needs (in a file of ``major``)."""
    packed_book = "cb_n" in r.meta
    if major >= 2:
        if "cb_lk" in r.meta:
            return 3
        if r.method == "grid" and r.meta.get("ctx"):
            return 2
        return 1 if packed_book else 0
    if packed_book:
        return 4
    if r.method == "lossless" and r.meta.get("codec") == "fpack":
        return 3
    if r.method == "grid" and ("dq_seg" in r.meta or r.meta.get("coder") == "rans"):
        return 2
    return _METHOD_MINOR.get(r.method, 0)
LIBVER = ("v110", "v110")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_MAX_INDEX = 1 << 28  # inflated index size cap (a damaged length cannot balloon)
# The skeleton (a NetParameter without blob values) and the prototxt are text
# and structure: well under a MB for any real net (16 MiB allowed). Deflate cannot expand more
# than 1032:1, so a stream that inflates further is crafted.
_MAX_TEXT = 1 << 24
_MAX_DEFLATE = 1032
_VERSION = re.compile(r"([0-9]{1,6})\.([0-9]{1,6})")
# what h5py raises on damaged files (B-tree signatures, link traversal, ...)
_H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, OverflowError, IndexError,
              AttributeError, SystemError)


def _crc(b) -> int:
    return zlib.crc32(b) & 0xFFFFFFFF


def _num(v: float):
    """JSON-safe float (inf/nan as strings)."""
    v = float(v)
    return v if math.isfinite(v) else repr(v)


def _unnum(v) -> float:
    return float(v)


# ------------------------------------------------------------------ writing


def check_output_path(path, *, inputs=(), force=False) -> Path:
    """Refuse to write onto an input or onto an existing file without ``force``.

    Raises
    ------
    OutputExistsError
    """
    path = Path(path)
    for src in inputs:
        if src is None:
            continue
        if same_file(path, src):  # also through a symlink or a hard link
            raise OutputExistsError("output would overwrite the input", path=path)
    if path.exists() and not force:
        raise OutputExistsError("output exists (use --force / force=True to overwrite)", path=path)
    if path.is_dir():
        raise OutputExistsError("output is a directory", path=path)
    return path


#: The 2.x index block's LZMA2 filter chain (raw stream: the reader must use the same).
_BLOCK_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9, "dict_size": 1 << 20, "lc": 3, "lp": 0, "pb": 0}]
_NO_PROTOTXT = 0xFFFFFFFF


def index_block(index_json: bytes, skeleton: bytes, prototxt: bytes | None) -> bytes:
    """The 2.x index block: LZMA2 (raw, :data:`_BLOCK_FILTERS`) of a 12-byte
    header (uint32 LE: prototxt length or 0xFFFFFFFF without one, skeleton
    length, index length), the prototxt, the skeleton and the JSON index."""
    head = struct.pack("<III", _NO_PROTOTXT if prototxt is None else len(prototxt), len(skeleton), len(index_json))
    return lzma.compress(head + (prototxt or b"") + skeleton + index_json, format=lzma.FORMAT_RAW,
                         filters=_BLOCK_FILTERS)


def read_index_block(z: bytes) -> tuple[bytes, bytes, bytes | None]:
    """``(index JSON, skeleton, prototxt or None)`` of a 2.x index block.

    Raises
    ------
    ValueError
        The stream does not decode, does not end, or its lengths do not add up.
    """
    # text and JSON: a stream that inflates more than deflate ever could is crafted
    limit = min(12 + 2 * _MAX_TEXT + _MAX_INDEX, max(1 << 16, len(z) * _MAX_DEFLATE))
    try:
        d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_BLOCK_FILTERS)
        raw = d.decompress(z, max_length=limit)
    except lzma.LZMAError as exc:
        raise ValueError(f"LZMA stream damaged: {exc}") from None
    if not d.eof:
        raise ValueError("the block does not end where its stream does" if len(raw) < limit
                         else "the block inflates past its bound")
    if d.unused_data:
        raise ValueError(f"{len(d.unused_data)} bytes after the block's stream")
    if len(raw) < 12:
        raise ValueError("the block is shorter than its header")
    lp, ls, lj = struct.unpack_from("<III", raw)
    lp_ = 0 if lp == _NO_PROTOTXT else lp
    if lp_ > _MAX_TEXT or ls > _MAX_TEXT or lj > _MAX_INDEX or 12 + lp_ + ls + lj != len(raw):
        raise ValueError(f"its lengths ({lp}, {ls}, {lj}) do not fill its {len(raw)} bytes")
    proto = None if lp == _NO_PROTOTXT else raw[12 : 12 + lp]
    return raw[12 + lp_ + ls :], raw[12 + lp_ : 12 + lp_ + ls], proto


def _build(cm: CompressedModel, major: int = FORMAT_VERSION[0]) -> np.ndarray:
    """Concatenate every stream and append the index (2.x: the index block;
    1.x: the deflated JSON index)."""
    pieces: list = []
    offset = 0

    def add(arr) -> list:
        nonlocal offset
        arr = np.ascontiguousarray(np.asarray(arr).reshape(-1))
        b = arr.view(np.uint8)
        # 2.x: the offset follows from the order, and no CRC32 a part
        entry = [int(b.size), arr.dtype.str] if major >= 2 else \
            [offset, int(b.size), arr.dtype.str, int(arr.size), _crc(b)]
        pieces.append(b)
        offset += b.size
        return entry

    if major >= 2:
        streams = None
    else:
        streams = {"skeleton": add(np.frombuffer(zlib.compress(bytes(cm.skeleton), 9), np.uint8))}
        if cm.prototxt is not None:
            streams["prototxt"] = add(np.frombuffer(zlib.compress(cm.prototxt.encode("utf-8"), 9), np.uint8))
    blobs = []
    for r in cm.records:
        if major < 2:  # 1.x readers know one rANS context rule and the float-field codebooks
            r = dataclasses.replace(r, **dict(zip(("meta", "parts"), legacy_parts(r.meta, r.parts))))
        blobs.append({
            "layer": r.layer, "blob": r.index, "method": r.method, "kind": r.kind,
            "dtype": r.dtype, "shape": [int(d) for d in r.shape], "crc32": int(r.crc32),
            "shared": int(r.shared), "bits": int(r.bits), "sparsity": _num(r.sparsity),
            "sqnr": _num(r.sqnr), "meta": r.meta,
            "parts": {name: add(r.parts[name]) for name in sorted(r.parts)},
        })
    index = {
        "model": {
            "name": cm.name, "format": cm.format, "unmatched": list(cm.unmatched),
            "settings": cm.settings, "warnings": list(cm.warnings),
        },
        "layers": [[n, t, extra] for n, t, extra in cm.layers],
        "blobs": blobs,
    }
    if streams is not None:
        index["streams"] = streams
    index["layout"] = layout_crc(json.loads(json.dumps(index, default=_plain)))
    text = json.dumps(index, sort_keys=True, separators=(",", ":"), default=_plain).encode("utf-8")
    if major >= 2:
        z = np.frombuffer(index_block(text, bytes(cm.skeleton),
                                      None if cm.prototxt is None else cm.prototxt.encode("utf-8")), np.uint8)
    else:
        z = np.frombuffer(zlib.compress(text, 9), np.uint8)
    idx = [offset, int(z.size), _crc(z)]
    pieces.append(z)
    return np.concatenate(pieces), idx


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"{v!r} is not a plain scalar")


def save(cm: CompressedModel, path, *, force: bool = False, inputs=(), format_major: int | None = None) -> Path:
    """Write ``cm`` to ``path`` (HDF5, format version 2, or 1 for older readers).

    Written under a temporary name in the same folder and renamed, so an
    interrupted run leaves no partial file under ``path``.

    Parameters
    ----------
    force : bool
        Overwrite an existing ``path``.
    inputs : iterable of paths
        Files the output must not replace (``cm.source`` is always one).
    format_major : {2, 1}, optional
        1 writes the 1.x layout (deflated JSON index, a CRC32 a stream) that
        caffecompress before 2.0 reads, at the lowest 1.x minor its blobs need.

    Raises
    ------
    OutputExistsError
    """
    major = FORMAT_VERSION[0] if format_major is None else int(format_major)
    if major not in (1, FORMAT_VERSION[0]):
        raise ValueError(f"format_major {format_major!r}: 1 or {FORMAT_VERSION[0]}")
    path = check_output_path(path, inputs=[cm.source, *inputs], force=force)
    payload, idx = _build(cm, major)
    minor = max((_record_minor(r, major) for r in cm.records), default=0)

    def write(fobj):
        # meta_block_size=0: no 2 KiB metadata block reserved ahead of the data.
        # fobj is a fileio.GuardedFile: a full disk never fails inside libhdf5
        # (which crashes at close); atomic_write raises the error afterwards
        with h5py.File(fobj, "w", libver=LIBVER, meta_block_size=0) as f:
            f.attrs["format"] = np.bytes_(FORMAT)
            f.attrs["format_version"] = np.bytes_("%d.%d" % (major, minor))
            f.attrs["index"] = np.array(idx, dtype=np.uint64)
            f.create_dataset("payload", data=payload)

    atomic_write(path, write, fileobj=True, size_hint=int(payload.nbytes) + 65536)
    return path


# ------------------------------------------------------------------ reading


def is_compressed(path) -> bool:
    """True when ``path`` starts with the HDF5 signature and says format caffecompress."""
    try:
        with open(path, "rb") as fh:
            if fh.read(8) != _HDF5_MAGIC:
                return False
        with h5py.File(path, "r") as f:
            return _attr_str(f, "format") == FORMAT
    except (OSError, FormatError):
        return False


def _attr_str(f, name, path=None):
    v = f.attrs.get(name)
    if v is None:
        return None
    if isinstance(v, np.ndarray):
        v = v.reshape(-1)[0] if v.size else b""
    if isinstance(v, (bytes, np.bytes_)):
        return bytes(v).decode("utf-8", errors="replace")
    return str(v)


class _Reader:
    """Open file + validated index; payload slices read on demand."""

    def __init__(self, path):
        self.path = str(path)
        p = Path(path)
        if not p.exists():
            raise FormatError("no such file", path=path)
        if p.is_dir():
            raise FormatError("is a directory, not a compressed file", path=path)
        try:
            with open(p, "rb") as fh:
                head = fh.read(8)
        except OSError as exc:
            raise FormatError(f"cannot read: {exc.strerror or exc}", path=path) from None
        if head != _HDF5_MAGIC:
            raise FormatError("not a caffecompress file (no HDF5 signature)", path=path)
        try:
            self.f = h5py.File(p, "r")
        except _H5_ERRORS as exc:
            msg = str(exc)
            if "truncat" in msg.lower() or "eof" in msg.lower():
                raise TruncatedFileError(f"HDF5 file is truncated: {msg}", path=path) from None
            raise CorruptDataError(f"HDF5 file cannot be opened: {msg}", path=path) from None
        try:
            self._load()
        except CaffeCompressError:
            self.f.close()
            raise
        except _H5_ERRORS as exc:  # h5py's own, from a damaged file (never untyped to the caller)
            self.f.close()
            raise self._err(f"HDF5 structure damaged: {exc}") from None
        except BaseException:
            self.f.close()
            raise

    def close(self):
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _err(self, msg, cls=CorruptDataError, **kw):
        return cls(msg, path=self.path, **kw)

    def _load(self):
        f = self.f
        try:
            fmt = _attr_str(f, "format")
            ver = _attr_str(f, "format_version")
        except _H5_ERRORS as exc:
            raise self._err(f"HDF5 metadata damaged: {exc}") from None
        if fmt != FORMAT:
            raise self._err(f"not a caffecompress file (format attribute {fmt!r})", FormatError)
        m = _VERSION.fullmatch(str(ver))
        if m is None:  # int() would take " 1", "+1", "1_0" and non-ASCII digits
            raise self._err(f"bad format_version {ver!r} (expected MAJOR.MINOR)")
        major, minor = int(m.group(1)), int(m.group(2))
        if major > FORMAT_VERSION[0]:
            raise self._err(
                f"written in format version {major}.{minor}; this caffecompress reads "
                f"{FORMAT_VERSION[0]}.x: upgrade it (pip install -U caffecompress)",
                UnsupportedVersionError,
            )
        if major < 1:
            raise self._err(f"unknown format_version {ver!r}", FormatError)
        self.version = (major, minor)
        try:
            if not isinstance(f.get("payload", getlink=True), h5py.HardLink):
                raise self._err("/payload is missing or a link")
            ds = f.get("payload")
            if not isinstance(ds, h5py.Dataset) or ds.ndim != 1 or ds.dtype != np.uint8:
                raise self._err("dataset /payload missing or not uint8[N]")
            dcpl = ds.id.get_create_plist()
            if ds.is_virtual or dcpl.get_external_count():
                raise self._err("/payload keeps its bytes in other files: refused")
            self.payload = ds
            self.size = int(ds.shape[0])
            idx = np.asarray(f.attrs.get("index", []), dtype=np.uint64).reshape(-1)
            if idx.size != 3:
                raise self._err("index attribute missing")
            if idx.dtype.kind not in "ui":
                raise self._err("index attribute is not integers")
            off, ln, crc = (int(v) for v in idx)
            if off < 0 or ln <= 0 or off + ln > self.size:
                raise self._err("index lies outside the payload")
            z = self._read(off, ln)
        except CaffeCompressError:
            raise
        except _H5_ERRORS as exc:
            raise self._err(f"HDF5 data damaged: {exc}") from None
        if _crc(z) != crc:
            raise self._err("index fails its CRC32")
        self.data_bytes = off  # 2.x: every blob stream lies before the index block, in order
        self._texts = None
        try:
            if major >= 2:
                text, skel, proto = read_index_block(z.tobytes())
                self._texts = (skel, proto)
            else:
                d = zlib.decompressobj()
                text = d.decompress(z.tobytes(), _MAX_INDEX)
                if not d.eof:
                    raise ValueError("index stream incomplete")
            self.index = json.loads(text)
        except RecursionError:
            raise self._err("index damaged: nested too deeply") from None
        except (zlib.error, ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
            raise self._err(f"index damaged: {exc}") from None
        self._check()

    def _read(self, off, ln) -> np.ndarray:
        if ln == 0:
            return np.zeros(0, np.uint8)
        try:
            b = self.payload[off : off + ln]
        except (OSError, ValueError) as exc:
            raise self._err(f"payload unreadable: {exc}") from None
        if b.size != ln:
            raise self._err("payload shorter than its index says", TruncatedFileError)
        return b

    def _check(self):
        """The index against its schema, then its blob records against the skeleton,
        before anything is decoded or allocated on the index's word."""
        compact = self._texts is not None
        check_index(self.index, self.size, self.path, data_bytes=self.data_bytes if compact else None)
        check_layout(self.index, self.path)
        self.layers = self.index["layers"]
        self.blobs = self.index["blobs"]
        if compact:
            # 2.x parts are [length, dtype], laid out in record order, parts by name:
            # the 1.x form [offset, length, dtype, count, CRC32 (None: not stored)]
            off = 0
            for b in self.blobs:
                for name in sorted(b["parts"]):
                    ln, dt = b["parts"][name]
                    b["parts"][name] = [off, ln, dt, ln // np.dtype(dt).itemsize, None]
                    off += ln
            skeleton = self._texts[0]
        else:
            skeleton = self.inflate(self.index["streams"]["skeleton"], "skeleton")
        try:
            placeholders = skeleton_blobs(skeleton)
        except WireError as exc:
            raise self._err(f"skeleton stream damaged: {exc}") from None
        check_skeleton(self.index, placeholders, self.path)
        self.skeleton = skeleton

    def inflate(self, e, name) -> bytes:
        """A deflated stream (skeleton, prototxt), CRC-checked, its inflated size bounded."""
        z = self.stream(e, name=name).tobytes()
        limit = min(_MAX_TEXT, max(1, len(z)) * _MAX_DEFLATE)
        d = zlib.decompressobj()
        out, have, data = [], 0, z
        try:
            while data and have <= limit:  # in pieces: zlib's own buffer growth would double the peak
                piece = d.decompress(data, 1 << 20)
                out.append(piece)
                have += len(piece)
                data = d.unconsumed_tail
        except zlib.error as exc:
            raise self._err(f"{name} stream damaged: {exc}") from None
        if have > limit or not d.eof:
            raise self._err(f"{name} stream damaged: it does not end within {limit} bytes")
        return b"".join(out)

    def stream(self, e, *, name="", layer=None) -> np.ndarray:
        off, ln, dt, count, crc = e
        b = self._read(int(off), int(ln))
        if crc is not None and _crc(b) != int(crc):
            raise self._err(f"stream {name!r} fails its CRC32", layer=layer)
        try:
            dt = np.dtype(str(dt))
            if dt.hasobject or dt.itemsize == 0 or int(ln) != int(count) * dt.itemsize:
                raise ValueError("length does not match dtype and count")
            return b.view(dt)
        except (TypeError, ValueError) as exc:
            raise self._err(f"stream {name!r}: {exc}", layer=layer) from None

    def layer_name(self, i):
        try:
            return str(self.layers[i][0])
        except (IndexError, TypeError, KeyError):
            return f"#{i}"

    def record(self, i, *, load=True) -> BlobRecord:
        b = self.blobs[i]
        layer = self.layer_name(int(b.get("layer", -1)) if isinstance(b, dict) else -1)
        try:
            shape = tuple(int(s) for s in b["shape"])
            meta = b["meta"]
            if not isinstance(meta, dict):
                raise ValueError("meta is not an object")
            dtype = np.dtype(str(b["dtype"]))
            if dtype.kind not in "fiu" or any(s < 0 for s in shape) or math.prod(shape) > _MAX_ELEMENTS:
                raise ValueError(f"blob dtype {dtype} / shape {shape} not plausible")
            parts = {}
            if load:
                for name, e in b["parts"].items():
                    parts[str(name)] = self.stream(e, name=name, layer=layer)
            return BlobRecord(
                layer=int(b["layer"]), index=int(b["blob"]), shape=shape, dtype=dtype.str,
                method=str(b["method"]), meta=meta, parts=parts, crc32=int(b["crc32"]),
                shared=int(b["shared"]), kind=str(b["kind"]), bits=int(b["bits"]),
                sparsity=_unnum(b["sparsity"]), sqnr=_unnum(b["sqnr"]),
            )
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise self._err(f"index entry of blob {i} damaged: {exc}", layer=layer) from None

    def stored_nbytes(self, i) -> int:
        return int(sum(int(e[1]) for e in self.blobs[i]["parts"].values()))

    def compressed_model(self, *, load=True) -> CompressedModel:
        ix = self.index
        try:
            info = ix["model"]
            skeleton = self.skeleton
            prototxt = None
            if self._texts is not None:
                if self._texts[1] is not None:
                    prototxt = self._texts[1].decode("utf-8")
            elif "prototxt" in ix["streams"]:
                prototxt = self.inflate(ix["streams"]["prototxt"], "prototxt").decode("utf-8")
            layers = []
            for name, typ, extra in self.layers:
                if not isinstance(extra, dict) or not isinstance(name, str):
                    raise ValueError("layer entry malformed")
                layers.append((name, None if typ is None else str(typ), extra))
            records = [self.record(i, load=load) for i in range(len(self.blobs))]
            return CompressedModel(
                layers=layers, records=records, name=str(info.get("name", "")), skeleton=skeleton,
                prototxt=prototxt, format=str(info.get("format", "V2")),
                unmatched=list(info.get("unmatched", [])), source=self.path,
                settings=dict(info.get("settings", {})), warnings=list(info.get("warnings", [])),
                seconds=float(info.get("seconds", 0.0)),
            )
        except (KeyError, ValueError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            raise self._err(f"model description damaged: {exc}") from None


def _dataset_storage(r) -> dict:
    """Stored bytes of each root dataset (hard links only: a link may loop or leave the file)."""
    out = {}
    try:
        for k in r.f:
            if isinstance(r.f.get(k, getlink=True), h5py.HardLink):
                obj = r.f.get(k)
                if isinstance(obj, h5py.Dataset):
                    out[k] = int(obj.id.get_storage_size())
    except _H5_ERRORS as exc:
        raise CorruptDataError(f"HDF5 structure damaged: {exc}", path=r.path) from None
    return out


def open_compressed(path) -> CompressedModel:
    """Read a compressed file into a :class:`~caffecompress.pipeline.CompressedModel`.

    Every stream's CRC32 is checked as it is read; blobs are decoded (and
    their CRC32 checked) by :func:`decompress`.

    Raises
    ------
    FormatError, TruncatedFileError, CorruptDataError, UnsupportedVersionError
    """
    with _Reader(path) as r:
        cm = r.compressed_model()
    cm.source = None  # the original weights' path is not known from here
    cm._file = str(path)  # type: ignore[attr-defined]
    return cm


def decompress(path_or_cm, *, backend: str = "cpu"):
    """Restore a dense :class:`~caffecompress.model.Model`.

    Parameters
    ----------
    path_or_cm : path or CompressedModel

    Raises
    ------
    CorruptDataError
        Any stream or restored blob fails its checksum.
    """
    from .backend import get_xp  # noqa: PLC0415

    xp = get_xp(backend) if backend != "cpu" else np
    if isinstance(path_or_cm, CompressedModel):
        return restore(path_or_cm, xp=xp, source=getattr(path_or_cm, "_file", None) or path_or_cm.source)
    cm = open_compressed(path_or_cm)
    return restore(cm, xp=xp, source=str(path_or_cm))


def read_layer(path, name: str) -> list[np.ndarray]:
    """Restore the blobs of one layer only (reads just that layer's streams).

    Raises
    ------
    KeyError
        No layer of that name.
    """
    from .pipeline import decode_record  # noqa: PLC0415

    with _Reader(path) as r:
        idx = [i for i in range(len(r.layers)) if r.layer_name(i) == name]
        if not idx:
            raise KeyError(name)
        li = idx[0]
        rows = [i for i in range(len(r.blobs)) if int(r.blobs[i]["layer"]) == li]
        out = []
        for i in rows:
            rec = r.record(i)
            while rec.method == "ref":
                rec = r.record(rec.shared) if 0 <= rec.shared < i else None
                if rec is None:
                    raise CorruptDataError("shared blob points nowhere", path=path, layer=name)
            out.append(decode_record(rec, where={"path": str(path), "layer": name}))
        return out


def caffemodel_bytes(source) -> bytes:
    """A dense ``.caffemodel`` as bytes in memory (no temporary file).

    Parameters
    ----------
    source : Model, CompressedModel or path
        A :class:`~caffecompress.model.Model` is serialized as it is; a
        compressed model or file is restored first.
    """
    from .caffe import caffemodel_bytes as _bytes  # noqa: PLC0415

    return _bytes(source if isinstance(source, Model) else decompress(source))


def file_info(path) -> dict:
    """Describe a compressed file without decoding its blobs.

    Returns a dict with ``format_version``, ``file_bytes``, ``payload_bytes``
    (the dataset's storage: every stream plus the index), ``index_bytes``,
    ``dataset_bytes`` (summed storage of all datasets), ``overhead_bytes``
    (file minus dataset storage: HDF5's own metadata), ``overhead`` (its
    fraction of the file), the model (records without streams) and the
    stored bytes per blob.
    """
    with _Reader(path) as r:
        cm = r.compressed_model(load=False)
        storage = _dataset_storage(r)
        stored = [r.stored_nbytes(i) for i in range(len(r.blobs))]
        index_bytes = int(np.asarray(r.f.attrs["index"]).reshape(-1)[1])
        version = "%d.%d" % r.version
    size = os.path.getsize(path)
    ds = sum(storage.values())
    return {
        "path": str(path),
        "format_version": version,
        "file_bytes": size,
        "payload_bytes": storage.get("payload", 0),
        "index_bytes": index_bytes,
        "dataset_bytes": ds,
        "overhead_bytes": size - ds,
        "overhead": (size - ds) / size if size else 0.0,
        "model": cm,
        "stored": stored,
    }
