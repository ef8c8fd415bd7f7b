"""Caffe's own HDF5 weights (``.caffemodel.h5``): read and write.

Layout (``Net::ToHDF5`` / ``CopyTrainedLayersFromHDF5``): group ``/data``, one
subgroup per layer named after the layer (a ``/`` in a name nests groups), in
it datasets ``"0"``, ``"1"``, ... with the blob's exact N-D shape, float32,
contiguous (no chunking, no compression). Layers without blobs get empty
groups. This is the only caffe module that imports h5py.

Differences from Caffe, both of which Caffe's loader accepts: we write every
blob of a layer that shares a parameter (Caffe writes it only in the owning
layer), so the file is self-contained; and on reading, a dataset missing from
a sharing layer is filled from its owner when a prototxt names the shared
parameter (``read_caffemodel(path, prototxt=...)``).

HDF5 keeps no layer order: without a prototxt layers come in h5py's (name)
order with ``type=None``; with one, in the prototxt's order and types.
"""

from __future__ import annotations

import os
import re

import numpy as np

from ..errors import FormatError
from ..model import Layer, Model

__all__ = ["read_caffemodel_h5", "write_caffemodel_h5"]

# What a Caffe blob can be: Blob::Reshape checks count <= INT_MAX elements,
# and at most kMaxBlobAxes (32) axes; no real net has more than a few blobs
# per layer or layer names nested (by '/') more than a few groups deep.
_MAX_ELEMENTS = (1 << 31) - 1
_MAX_AXES = 32
_MAX_BLOB_INDEX = 255
_MAX_DEPTH = 32
# Caffe writes blobs raw (no filters); a filtered dataset comes from another
# tool. Trained float32 weights deflate (shuffled) at 1.1-1.3x, heavily
# pruned ones at ~10-20x; only constant runs go further (deflate's limit is
# 1032x). So a filtered blob may inflate to 64x its stored bytes, or to 1 MiB
# whatever that takes (zero biases): a bigger claim is a compression bomb,
# refused before anything is allocated. Unfiltered datasets must store every
# byte they declare.
_MAX_INFLATION = 64
_INFLATION_FREE = 1 << 20
_SLAB = 1 << 22  # elements converted per step for a non-float32 dataset
# everything h5py raises for damaged files (wrong B-tree signatures, link
# traversal failures, invalid names, ...): each becomes a FormatError
_H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, OverflowError, IndexError,
              AttributeError, SystemError)
_INDEX = re.compile(r"0|[1-9][0-9]{0,2}")


def _h5py():
    import h5py

    return h5py


def _hard_link(group, key, path, name):
    """The object ``group[key]`` when it is a hard link; soft and external links are refused.

    Caffe's writer makes only groups and datasets: a link is foreign, and a
    soft link can form a cycle, an external link reads another file.
    """
    h5py = _h5py()
    link = group.get(key, getlink=True)
    if isinstance(link, h5py.SoftLink):
        raise FormatError(f"/data/{name} is a soft link ({link.path}): refused", path=path, layer=name)
    if isinstance(link, h5py.ExternalLink):
        raise FormatError(f"/data/{name} is an external link to {link.filename}: refused", path=path,
                          layer=name)
    if not isinstance(link, h5py.HardLink):
        raise FormatError(f"/data/{name} is not a plain object", path=path, layer=name)
    return group.get(key)


def _collect(group, prefix, out, path, seen, depth=0):
    """Append (layer name, group) for each layer group under ``group``."""
    h5py = _h5py()
    if depth > _MAX_DEPTH:
        raise FormatError(f"layer groups nested deeper than {_MAX_DEPTH} levels", path=path,
                          layer=prefix.rstrip("/"))
    for key in group:
        name = f"{prefix}{key}"
        obj = _hard_link(group, key, path, name)
        if isinstance(obj, h5py.Group):
            if obj.id in seen:  # a hard link back to a group already walked: a cycle
                raise FormatError(f"/data/{name} links back to a group above it", path=path, layer=name)
            seen.add(obj.id)
            children = [_hard_link(obj, k, path, f"{name}/{k}") for k in obj]
            if children and all(isinstance(c, h5py.Group) for c in children):
                _collect(obj, name + "/", out, path, seen, depth + 1)  # a '/' in the layer name
            else:
                out.append((name, obj))
        else:
            raise FormatError(f"/data/{name} is not a layer group", path=path, layer=name)


def _check_storage(ds, n, path, layer, index) -> None:
    """Refuse what no Caffe blob is, before anything is allocated."""
    h5py = _h5py()
    dcpl = ds.id.get_create_plist()
    if ds.is_virtual or dcpl.get_layout() == h5py.h5d.VIRTUAL:
        raise FormatError(f"blob {index} is a virtual dataset (data from other files): refused", path=path,
                          layer=layer)
    if dcpl.get_external_count():
        name = dcpl.get_external(0)[0].decode("utf-8", "replace")
        raise FormatError(f"blob {index} keeps its values in an external file ({name}): refused", path=path,
                          layer=layer)
    if len(ds.shape) > _MAX_AXES:
        raise FormatError(f"blob {index} has {len(ds.shape)} axes; a Caffe blob has at most {_MAX_AXES}",
                          path=path, layer=layer)
    if n > _MAX_ELEMENTS:
        raise FormatError(f"blob {index} claims {n} values; a Caffe blob holds at most {_MAX_ELEMENTS}",
                          path=path, layer=layer)
    if not n:
        return
    stored = ds.id.get_storage_size()
    nbytes = n * ds.dtype.itemsize
    filtered = ds.chunks is not None and dcpl.get_nfilters() > 0
    if stored == 0 or (not filtered and stored < nbytes):
        raise FormatError(f"blob {index} claims {n} values ({nbytes} bytes) but stores {stored} bytes",
                          path=path, layer=layer)
    if nbytes > max(_INFLATION_FREE, stored * _MAX_INFLATION):
        raise FormatError(
            f"blob {index} claims {n} values ({nbytes} bytes) from {stored} compressed bytes "
            f"({nbytes / stored:.0f}x): trained weights compress at most ~{_MAX_INFLATION}x "
            f"(Caffe stores blobs raw), so this is refused as a compression bomb",
            path=path, layer=layer)


def _read_dataset(ds, path, layer, index) -> np.ndarray:
    h5py = _h5py()
    if not isinstance(ds, h5py.Dataset):
        raise FormatError(f"blob {index} is not a dataset", path=path, layer=layer)
    if ds.dtype.kind not in "fiu" or ds.dtype.fields is not None or ds.shape is None:
        raise FormatError(f"blob {index} has non-numeric type {ds.dtype}", path=path, layer=layer)
    n = int(np.prod(ds.shape, dtype=object)) if ds.shape else 1
    _check_storage(ds, n, path, layer, index)
    arr = np.empty(ds.shape, np.float32)
    if n:
        if ds.dtype == np.float32:
            ds.read_direct(arr)
        elif arr.ndim == 0:
            arr[...] = ds[()]
        else:
            # convert a slab at a time: never the whole dataset in its own dtype too
            step = max(1, _SLAB // max(1, n // arr.shape[0]))
            for s in range(0, arr.shape[0], step):
                with np.errstate(over="ignore", invalid="ignore"):
                    arr[s : s + step] = ds[s : s + step]
    return arr


def _blob_index(key, path, layer) -> int:
    if not _INDEX.fullmatch(key) or int(key) > _MAX_BLOB_INDEX:
        raise FormatError(f"dataset {key!r} is not a blob index 0..{_MAX_BLOB_INDEX}", path=path, layer=layer)
    return int(key)


def read_caffemodel_h5(path) -> Model:
    """Read Caffe's ``.caffemodel.h5`` into a :class:`Model` (``format="HDF5"``).

    Blobs are float32 (float64/integer datasets converted, as Caffe's float
    build does, and recorded in ``Layer.storage``). A blob index missing in a
    layer (Caffe omits shared parameters in non-owning layers) is left as
    ``None`` for :func:`~caffecompress.caffe.read_caffemodel` to fill from the
    prototxt's owner; reading such a file without a prototxt is an error.

    Raises
    ------
    FormatError
        Not a readable HDF5 file, damaged HDF5 structure, or something no
        Caffe writer makes: links (soft, external), virtual or external
        storage, blob names other than ``0``, ``1``, ..., a blob claiming more
        values than it stores (or than deflate could expand its bytes to, or
        than a Caffe blob holds). The message names the file and the layer.
    """
    h5py = _h5py()
    p = os.fspath(path)
    if os.path.isdir(p):
        raise FormatError("is a directory, not a caffemodel file", path=p)
    try:
        f = h5py.File(p, "r")
    except FileNotFoundError:
        raise FormatError("no such file", path=p) from None
    except PermissionError:
        raise FormatError("permission denied (unreadable file)", path=p) from None
    except _H5_ERRORS as e:
        raise FormatError(f"not a readable HDF5 file: {e}", path=p) from None
    layer = None
    try:
        with f:
            if "data" not in f:
                raise FormatError("no /data group: not a Caffe .caffemodel.h5", path=p)
            link = f.get("data", getlink=True)
            if not isinstance(link, h5py.HardLink):
                raise FormatError("/data is a link, not a group: refused", path=p)
            data = f.get("data")
            if not isinstance(data, h5py.Group):
                raise FormatError("no /data group: not a Caffe .caffemodel.h5", path=p)
            groups = []
            _collect(data, "", groups, p, {data.id})
            layers = []
            for layer, g in groups:
                keys = list(g.keys())
                idx = sorted((_blob_index(k, p, layer), k) for k in keys)
                count = idx[-1][0] + 1 if idx else 0
                blobs = [None] * count
                storage = ["float32"] * count
                for i, k in idx:
                    ds = _hard_link(g, k, p, f"{layer}/{k}")
                    blobs[i] = _read_dataset(ds, p, layer, i)
                    kind = f"{ds.dtype.kind}{ds.dtype.itemsize}"
                    storage[i] = {"f8": "float64", "f2": "float16"}.get(kind, "float32")
                layers.append(Layer(layer, None, blobs, [""] * count, storage=storage))
                layer = None
    except FormatError:
        raise
    except RecursionError:
        raise FormatError("HDF5 structure nested too deeply", path=p, layer=layer) from None
    except _H5_ERRORS as e:
        raise FormatError(f"corrupt HDF5 structure: {e}", path=p, layer=layer) from None
    return Model(layers=layers, name="", skeleton=b"", source=p, format="HDF5")


def write_caffemodel_h5(model: Model, path) -> None:
    """Write ``model`` as Caffe's ``.caffemodel.h5`` at ``path`` (temp file, then rename).

    Every layer gets a group (empty when it has no blobs); blobs are
    contiguous float32 datasets ``"0"``, ``"1"``, ... with their exact shapes.
    No size limit (Caffe recommends HDF5 for models over 2 GB).
    """
    from ..fileio import atomic_write
    from .writer import check_output_path

    h5py = _h5py()
    p = os.fspath(path)
    check_output_path(model, p)

    def write(fobj):
        # through a GuardedFile: libhdf5 never sees a failed write (a full disk
        # would crash it at close); atomic_write raises the error afterwards
        with h5py.File(fobj, "w") as f:
            data = f.create_group("data")
            for lay in model.layers:
                if lay.name in data:
                    raise FormatError("duplicate layer name", path=p, layer=lay.name)
                g = data.create_group(lay.name)
                for i, arr in enumerate(lay.blobs):
                    g.create_dataset(str(i), data=np.ascontiguousarray(arr, dtype=np.float32))

    objects = 1 + sum(1 + len(lay.blobs) for lay in model.layers)
    size = sum(4 * int(np.size(b)) for lay in model.layers for b in lay.blobs) + 2048 * objects + 65536
    atomic_write(p, write, fileobj=True, size_hint=size)
