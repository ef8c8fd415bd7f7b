"""In-memory model: host NumPy arrays plus the net skeleton.

A :class:`Model` is what every reader returns and every writer takes. It
holds no protobuf objects: ``skeleton`` is the weights file's NetParameter
(upgraded to V2) serialized with the blob *values* removed, so the restored
``.caffemodel`` keeps every non-weight field. Only ``caffecompress.caffe``
interprets it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

__all__ = ["Layer", "Model"]


@dataclass
class Layer:
    """One layer record of a Caffe net.

    Parameters
    ----------
    name : str
        The layer name (weights pair with a prototxt by name, as in Caffe).
    type : str or None
        V2 type string (``"Convolution"``); None where unknown, e.g. a
        ``.caffemodel.h5`` read without its prototxt.
    blobs : list of numpy.ndarray
        The learned blobs in Caffe's order and shape (weights first).
    param_names : list of str
        ``ParamSpec.name`` per blob ('' when the blob is not shared); a shared
        name means the blob is stored once and reused.
    storage : list of str
        How each blob was stored in its source file: ``"float32"`` (``data``),
        ``"float64"`` (``double_data``, rounded to float32 on read as Caffe's
        float build does) or ``"float16"`` (OpenCV/NVCaffe ``raw_data``). Empty
        means float32. Writers use it only on request (``keep_fp16``); the
        arrays in ``blobs`` are always float32.
    """

    name: str
    type: str | None
    blobs: list[np.ndarray] = field(default_factory=list)
    param_names: list[str] = field(default_factory=list)
    storage: list[str] = field(default_factory=list)

    @property
    def num_params(self) -> int:
        """Number of learned values in this layer."""
        return int(sum(b.size for b in self.blobs))


@dataclass
class Model:
    """A Caffe net's weights as NumPy arrays, plus what is needed to write it back.

    Parameters
    ----------
    layers : list of Layer
        Layer records in file order (V2 after upgrade).
    name : str
        ``NetParameter.name``.
    skeleton : bytes
        Serialized V2 NetParameter of the weights file without blob values
        (opaque outside ``caffecompress.caffe``); empty when unknown.
    prototxt : str or None
        The deploy prototxt text, verbatim, when one was given.
    source : str or None
        Path the weights were read from.
    format : str
        Source generation: ``"V0"``, ``"V1"``, ``"V2"`` or ``"HDF5"``.
    unmatched : list of str
        Weight layers with no prototxt layer of the same name (kept, reported).
    """

    layers: list[Layer] = field(default_factory=list)
    name: str = ""
    skeleton: bytes = b""
    prototxt: str | None = None
    source: str | None = None
    format: str = "V2"
    unmatched: list[str] = field(default_factory=list)

    def layer(self, name: str) -> Layer:
        """Return the layer called ``name`` (KeyError if absent)."""
        for lay in self.layers:
            if lay.name == name:
                return lay
        raise KeyError(name)

    def blobs(self) -> Iterator[tuple[Layer, int, np.ndarray]]:
        """Yield ``(layer, index, array)`` for every blob in file order."""
        for lay in self.layers:
            for i, b in enumerate(lay.blobs):
                yield lay, i, b

    @property
    def num_params(self) -> int:
        """Total number of learned values."""
        return int(sum(lay.num_params for lay in self.layers))

    @property
    def nbytes(self) -> int:
        """Bytes the blobs occupy in memory."""
        return int(sum(b.nbytes for _, _, b in self.blobs()))
