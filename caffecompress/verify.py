"""Fidelity: run an original and a candidate Caffe net through OpenCV 4.x dnn.

Both nets run through :mod:`caffecompress.runtime` (the one module that
imports ``cv2``), loaded from memory buffers: no temporary files.

What is compared follows the project's fidelity rule:

- inputs are sample images (scikit-image's bundled ones by default, a
  folder of images, or arrays), resized to the net's input size, scaled as
  ``(x - mean) * scale`` with ``mean = 127.5`` and ``scale = 1/128`` unless
  told otherwise, channel-averaged for 1-channel nets;
- compared blobs are every net output and every Softmax input; a
  DetectionOutput layer is replaced by its inputs (its own output is a
  thresholded, sorted box list whose length changes with tiny score moves);
- metrics per compared blob: relative L2 error ``||b - a|| / ||a||`` over the
  whole batch (and the worst single image), cosine similarity and top-1
  agreement along the class axis where one exists.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "OutputReport",
    "NetSpec",
    "net_spec",
    "load_net",
    "opencv_net",
    "sample_images",
    "load_images",
    "make_blob",
    "run_net",
    "compare",
    "max_rel_error",
    "format_reports",
    "DEFAULT_MEAN",
    "DEFAULT_SCALE",
    "SAMPLE_IMAGES",
]

from .runtime import (  # noqa: E402,F401  (verify's public names, kept)
    DEFAULT_MEAN,
    DEFAULT_SCALE,
    HELDOUT_IMAGES,
    SAMPLE_IMAGES,
    _cv2,  # noqa: F401
    _Target,  # noqa: F401
    compared_outputs,
    _model_bytes,
    _opencv,  # noqa: F401
    _proto_bytes,
    load_images,
    load_net,
    make_blob,
    run_net,
    sample_images,
)

@dataclass
class LayerSpec:
    """Name, type and connections of one prototxt layer (V2 type names where known)."""

    name: str
    type: str
    bottoms: list[str]
    tops: list[str]
    softmax_axis: int = 1


@dataclass
class NetSpec:
    """What verify needs from a deploy prototxt.

    Attributes
    ----------
    inputs : dict of str -> tuple of int
        Input blob name -> N, C, H, W (as declared; N is ignored).
    layers : list of LayerSpec
        Layers in file order.
    """

    inputs: dict[str, tuple[int, ...]] = field(default_factory=dict)
    layers: list[LayerSpec] = field(default_factory=list)


def net_spec(prototxt: str | bytes) -> NetSpec:
    """Read inputs and layer connectivity from prototxt text (V0, V1 or V2).

    The net is parsed by the project's one prototxt parser
    (:func:`caffecompress.caffe.graph.net_graph`, upgraded to V2).

    Parameters
    ----------
    prototxt : str or bytes
        The prototxt text (not a path).

    Returns
    -------
    NetSpec

    Raises
    ------
    FormatError
        The text is not a valid net definition.
    """
    from .caffe.graph import net_graph  # noqa: PLC0415

    g = net_graph(prototxt)
    spec = NetSpec(inputs=dict(g.inputs))
    for lay in g.layers:
        spec.layers.append(LayerSpec(lay.name, lay.type, list(lay.bottoms), list(lay.tops), lay.softmax_axis))
    return spec


# --------------------------------------------------------------------------
# Images and preprocessing
# --------------------------------------------------------------------------


def opencv_net(compressed, prototxt=None):
    """A ``cv2.dnn.Net`` straight from a compressed file, through memory buffers only.

    Parameters
    ----------
    compressed : path or CompressedModel
        A caffecompress HDF5 file (or an opened one).
    prototxt : str, bytes or os.PathLike, optional
        Deploy prototxt (text or path); default: the one stored in the file.

    Returns
    -------
    cv2.dnn.Net
        The restored dense model loaded by OpenCV 4.x (no temporary files).

    Raises
    ------
    ValueError
        The file stores no prototxt and none was given.
    CorruptDataError
        A stream or restored blob fails its checksum.
    """
    from . import container
    from .pipeline import CompressedModel

    cm = compressed if isinstance(compressed, CompressedModel) else container.open_compressed(compressed)
    if prototxt is None:
        if cm.prototxt is None:
            raise ValueError(f"{compressed}: the compressed file holds no prototxt; pass prototxt=")
        prototxt = cm.prototxt
    return load_net(prototxt, container.caffemodel_bytes(cm))


def _targets(spec: NetSpec, net) -> list:
    """Blobs to compare (see :func:`caffecompress.runtime.compared_outputs`)."""
    return compared_outputs(spec.layers, spec.inputs, net)


@dataclass
class OutputReport:
    """Fidelity of one compared blob.

    Attributes
    ----------
    name : str
        Blob name (the prototxt's top).
    layer : str
        Layer whose output it is.
    kind : str
        ``"output"``, ``"softmax-input"`` or ``"detection-input"``.
    shape : tuple of int
        Shape of one image's output, as OpenCV gives it.
    n_images : int
        Number of images compared.
    rel_l2 : float
        ``||candidate - original|| / ||original||`` over the whole batch.
    rel_l2_worst : float
        The largest per-image relative L2 error.
    cosine : float
        Cosine similarity of the flattened batches.
    max_abs : float
        Largest absolute difference.
    top1 : float or None
        Fraction of argmax agreements along the class axis (None when the blob
        has no class axis).
    """

    name: str
    layer: str
    kind: str
    shape: tuple
    n_images: int
    rel_l2: float
    rel_l2_worst: float
    cosine: float
    max_abs: float
    top1: float | None

    def as_dict(self) -> dict:
        """A JSON-friendly dict."""
        return {
            "name": self.name,
            "layer": self.layer,
            "kind": self.kind,
            "shape": list(self.shape),
            "n_images": self.n_images,
            "rel_l2": self.rel_l2,
            "rel_l2_worst": self.rel_l2_worst,
            "cosine": self.cosine,
            "max_abs": self.max_abs,
            "top1": self.top1,
        }


def _rel(diff_norm: float, ref_norm: float) -> float:
    if ref_norm > 0:
        return diff_norm / ref_norm
    return 0.0 if diff_norm == 0 else float("inf")


def _metrics(t, a: np.ndarray, b: np.ndarray) -> OutputReport:
    """Metrics of stacked per-image outputs ``a`` (original) and ``b`` (candidate)."""
    shape, n = tuple(a.shape[1:]), int(a.shape[0])
    if a.shape != b.shape:
        inf = float("inf")
        return OutputReport(t.name, t.layer, t.kind, shape, n, inf, inf, 0.0, inf, None)
    a64 = a.astype(np.float64).reshape(n, -1)
    b64 = b.astype(np.float64).reshape(n, -1)
    if not (np.isfinite(a64).all() and np.isfinite(b64).all()):
        same = bool(np.array_equal(a64, b64, equal_nan=True))
        v = 0.0 if same else float("inf")
        return OutputReport(t.name, t.layer, t.kind, shape, n, v, v, 1.0 if same else 0.0, v, None)
    d = b64 - a64
    na, nb = float(np.linalg.norm(a64)), float(np.linalg.norm(b64))
    rel = _rel(float(np.linalg.norm(d)), na)
    per = [_rel(float(x), float(y)) for x, y in zip(np.linalg.norm(d, axis=1), np.linalg.norm(a64, axis=1))]
    if na > 0 and nb > 0:
        cos = float(np.dot(a64.ravel(), b64.ravel()) / (na * nb))
    else:
        cos = 1.0 if na == nb else 0.0
    top1 = None
    if t.axis is not None:
        ax = t.axis + 1 if t.axis >= 0 else t.axis  # +1: the stacked image axis
        if -a.ndim <= ax < a.ndim and a.shape[ax] > 1:
            top1 = float(np.mean(np.argmax(a, axis=ax) == np.argmax(b, axis=ax)))
    return OutputReport(t.name, t.layer, t.kind, shape, n, rel, max(per), cos, float(np.abs(d).max(initial=0.0)), top1)


def _parse_pair(pair) -> tuple[bytes, bytes]:
    """(prototxt, model) where model may be bytes, a path or a caffecompress Model."""
    from .model import Model

    if isinstance(pair, Model):
        if not pair.prototxt:
            raise ValueError("verify needs the deploy prototxt; this model carries none")
        pair = (pair.prototxt, pair)
    proto, model = pair
    if isinstance(model, Model):
        from .caffe import caffemodel_bytes

        model = caffemodel_bytes(model)
    return _proto_bytes(proto), _model_bytes(model)


def compare(
    original,
    candidate,
    images: str | os.PathLike | Sequence[np.ndarray] | None = None,
    *,
    mean: float | Sequence[float] | np.ndarray | None = None,
    scale: float | None = None,
    swap_rb: bool = False,
    size: tuple[int, int] | None = None,
) -> list[OutputReport]:
    """Run two nets on the same inputs through OpenCV 4.x and compare them.

    Parameters
    ----------
    original, candidate : tuple or Model
        ``(prototxt, caffemodel)`` where the prototxt is text (str/bytes) or a
        path and the caffemodel is bytes, a path (``str``/``Path``) or a
        :class:`caffecompress.Model`; or a Model carrying its prototxt. The
        candidate's prototxt is normally the original's.
    images : folder, sequence of arrays or None
        Input images (BGR like ``cv2.imread``); None uses :func:`sample_images` of
        :data:`HELDOUT_IMAGES` (images the bundled calibration set does not hold).
    mean, scale, swap_rb :
        Preprocessing, see :func:`make_blob` (defaults: 127.5, 1/128, False).
    size : (int, int), optional
        ``(width, height)`` to feed instead of the prototxt's input size.

    Returns
    -------
    list of OutputReport
        One per compared blob, in a stable order (Softmax inputs first in
        prototxt order, then outputs).

    Raises
    ------
    ValueError
        When the prototxt declares no input shape and ``size`` is not given.
    """
    proto_a, model_a = _parse_pair(original)
    proto_b, model_b = _parse_pair(candidate)
    spec = net_spec(proto_a)
    if images is None:
        # never the calibration images: fidelity is reported on inputs
        # calibration did not see
        imgs = sample_images(HELDOUT_IMAGES)
    elif isinstance(images, (str, os.PathLike)):
        imgs = load_images(images)
    else:
        imgs = list(images)
    if not spec.inputs:
        raise ValueError("the prototxt declares no input shape (Input layer, input_shape or input_dim)")
    feeds = {}
    for name, shp in spec.inputs.items():
        shp = tuple(shp)
        if len(shp) < 3:
            raise ValueError(f"input {name!r}: need C, H, W, got shape {shp}")
        if size is not None:
            shp = shp[:-2] + (int(size[1]), int(size[0]))
        feeds[name] = make_blob(imgs, shp, mean=mean, scale=scale, swap_rb=swap_rb)

    net_a = load_net(proto_a, model_a)
    targets = _targets(spec, net_a)
    layers = [t.layer for t in targets]
    outs_a = run_net(net_a, feeds, layers)
    del net_a
    net_b = load_net(proto_b, model_b)
    outs_b = run_net(net_b, feeds, layers)
    return [_metrics(t, a, b) for t, a, b in zip(targets, outs_a, outs_b)]


def max_rel_error(reports: Iterable[OutputReport]) -> float:
    """The largest batch relative L2 error over the compared blobs (0.0 if none)."""
    return max((r.rel_l2 for r in reports), default=0.0)


def format_reports(reports: Sequence[OutputReport]) -> str:
    """A plain-text table of the reports (one line per compared blob)."""
    head = f"{'blob':<24} {'kind':<16} {'shape':<18} {'rel L2':>10} {'worst img':>10} {'cosine':>10} {'top-1':>6}"
    lines = [head, "-" * len(head)]
    for r in reports:
        shp = "x".join(str(s) for s in r.shape)
        t1 = "-" if r.top1 is None else f"{r.top1:.3f}"
        lines.append(
            f"{r.name[:24]:<24} {r.kind:<16} {shp[:18]:<18} {r.rel_l2:>10.3g} {r.rel_l2_worst:>10.3g} {r.cosine:>10.6f} {t1:>6}"
        )
    return "\n".join(lines)

