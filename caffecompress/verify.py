"""Fidelity: run an original and a candidate Caffe net through OpenCV 4.x dnn.

This is the only module of the package that imports ``cv2`` (lazily, inside
the functions that need it). Both nets are loaded from memory buffers
(``cv2.dnn.readNetFromCaffe(bufferProto, bufferModel)``): no temporary files.

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

import contextlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "OutputReport",
    "NetSpec",
    "parse_prototxt_text",
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

DEFAULT_MEAN = 127.5
DEFAULT_SCALE = 1.0 / 128.0
# scikit-image images shipped inside its wheel (no download needed).
SAMPLE_IMAGES = ("astronaut", "coffee", "chelsea", "camera", "rocket", "coins")
_IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}

# V1 ``layers { type: ENUM }`` names for the two types this module looks for.
_V1_TYPES = {"SOFTMAX": "Softmax", "INPUT": "Input"}


# --------------------------------------------------------------------------
# Minimal protobuf text-format reader (names, types, bottoms, tops, shapes).
# --------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s+|\#[^\n]*|(?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')"""
    r"""|(?P<punct>[{}<>:\[\],;])|(?P<word>[^\s{}<>:\[\],;"'#]+)"""
)


class TextMessage:
    """A parsed text-format message: field name -> list of values, in file order.

    Values are ``str`` (strings unquoted, scalars as written) or
    :class:`TextMessage` for sub-messages. Only as much of the text format as
    Caffe prototxts use is understood; it never needs the schema.
    """

    __slots__ = ("fields",)

    def __init__(self):
        self.fields: list[tuple[str, object]] = []

    def all(self, key: str) -> list:
        """Every value of ``key`` in order."""
        return [v for k, v in self.fields if k == key]

    def get(self, key: str, default=None):
        """The last value of ``key`` (text format: last one wins), or ``default``."""
        vals = self.all(key)
        return vals[-1] if vals else default


def _cv2():
    """Import OpenCV 4.x, or say plainly what to install.

    OpenCV 5 removed ``readNetFromCaffe``, so only 4.x can run Caffe models.
    """
    from .errors import MissingDependencyError

    try:
        import cv2
    except ImportError as exc:
        raise MissingDependencyError(
            "verifying and running nets needs OpenCV 4.x: pip install 'caffecompress[verify]' "
            f"(opencv-python-headless<5) [{exc}]"
        ) from exc
    if not hasattr(cv2.dnn, "readNetFromCaffe"):
        raise MissingDependencyError(
            f"OpenCV {cv2.__version__} has no Caffe importer (removed in OpenCV 5): "
            "install opencv-python-headless<5"
        )
    return cv2


def _tokens(text: str) -> list[tuple[str, str]]:
    out = []
    pos = 0
    n = len(text)
    while pos < n:
        m = _TOKEN.match(text, pos)
        if m is None:  # unterminated quote or stray character
            raise ValueError(f"prototxt: cannot tokenise near offset {pos}: {text[pos:pos + 30]!r}")
        pos = m.end()
        if m.lastgroup == "str":
            s = m.group("str")[1:-1]
            out.append(("str", bytes(s, "utf-8").decode("unicode_escape") if "\\" in s else s))
        elif m.lastgroup == "punct":
            out.append(("p", m.group("punct")))
        elif m.lastgroup == "word":
            out.append(("w", m.group("word")))
    return out


def parse_prototxt_text(text: str | bytes) -> TextMessage:
    """Parse protobuf text format into a :class:`TextMessage` tree.

    Parameters
    ----------
    text : str or bytes
        A Caffe ``.prototxt`` (any generation: V0, V1, V2).

    Returns
    -------
    TextMessage
        The root message.

    Raises
    ------
    ValueError
        On unbalanced braces or a malformed field.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    toks = _tokens(text)
    root = TextMessage()
    stack = [root]
    closers = []
    i = 0
    n = len(toks)
    while i < n:
        kind, val = toks[i]
        if kind == "p" and val in "}>":
            if len(stack) == 1 or closers[-1] != val:
                raise ValueError(f"prototxt: unbalanced {val!r}")
            stack.pop()
            closers.pop()
            i += 1
            continue
        if kind == "p" and val in ",;":
            i += 1
            continue
        if kind != "w":
            raise ValueError(f"prototxt: expected a field name, got {val!r}")
        key = val
        i += 1
        if i < n and toks[i] == ("p", ":"):
            i += 1
        if i >= n:
            raise ValueError(f"prototxt: field {key!r} has no value")
        kind, val = toks[i]
        if kind == "p" and val in "{<":
            msg = TextMessage()
            stack[-1].fields.append((key, msg))
            stack.append(msg)
            closers.append("}" if val == "{" else ">")
            i += 1
        elif kind == "p" and val == "[":
            i += 1
            while i < n and toks[i] != ("p", "]"):
                if toks[i] != ("p", ","):
                    stack[-1].fields.append((key, toks[i][1]))
                i += 1
            i += 1
        elif kind in ("w", "str"):
            # adjacent string literals concatenate
            if kind == "str":
                while i + 1 < n and toks[i + 1][0] == "str":
                    i += 1
                    val += toks[i][1]
            stack[-1].fields.append((key, val))
            i += 1
        else:
            raise ValueError(f"prototxt: bad value for {key!r}: {val!r}")
    if len(stack) != 1:
        raise ValueError("prototxt: missing closing brace")
    return root


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


def _dims(msg: TextMessage) -> tuple[int, ...]:
    return tuple(int(float(d)) for d in msg.all("dim"))


def net_spec(prototxt: str | bytes) -> NetSpec:
    """Read inputs and layer connectivity from prototxt text (V0, V1 or V2).

    Parameters
    ----------
    prototxt : str or bytes
        The prototxt text (not a path).

    Returns
    -------
    NetSpec
    """
    root = parse_prototxt_text(prototxt)
    spec = NetSpec()
    # Net-level inputs: `input` + `input_shape {dim}` or `input_dim` x4.
    names = [str(v) for v in root.all("input")]
    shapes = [_dims(s) for s in root.all("input_shape")]
    flat = [int(float(d)) for d in root.all("input_dim")]
    for k, nm in enumerate(names):
        if k < len(shapes):
            spec.inputs[nm] = shapes[k]
        elif len(flat) >= 4 * (k + 1):
            spec.inputs[nm] = tuple(flat[4 * k : 4 * k + 4])
    records = root.all("layer") + root.all("layers")
    for rec in records:
        if not isinstance(rec, TextMessage):
            continue
        inner = rec.get("layer")  # V0: layers { layer { name type } bottom top }
        head = inner if isinstance(inner, TextMessage) else rec
        name = str(head.get("name", ""))
        typ = str(head.get("type", ""))
        typ = _V1_TYPES.get(typ, typ)
        if typ.lower() == "softmax":
            typ = "Softmax"
        sm = head.get("softmax_param")
        axis = int(sm.get("axis", 1)) if isinstance(sm, TextMessage) else 1
        lay = LayerSpec(name, typ, [str(b) for b in rec.all("bottom")], [str(t) for t in rec.all("top")], axis)
        spec.layers.append(lay)
        if typ == "Input":
            ip = head.get("input_param")
            shp = ip.all("shape") if isinstance(ip, TextMessage) else []
            for j, top in enumerate(lay.tops):
                if shp:
                    spec.inputs[top] = _dims(shp[min(j, len(shp) - 1)])
    return spec


# --------------------------------------------------------------------------
# Images and preprocessing
# --------------------------------------------------------------------------


def _synthetic_image(seed: int, h: int = 256, w: int = 256) -> np.ndarray:
    """Deterministic smooth colour image, for when scikit-image is absent."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    chans = []
    for c in range(3):
        f1, f2 = 2 + seed + c, 3 + 2 * c
        chans.append(127.5 + 100 * np.sin(xx * f1 / w * np.pi) * np.cos(yy * f2 / h * np.pi))
    return np.clip(np.stack(chans, axis=-1), 0, 255).astype(np.uint8)


def sample_images(names: Sequence[str] = SAMPLE_IMAGES) -> list[np.ndarray]:
    """The bundled sample images as BGR (or gray) ``uint8`` arrays.

    Uses scikit-image's bundled data images; without scikit-image, returns
    deterministic synthetic images so verification still runs.

    Parameters
    ----------
    names : sequence of str
        ``skimage.data`` function names.

    Returns
    -------
    list of numpy.ndarray
        HxWx3 BGR (OpenCV's channel order) or HxW gray images.
    """
    try:
        import skimage.data as skd
    except ImportError:
        return [_synthetic_image(i) for i in range(len(names))]
    out = []
    for i, nm in enumerate(names):
        try:
            im = np.asarray(getattr(skd, nm)())
        except Exception:  # an image needing a download, or missing in this version
            im = _synthetic_image(i)
        if im.dtype == bool:
            im = im.astype(np.uint8) * 255
        if im.ndim == 3:
            im = im[..., :3][..., ::-1]  # RGB(A) -> BGR, as cv2.imread would give
        out.append(np.ascontiguousarray(im.astype(np.uint8)))
    return out


def load_images(folder: str | os.PathLike) -> list[np.ndarray]:
    """Read every image file of ``folder`` (sorted by name) with ``cv2.imread``.

    Raises
    ------
    FileNotFoundError
        If the folder holds no readable image.
    """
    cv2 = _cv2()

    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_EXTS)
    out = [im for im in (cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in files) if im is not None]
    if not out:
        raise FileNotFoundError(f"{folder}: no readable images")
    return out


def _to_channels(im: np.ndarray, c: int) -> np.ndarray:
    """HxW or HxWxK uint8/float -> HxWxc float32 (gray for c == 1, tiled for c > 3)."""
    im = np.asarray(im, dtype=np.float32)
    if im.ndim == 2:
        im = im[..., None]
    if im.shape[2] == 4:
        im = im[..., :3]
    if c == 1:
        return im.mean(axis=2, keepdims=True)
    if im.shape[2] == 1:
        im = np.repeat(im, 3, axis=2)
    reps = -(-c // im.shape[2])
    return np.tile(im, (1, 1, reps))[..., :c]


def make_blob(
    images: Iterable[np.ndarray],
    shape: Sequence[int],
    *,
    mean: float | Sequence[float] | np.ndarray | None = None,
    scale: float | None = None,
    swap_rb: bool = False,
) -> np.ndarray:
    """Turn images into an NCHW float32 input blob.

    Parameters
    ----------
    images : iterable of numpy.ndarray
        HxW or HxWxC images (BGR order for colour, as OpenCV reads them).
    shape : sequence of int
        ``(N, C, H, W)`` or ``(C, H, W)``; N is ignored (one row per image).
    mean : float, sequence of float or numpy.ndarray, optional
        Subtracted before scaling: a scalar, one value per channel (blob
        channel order), or a mean image (CxHxW or 1xCxHxW, resized to the
        input size). Default 127.5.
    scale : float, optional
        Multiplier applied after the mean. Default 1/128.
    swap_rb : bool
        Swap the first and third channel of colour images (BGR <-> RGB).

    Returns
    -------
    numpy.ndarray
        ``(len(images), C, H, W)`` float32.
    """
    cv2 = _cv2()

    shape = tuple(int(s) for s in shape)
    c, h, w = shape[-3:]
    mean = DEFAULT_MEAN if mean is None else mean
    scale = DEFAULT_SCALE if scale is None else float(scale)
    rows = []
    for im in images:
        im = np.asarray(im)
        if im.dtype == bool:
            im = im.astype(np.uint8) * 255
        if swap_rb and im.ndim == 3 and im.shape[2] >= 3:
            im = im[..., [2, 1, 0]]
        if im.dtype not in (np.uint8, np.uint16, np.float32):
            im = im.astype(np.float32)
        # resize in the image's own dtype, as cv2.dnn.blobFromImage does
        im = cv2.resize(np.ascontiguousarray(im), (w, h), interpolation=cv2.INTER_LINEAR)
        rows.append(_to_channels(im, c).transpose(2, 0, 1))
    if not rows:
        raise ValueError("no images to build an input blob from")
    blob = np.stack(rows).astype(np.float32)
    m = np.asarray(mean, dtype=np.float32)
    if m.ndim == 0:
        blob -= m
    elif m.ndim == 1:
        if m.size != c:
            raise ValueError(f"mean has {m.size} values, the net has {c} channels")
        blob -= m.reshape(1, c, 1, 1)
    else:
        m = m.reshape(m.shape[-3:])
        if m.shape[0] != c:
            raise ValueError(f"mean image has {m.shape[0]} channels, the net has {c}")
        if m.shape[1:] != (h, w):
            m = np.stack([cv2.resize(ch, (w, h), interpolation=cv2.INTER_LINEAR) for ch in m])
        blob -= m[None]
    blob *= np.float32(scale)
    return blob


# --------------------------------------------------------------------------
# Running nets
# --------------------------------------------------------------------------


def _as_bytes(x) -> bytes:
    if isinstance(x, os.PathLike):
        return Path(x).read_bytes()
    if isinstance(x, str):
        return x.encode("utf-8")
    return bytes(x)


def _proto_bytes(x) -> bytes:
    """Prototxt contents; a one-line ``str`` naming an existing file is read as a path."""
    if isinstance(x, str) and "\n" not in x and "{" not in x and os.path.isfile(x):
        return Path(x).read_bytes()
    return _as_bytes(x)


def _model_bytes(x) -> bytes:
    """Caffemodel contents; a ``str`` is a path (binary contents are never ``str``)."""
    if isinstance(x, str):
        return Path(x).read_bytes()
    return _as_bytes(x)


@contextlib.contextmanager
def _opencv(what: str):
    """Silence OpenCV's own log lines and turn ``cv2.error`` into one clear error."""
    cv2 = _cv2()

    from .errors import SchemaMismatchError

    log = cv2.utils.logging
    level = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_SILENT)
    try:
        yield
    except cv2.error as e:
        text = getattr(e, "err", "") or str(e)
        reason = " ".join(ln.strip(" >") for ln in text.splitlines() if ln.strip(" >"))
        raise SchemaMismatchError(f"OpenCV 4.x cannot {what}: {reason}") from None
    finally:
        log.setLogLevel(level)


def load_net(prototxt: str | bytes | os.PathLike, model: bytes | os.PathLike):
    """Load a ``cv2.dnn.Net`` from prototxt text and caffemodel bytes, in memory.

    Parameters
    ----------
    prototxt : str, bytes or os.PathLike
        Prototxt contents (str/bytes) or a path (``pathlib.Path``, or a
        one-line ``str`` naming an existing file).
    model : bytes, str or os.PathLike
        ``.caffemodel`` contents (bytes) or a path (``str``/``Path``).

    Returns
    -------
    cv2.dnn.Net

    Raises
    ------
    SchemaMismatchError
        OpenCV refuses the pair (its reason in one line).
    """
    cv2 = _cv2()

    proto = np.frombuffer(_proto_bytes(prototxt), dtype=np.uint8)
    weights = np.frombuffer(_model_bytes(model), dtype=np.uint8)
    with _opencv("load this prototxt and caffemodel"):
        net = cv2.dnn.readNetFromCaffe(proto, weights)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    return net


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


@dataclass
class _Target:
    name: str  # what the report calls it (a blob name)
    layer: str  # the OpenCV layer whose first output holds it
    kind: str  # "output" | "softmax-input" | "detection-input"
    axis: int | None  # class axis for top-1, or None


def _targets(spec: NetSpec, net) -> list[_Target]:
    """Blobs to compare: net outputs and Softmax inputs; DetectionOutput -> its inputs."""
    out_layers = list(net.getUnconnectedOutLayersNames())
    known = set(net.getLayerNames())
    by_name = {lay.name: (i, lay) for i, lay in enumerate(spec.layers)}
    input_blobs = set(spec.inputs)

    def producer(blob: str, before: int) -> str | None:
        # in-place layers rewrite a blob: the last writer before `before` holds it.
        # OpenCV hands out a layer's first output by layer name only, so a blob
        # that is another top of a multi-output layer (Slice) is not compared.
        for lay in reversed(spec.layers[:before]):
            if blob in lay.tops:
                return lay.name if lay.tops.index(blob) == 0 else None
        return None

    targets: list[_Target] = []
    seen = set()

    def add(name, layer, kind, axis):
        if layer is None or layer in seen or layer not in known or name in input_blobs:
            return
        seen.add(layer)
        targets.append(_Target(name, layer, kind, axis))

    for i, lay in enumerate(spec.layers):
        if lay.type == "Softmax" and lay.bottoms:
            add(lay.bottoms[0], producer(lay.bottoms[0], i), "softmax-input", lay.softmax_axis)
    for lname in out_layers:
        i, lay = by_name.get(lname, (None, None))
        if lay is not None and lay.type == "DetectionOutput":
            for b in lay.bottoms:
                add(b, producer(b, i), "detection-input", None)
            continue
        axis = lay.softmax_axis if (lay is not None and lay.type == "Softmax") else None
        name = lay.tops[0] if (lay is not None and lay.tops) else lname
        add(name, lname, "output", axis)
    return targets


def run_net(net, blobs: dict[str, np.ndarray], layers: Sequence[str]) -> list[np.ndarray]:
    """Forward the inputs one image at a time and return the named layers' outputs.

    Parameters
    ----------
    net : cv2.dnn.Net
    blobs : dict of str -> numpy.ndarray
        Input name -> NCHW array (all with the same N).
    layers : sequence of str
        Layers whose first output to fetch.

    Returns
    -------
    list of numpy.ndarray
        Per layer, the per-image outputs stacked on a new leading axis
        (``(N,) + output shape``). One image per forward pass, because many
        deploy nets hard-code batch 1 in Reshape/Flatten layers.
    """
    n = next(iter(blobs.values())).shape[0]
    per_layer: list[list[np.ndarray]] = [[] for _ in layers]
    for i in range(n):
        for name, blob in blobs.items():
            net.setInput(np.ascontiguousarray(blob[i : i + 1]), name)
        with _opencv("run this net (do the prototxt and the weights match?)"):
            outs = net.forward(list(layers))
        for acc, o in zip(per_layer, outs):
            acc.append(np.array(o, dtype=np.float32, copy=True))
    return [np.stack(acc) for acc in per_layer]


# --------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------


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


def _metrics(t: _Target, a: np.ndarray, b: np.ndarray) -> OutputReport:
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
        Input images (BGR like ``cv2.imread``); None uses :func:`sample_images`.
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
        imgs = sample_images()
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

