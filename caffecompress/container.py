"""The compressed file: versioned HDF5, format ``caffecompress`` 1.0.

Layout (four datasets, three short root attributes, nothing else)::

    /                attrs: format = "caffecompress", format_version = "1.0",
                            tables_crc32 = CRC32 of the three tables' bytes
    /payload         uint8[N], contiguous: every stored stream, concatenated
    /parts           compound, one row per stream: rec (blob row, or -1 for
                     the model's own streams "model", "skeleton", "prototxt"),
                     name, offset, length, dtype, count, crc32 (of its bytes)
    /blobs           compound, one row per blob: layer, blob, method, kind,
                     dtype, ndim, shape[D], crc32 (of the restored array),
                     shared, bits, sparsity, sqnr, nbytes, meta (JSON)
    /layers          compound, one row per layer: name, type, has_type, nblobs,
                     extra (JSON: param_names, storage)

Each table is one chunk with shuffle + deflate + fletcher32. Strings are
fixed-length UTF-8 (no variable-length heap blocks); the skeleton
and the prototxt are deflated streams in the payload, kept verbatim. Files
are written with ``libver=('v110', 'v110')`` so HDF5 checksums all metadata
(attributes included); table contents are covered by ``tables_crc32``, every
stream by its own CRC32 and every restored blob by the CRC32 of its array, so
a damaged file raises :class:`~caffecompress.errors.CorruptDataError` and is
never decoded into other weights. One layer is read by slicing the payload.

A reader accepts any 1.x file and refuses a newer major version.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import zlib
from pathlib import Path

import h5py
import numpy as np

from .errors import (
    CorruptDataError,
    FormatError,
    OutputExistsError,
    TruncatedFileError,
    UnsupportedVersionError,
)
from .pipeline import BlobRecord, CompressedModel, meta_json, restore

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
]

FORMAT = "caffecompress"
FORMAT_VERSION = (1, 0)
LIBVER = ("v110", "v110")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_MAX_ROWS = 1 << 24


def _fixed(strings, minimum=1) -> np.dtype:
    n = max([minimum, *(len(s) for s in strings)])
    return np.dtype(f"S{n}")


def _enc(s: str | None) -> bytes:
    return (s or "").encode("utf-8")


def _dec(b) -> str:
    return bytes(b).decode("utf-8", errors="strict")


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
        src = Path(src)
        same = path.resolve() == src.resolve()
        if not same and path.exists() and src.exists():
            try:
                same = os.path.samefile(path, src)
            except OSError:
                same = False
        if same:
            raise OutputExistsError("output would overwrite the input", path=path)
    if path.exists() and not force:
        raise OutputExistsError("output exists (use --force / force=True to overwrite)", path=path)
    if path.is_dir():
        raise OutputExistsError("output is a directory", path=path)
    return path


def atomic_write(path, write, *, suffix=""):
    """Call ``write(tmp_path)`` and rename the result onto ``path``.

    An interrupted or failed run leaves nothing under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _tables(cm: CompressedModel):
    """Build (payload pieces, parts rows, blobs rows, layers rows)."""
    pieces: list[np.ndarray] = []
    part_rows = []  # (rec, name, offset, length, dtype, count, crc)
    offset = 0

    def add(rec_i, name, arr):
        nonlocal offset
        arr = np.ascontiguousarray(np.asarray(arr).reshape(-1))
        b = arr.view(np.uint8)
        part_rows.append((rec_i, _enc(name), offset, b.size, _enc(arr.dtype.str), arr.size,
                          zlib.crc32(b) & 0xFFFFFFFF))
        pieces.append(b)
        offset += b.size

    model_json = json.dumps(
        {
            "name": cm.name,
            "format": cm.format,
            "unmatched": list(cm.unmatched),
            "has_prototxt": cm.prototxt is not None,
            "settings": cm.settings,
            "warnings": list(cm.warnings),
            "seconds": round(float(cm.seconds), 3),
        },
        sort_keys=True,
    ).encode()
    add(-1, "model", np.frombuffer(model_json, np.uint8))
    add(-1, "skeleton", np.frombuffer(zlib.compress(bytes(cm.skeleton), 9), np.uint8))
    if cm.prototxt is not None:
        add(-1, "prototxt", np.frombuffer(zlib.compress(cm.prototxt.encode("utf-8"), 9), np.uint8))

    ndim = max([1, *(len(r.shape) for r in cm.records)])
    metas = [_enc(meta_json(r.meta)) for r in cm.records]
    blob_rows = []
    for i, r in enumerate(cm.records):
        for name in sorted(r.parts):
            add(i, name, r.parts[name])
        shape = list(r.shape) + [0] * (ndim - len(r.shape))
        blob_rows.append((r.layer, r.index, _enc(r.method), _enc(r.kind), _enc(r.dtype),
                          len(r.shape), shape, r.crc32, r.shared, r.bits, r.sparsity,
                          r.sqnr, r.nbytes, metas[i]))
    ptype = np.dtype([
        ("rec", "<i4"), ("name", _fixed([p[1] for p in part_rows])), ("offset", "<u8"),
        ("length", "<u8"), ("dtype", "S8"), ("count", "<u8"), ("crc32", "<u4"),
    ])
    btype = np.dtype([
        ("layer", "<i4"), ("blob", "<i4"), ("method", _fixed([r[2] for r in blob_rows])),
        ("kind", "S8"), ("dtype", "S8"), ("ndim", "u1"), ("shape", "<i8", (ndim,)),
        ("crc32", "<u4"), ("shared", "<i4"), ("bits", "u1"), ("sparsity", "<f4"),
        ("sqnr", "<f8"), ("nbytes", "<u8"), ("meta", _fixed(metas)),
    ])
    names = [_enc(n) for n, _, _ in cm.layers]
    types = [_enc(t) for _, t, _ in cm.layers]
    pns = [_enc(json.dumps(extra, sort_keys=True, separators=(",", ":"))) for _, _, extra in cm.layers]
    ltype = np.dtype([
        ("name", _fixed(names)), ("type", _fixed(types)), ("has_type", "u1"),
        ("extra", _fixed(pns)), ("nblobs", "<i4"),
    ])
    nblobs = [0] * len(cm.layers)
    for r in cm.records:
        nblobs[r.layer] += 1
    layer_rows = [(n, t, int(cm.layers[i][1] is not None), p, nblobs[i])
                  for i, (n, t, p) in enumerate(zip(names, types, pns))]
    parts = np.array(part_rows, dtype=ptype)
    blobs = np.array(blob_rows, dtype=btype) if blob_rows else np.zeros(0, btype)
    layers = np.array(layer_rows, dtype=ltype) if layer_rows else np.zeros(0, ltype)
    payload = np.concatenate(pieces) if pieces else np.zeros(0, np.uint8)
    return payload, parts, blobs, layers


def _tables_crc(parts, blobs, layers) -> int:
    c = 0
    for t in (parts, blobs, layers):
        c = zlib.crc32(np.ascontiguousarray(t).view(np.uint8), c)
    return c & 0xFFFFFFFF


def _table(f, name: str, table: np.ndarray) -> None:
    """Write a table as one deflated chunk (a quarter or less of its raw size:
    fixed-length rows are mostly padding and repeats)."""
    if table.size == 0:
        f.create_dataset(name, data=table)
        return
    f.create_dataset(name, data=table, chunks=table.shape, compression="gzip",
                     compression_opts=9, shuffle=name != "layers", fletcher32=True)


def save(cm: CompressedModel, path, *, force: bool = False, inputs=()) -> Path:
    """Write ``cm`` to ``path`` (HDF5, format version 1).

    Written under a temporary name in the same folder and renamed, so an
    interrupted run leaves no partial file under ``path``.

    Parameters
    ----------
    force : bool
        Overwrite an existing ``path``.
    inputs : iterable of paths
        Files the output must not replace (``cm.source`` is always one).

    Raises
    ------
    OutputExistsError
    """
    path = check_output_path(path, inputs=[cm.source, *inputs], force=force)
    payload, parts, blobs, layers = _tables(cm)

    def write(tmp):
        with h5py.File(tmp, "w", libver=LIBVER) as f:
            f.attrs["format"] = np.bytes_(FORMAT)
            f.attrs["format_version"] = np.bytes_("%d.%d" % FORMAT_VERSION)
            f.attrs["tables_crc32"] = np.uint32(_tables_crc(parts, blobs, layers))
            f.create_dataset("payload", data=payload)
            for name, table in (("parts", parts), ("blobs", blobs), ("layers", layers)):
                _table(f, name, table)

    atomic_write(path, write)
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
    """Open file + validated tables; payload slices read on demand."""

    def __init__(self, path):
        self.path = str(path)
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"{path}: no such file")
        if p.is_dir():
            raise FormatError("is a directory, not a compressed file", path=path)
        with open(p, "rb") as fh:
            head = fh.read(8)
        if head != _HDF5_MAGIC:
            raise FormatError("not a caffecompress file (no HDF5 signature)", path=path)
        try:
            self.f = h5py.File(p, "r")
        except OSError as exc:
            msg = str(exc)
            if "truncat" in msg.lower() or "eof" in msg.lower():
                raise TruncatedFileError(f"HDF5 file is truncated: {msg}", path=path) from None
            raise CorruptDataError(f"HDF5 file cannot be opened: {msg}", path=path) from None
        try:
            self._load()
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
        except (OSError, KeyError, ValueError) as exc:
            raise self._err(f"HDF5 metadata damaged: {exc}") from None
        if fmt != FORMAT:
            raise self._err(f"not a caffecompress file (format attribute {fmt!r})", FormatError)
        try:
            major, minor = (int(x) for x in str(ver).split("."))
        except ValueError:
            raise self._err(f"bad format_version {ver!r}") from None
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
            for name in ("payload", "parts", "blobs", "layers"):
                if name not in f:
                    raise self._err(f"dataset /{name} missing")
                if f[name].ndim != 1 or f[name].shape[0] > (_MAX_ROWS if name != "payload" else 1 << 62):
                    raise self._err(f"dataset /{name} has a bad shape {f[name].shape}")
            self.parts = f["parts"][()]
            self.blobs = f["blobs"][()]
            self.layers = f["layers"][()]
            self.payload = f["payload"]
            crc = f.attrs.get("tables_crc32")
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise self._err(f"HDF5 data damaged: {exc}") from None
        if crc is None or int(crc) != _tables_crc(self.parts, self.blobs, self.layers):
            raise self._err("index tables fail their CRC32")
        self._check_tables()

    def _check_tables(self):
        n = int(self.payload.shape[0])
        p = self.parts
        try:
            end = p["offset"].astype(np.uint64) + p["length"].astype(np.uint64)
            if (end < p["offset"]).any() or (end > n).any():
                raise self._err("a stream lies outside the payload")
            if ((p["rec"] < -1) | (p["rec"] >= len(self.blobs))).any():
                raise self._err("a stream points at no blob")
            b = self.blobs
            if ((b["layer"] < 0) | (b["layer"] >= len(self.layers))).any():
                raise self._err("a blob points at no layer")
            if (b["ndim"] > b["shape"].shape[1]).any() or (b["shape"] < 0).any():
                raise self._err("a blob has a bad shape")
        except (ValueError, KeyError) as exc:
            raise self._err(f"index tables malformed: {exc}") from None
        self.by_rec: dict[int, list[int]] = {}
        for i, r in enumerate(p["rec"].tolist()):
            self.by_rec.setdefault(r, []).append(i)

    def part(self, i) -> np.ndarray:
        row = self.parts[i]
        off, ln = int(row["offset"]), int(row["length"])
        try:
            b = self.payload[off : off + ln] if ln else np.zeros(0, np.uint8)
        except (OSError, ValueError) as exc:
            raise self._err(f"payload unreadable: {exc}") from None
        if b.size != ln or (zlib.crc32(b) & 0xFFFFFFFF) != int(row["crc32"]):
            rec = int(row["rec"])
            layer = self.layer_name(int(self.blobs[rec]["layer"])) if rec >= 0 else None
            raise self._err(f"stream {_dec(row['name'])!r} fails its CRC32", layer=layer)
        try:
            dt = np.dtype(_dec(row["dtype"]))
            if dt.hasobject or ln % max(dt.itemsize, 1) or ln // max(dt.itemsize, 1) != int(row["count"]):
                raise ValueError("length does not match dtype and count")
            return b.view(dt)
        except (TypeError, ValueError, UnicodeDecodeError) as exc:
            raise self._err(f"stream {_dec(row['name'])!r}: {exc}") from None

    def model_part(self, name) -> bytes | None:
        for i in self.by_rec.get(-1, []):
            if _dec(self.parts[i]["name"]) == name:
                return self.part(i).tobytes()
        return None

    def layer_name(self, i):
        try:
            return _dec(self.layers[i]["name"])
        except (IndexError, UnicodeDecodeError):
            return f"#{i}"

    def record(self, i, *, load=True) -> BlobRecord:
        row = self.blobs[i]
        layer = self.layer_name(int(row["layer"]))
        try:
            ndim = int(row["ndim"])
            shape = tuple(int(s) for s in row["shape"][:ndim])
            meta = json.loads(_dec(row["meta"]))
            if not isinstance(meta, dict):
                raise ValueError("meta is not an object")
            dtype = np.dtype(_dec(row["dtype"]))
            if dtype.kind not in "fiu" or math.prod(shape) > (1 << 40):
                raise ValueError(f"blob dtype {dtype} / shape {shape} not plausible")
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            raise self._err(f"blob table row {i} damaged: {exc}", layer=layer) from None
        parts = {}
        if load:
            for j in self.by_rec.get(i, []):
                parts[_dec(self.parts[j]["name"])] = self.part(j)
        return BlobRecord(
            layer=int(row["layer"]), index=int(row["blob"]), shape=shape, dtype=dtype.str,
            method=_dec(row["method"]), meta=meta, parts=parts, crc32=int(row["crc32"]),
            shared=int(row["shared"]), kind=_dec(row["kind"]), bits=int(row["bits"]),
            sparsity=float(row["sparsity"]), sqnr=float(row["sqnr"]),
        )

    def stored_nbytes(self, i) -> int:
        return int(sum(int(self.parts[j]["length"]) for j in self.by_rec.get(i, [])))

    def compressed_model(self, *, load=True) -> CompressedModel:
        try:
            info = json.loads(self.model_part("model") or b"{}")
            skel = self.model_part("skeleton")
            skeleton = _inflate(skel, self.path, "skeleton") if skel is not None else b""
            pt = self.model_part("prototxt")
            prototxt = _inflate(pt, self.path, "prototxt").decode("utf-8") if pt is not None else None
            layers = []
            for row in self.layers:
                extra = json.loads(_dec(row["extra"]))
                if not isinstance(extra, dict):
                    raise ValueError("layer extra is not an object")
                layers.append((_dec(row["name"]), _dec(row["type"]) if row["has_type"] else None,
                               extra))
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            raise self._err(f"model description damaged: {exc}") from None
        records = [self.record(i, load=load) for i in range(len(self.blobs))]
        return CompressedModel(
            layers=layers, records=records, name=info.get("name", ""), skeleton=skeleton,
            prototxt=prototxt, format=info.get("format", "V2"),
            unmatched=list(info.get("unmatched", [])), source=self.path,
            settings=info.get("settings", {}), warnings=list(info.get("warnings", [])),
            seconds=float(info.get("seconds", 0.0)),
        )


def _inflate(b: bytes, path, what) -> bytes:
    try:
        return zlib.decompress(b)
    except zlib.error as exc:
        raise CorruptDataError(f"{what} stream damaged: {exc}", path=path) from None


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


def caffemodel_bytes(path_or_cm) -> bytes:
    """The restored ``.caffemodel`` as bytes in memory (no temporary file)."""
    from .caffe import caffemodel_bytes as _bytes  # noqa: PLC0415

    return _bytes(decompress(path_or_cm))


def file_info(path) -> dict:
    """Describe a compressed file without decoding its blobs.

    Returns a dict with ``format_version``, ``file_bytes``, ``payload_bytes``,
    ``dataset_bytes`` (summed storage of all datasets), ``overhead_bytes``
    (file minus dataset storage), the model description and a row per blob.
    """
    with _Reader(path) as r:
        cm = r.compressed_model(load=False)
        storage = {k: int(r.f[k].id.get_storage_size()) for k in ("payload", "parts", "blobs", "layers")}
        stored = [r.stored_nbytes(i) for i in range(len(r.blobs))]
        version = "%d.%d" % r.version
    for rec, n in zip(cm.records, stored):
        rec.meta = dict(rec.meta, _stored=n)
    size = os.path.getsize(path)
    ds = sum(storage.values())
    return {
        "path": str(path),
        "format_version": version,
        "file_bytes": size,
        "payload_bytes": storage["payload"],
        "dataset_bytes": ds,
        "overhead_bytes": size - ds,
        "overhead": (size - ds) / size if size else 0.0,
        "model": cm,
        "stored": stored,
    }
