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

import numpy as np

from ..errors import FormatError
from ..model import Layer, Model

__all__ = ["read_caffemodel_h5", "write_caffemodel_h5"]

# A compressed dataset may legitimately expand; a hostile one claims far more
# values than it stores. Above this ratio (or with no storage at all) refuse.
_MAX_EXPANSION = 4096


def _h5py():
    import h5py

    return h5py


def _collect(group, prefix, out, path):
    """Append (layer name, group) for each layer group under ``group``."""
    h5py = _h5py()
    for key in group:
        obj = group.get(key, getlink=False)
        name = f"{prefix}{key}"
        if isinstance(obj, h5py.Group):
            children = list(obj.values())
            if children and all(isinstance(c, h5py.Group) for c in children):
                _collect(obj, name + "/", out, path)  # a '/' in the layer name
            else:
                out.append((name, obj))
        else:
            raise FormatError(f"/data/{name} is not a layer group", path=path, layer=name)


def _read_dataset(ds, path, layer, index, file_size) -> np.ndarray:
    h5py = _h5py()
    if not isinstance(ds, h5py.Dataset):
        raise FormatError(f"blob {index} is not a dataset", path=path, layer=layer)
    if ds.dtype.kind not in "fiu":
        raise FormatError(f"blob {index} has non-numeric type {ds.dtype}", path=path, layer=layer)
    n = int(np.prod(ds.shape, dtype=object)) if ds.shape else 1
    if n:
        stored = ds.id.get_storage_size()
        nbytes = n * ds.dtype.itemsize
        if stored == 0 or (ds.chunks is None and stored < nbytes) or stored * _MAX_EXPANSION < nbytes:
            raise FormatError(
                f"blob {index} claims {n} values ({nbytes} bytes) but stores {stored} bytes",
                path=path,
                layer=layer,
            )
    try:
        arr = np.empty(ds.shape, np.float32)
        if n:
            if ds.dtype == np.float32:
                ds.read_direct(arr)
            else:
                arr[...] = ds[()]
    except OSError as e:
        raise FormatError(f"blob {index} cannot be read: {e}", path=path, layer=layer) from None
    return arr


def read_caffemodel_h5(path) -> Model:
    """Read Caffe's ``.caffemodel.h5`` into a :class:`Model` (``format="HDF5"``).

    Blobs are float32 (float64/integer datasets converted, as Caffe's float
    build does, and recorded in ``Layer.storage``). A blob index missing in a
    layer (Caffe omits shared parameters in non-owning layers) is left as
    ``None`` for :func:`~caffecompress.caffe.read_caffemodel` to fill from the
    prototxt's owner; reading such a file without a prototxt is an error.
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
    except OSError as e:
        raise FormatError(f"not a readable HDF5 file: {e}", path=p) from None
    size = os.path.getsize(p)
    with f:
        data = f.get("data")
        if not isinstance(data, h5py.Group):
            raise FormatError("no /data group: not a Caffe .caffemodel.h5", path=p)
        groups = []
        try:
            _collect(data, "", groups, p)
        except (OSError, KeyError) as e:
            raise FormatError(f"corrupt HDF5 structure: {e}", path=p) from None
        layers = []
        for name, g in groups:
            keys = list(g.keys())
            try:
                idx = sorted(int(k) for k in keys)
            except ValueError:
                raise FormatError(f"datasets {keys} are not named 0, 1, ...", path=p, layer=name) from None
            if any(i < 0 for i in idx):
                raise FormatError(f"negative blob index in {keys}", path=p, layer=name)
            count = idx[-1] + 1 if idx else 0
            blobs = [None] * count
            storage = ["float32"] * count
            for i in idx:
                ds = g[str(i)]
                blobs[i] = _read_dataset(ds, p, name, i, size)
                storage[i] = {"f8": "float64", "f2": "float16"}.get(f"{ds.dtype.kind}{ds.dtype.itemsize}", "float32")
            layers.append(Layer(name, None, blobs, [""] * count, storage=storage))
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

    def write(tmp):
        with h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            for lay in model.layers:
                if lay.name in data:
                    raise FormatError("duplicate layer name", path=p, layer=lay.name)
                g = data.create_group(lay.name)
                for i, arr in enumerate(lay.blobs):
                    g.create_dataset(str(i), data=np.ascontiguousarray(arr, dtype=np.float32))

    atomic_write(p, write)
