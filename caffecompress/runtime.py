"""OpenCV 4.x as the net runtime: the only module of the package that imports ``cv2``.

It loads a net from a Model through a private temporary file (or memory
buffers), turns images into input blobs (the preprocessing ``verify`` and
calibration share), and runs a batch one image at a time, returning any
named layer's output, intermediate ones included. cv2 is imported lazily,
inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "DEFAULT_MEAN",
    "DEFAULT_SCALE",
    "SAMPLE_IMAGES",
    "HELDOUT_IMAGES",
    "available",
    "sample_images",
    "load_images",
    "make_blob",
    "load_net",
    "model_net",
    "run_net",
    "compared_outputs",
]

DEFAULT_MEAN = 127.5
DEFAULT_SCALE = 1.0 / 128.0
# scikit-image images shipped inside its wheel (no download needed). The
# first six are also the bundled calibration set (caffecompress/data/calib);
# fidelity is reported on the held-out ones, which calibration never sees.
SAMPLE_IMAGES = ("astronaut", "coffee", "chelsea", "camera", "rocket", "coins")
HELDOUT_IMAGES = ("cat", "hubble_deep_field", "immunohistochemistry", "retina", "colorwheel",
                  "clock", "moon", "brick")
_IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def available() -> bool:
    """True when OpenCV 4.x with its Caffe importer can be imported."""
    try:
        _cv2()
    except Exception:  # noqa: BLE001  (any import failure means: not available)
        return False
    return True


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


def load_net(prototxt: str | bytes | os.PathLike, model: bytes | os.PathLike, *, fuse: bool = True,
             winograd: bool = True):
    """Load a ``cv2.dnn.Net`` from prototxt text and caffemodel bytes, in memory.

    Parameters
    ----------
    prototxt : str, bytes or os.PathLike
        Prototxt contents (str/bytes) or a path (``pathlib.Path``, or a
        one-line ``str`` naming an existing file).
    model : bytes, str or os.PathLike
        ``.caffemodel`` contents (bytes) or a path (``str``/``Path``).
    fuse : bool
        Let OpenCV fuse layers (its default). Without fusion every layer's
        own output can be fetched: OpenCV 4.14 hands out a stale blob for an
        in-place PReLU fused into its convolution when a Concat takes that
        blob (mtcnn det4's ``prelu3_1``).
    winograd : bool
        Let OpenCV run 3x3 convolutions by Winograd's transform (its
        default; it keeps a transformed copy of their weights, 64/9 their size).

    Returns
    -------
    cv2.dnn.Net

    Raises
    ------
    SchemaMismatchError
        OpenCV refuses the pair (its reason in one line).
    """
    cv2 = _cv2()

    if isinstance(prototxt, os.PathLike) and isinstance(model, os.PathLike):
        with _opencv("load this prototxt and caffemodel"):
            net = cv2.dnn.readNetFromCaffe(os.fspath(prototxt), os.fspath(model))
    else:
        proto = np.frombuffer(_proto_bytes(prototxt), dtype=np.uint8)
        weights = np.frombuffer(_model_bytes(model), dtype=np.uint8)
        with _opencv("load this prototxt and caffemodel"):
            net = cv2.dnn.readNetFromCaffe(proto, weights)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    if not fuse:
        net.enableFusion(False)
    if not winograd and hasattr(net, "enableWinograd"):  # (OpenCV 4.7 on; before it there was none)
        net.enableWinograd(False)
    return net



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
    if isinstance(net, _SplitNet) and net.tail.batchable:
        return net.run_batch(blobs, layers)
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
class _Target:
    name: str  # what the report calls it (a blob name)
    layer: str  # the OpenCV layer whose first output holds it
    kind: str  # "output" | "softmax-input" | "detection-input"
    axis: int | None  # class axis for top-1, or None


def compared_outputs(layers, inputs, net) -> list[_Target]:
    """The blobs fidelity is measured on: net outputs and Softmax inputs.

    A DetectionOutput layer is replaced by its inputs (its own output is a
    thresholded, sorted box list whose length changes with tiny score moves).

    Parameters
    ----------
    layers : sequence
        The net's layers in order, each with ``name``, ``type``, ``bottoms``,
        ``tops`` and ``softmax_axis`` (V2 type names).
    inputs : iterable of str
        Net input blob names (never compared).
    net : cv2.dnn.Net

    Returns
    -------
    list of _Target
        ``name`` (blob), ``layer`` (OpenCV layer whose first output holds
        it), ``kind`` and class ``axis``.
    """
    out_layers = list(net.getUnconnectedOutLayersNames())
    known = set(net.getLayerNames())
    by_name = {lay.name: (i, lay) for i, lay in enumerate(layers)}
    input_blobs = set(inputs)

    def producer(blob: str, before: int) -> str | None:
        # in-place layers rewrite a blob: the last writer before `before` holds it.
        # OpenCV hands out a layer's first output by layer name only, so a blob
        # that is another top of a multi-output layer (Slice) is not compared.
        for lay in reversed(layers[:before]):
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

    for i, lay in enumerate(layers):
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


#: A memory-backed folder for the nets' transient files, where there is one.
_SHM = "/dev/shm"


def _scratch(nbytes: int) -> str | None:
    """Where a net's transient caffemodel of ``nbytes`` goes: a memory-backed
    folder with room for four such files, else the system's temporary folder (None).

    The file lives for one load, so its pages are memory either way; on a
    disk-backed folder the kernel also starts writing them out. The
    fidelity-targeted default loads ~60 nets of a ResNet-50 (3.4 GB in all),
    and writing them took 5.2 s in /tmp on this machine, 2.6 s in /dev/shm.
    Containers often mount a 64 MB /dev/shm: the room check keeps them on
    the temporary folder.
    """
    try:
        st = os.statvfs(_SHM)
    except OSError:
        return None
    if st.f_bavail * st.f_frsize < 4 * nbytes or not os.access(_SHM, os.W_OK | os.X_OK):
        return None
    return _SHM


def model_net(model, prototxt: str | bytes | None = None, *, fuse: bool = True):
    """A ``cv2.dnn.Net`` of a :class:`~caffecompress.model.Model`, through memory only.

    Parameters
    ----------
    model : Model
        Weights (serialised to a dense ``.caffemodel`` in memory).
    prototxt : str or bytes, optional
        Deploy net text; default ``model.prototxt``.
    fuse : bool
        See :func:`load_net`.

    Returns
    -------
    cv2.dnn.Net, or an object with the methods :func:`run_net` and
    :func:`compared_outputs` use: where the net ends in a large fully
    connected tail (:mod:`caffecompress.headnet`), OpenCV runs the layers
    before it and NumPy the tail.
    """
    text = model.prototxt if prototxt is None else prototxt
    if not text:
        raise ValueError("running a net needs its deploy prototxt; this model carries none")
    proto = text if isinstance(text, bytes) else text.encode("utf-8")
    from . import headnet  # noqa: PLC0415

    # the fidelity pass loads tens of nets: below both sizes no tail can be
    # split and Winograd stays on, so the text is not parsed on every load
    # (ResNet-50's takes 22 ms)
    weights = sum(int(lay.blobs[0].size) for lay in model.layers if lay.blobs and lay.blobs[0] is not None)
    if weights < min(headnet.MIN_WEIGHTS, WINOGRAD_MAX_BYTES * 9 // (64 * 4)):
        return _plain_net(model, proto, fuse)
    graph = _graph(proto)
    split = _split_net(model, proto, fuse, graph) if graph is not None else None
    if split is not None:
        return split
    return _plain_net(model, proto, fuse, graph is None or _winograd_ok(graph, model, len(graph.layers)))


@functools.lru_cache(maxsize=64)
def _graph(proto: bytes):
    """The net's wiring (None where it cannot be parsed: OpenCV gives its own
    reason); cached, as the fidelity pass loads the same texts again and again."""
    from .caffe.graph import net_graph  # noqa: PLC0415
    from .errors import FormatError  # noqa: PLC0415

    try:
        return net_graph(proto)
    except FormatError:
        return None


#: Most bytes of Winograd-transformed 3x3 convolution weights a net loaded
#: for the fidelity pass may hold: OpenCV 4.x keeps 64/9 times those weights
#: in every net it loads (VGG-16's: 350 MB, 0.63x its file, on each of the
#: pass's tens of loads). Above it the nets run without Winograd: VGG-16's
#: forwards take 0.32 s an image instead of 0.19 s.
WINOGRAD_MAX_BYTES = 64 << 20


def _winograd_ok(graph, model, stop: int) -> bool:
    """Whether the 3x3 convolutions among ``graph.layers[:stop]`` are small enough for Winograd."""
    sizes = {lay.name: int(lay.blobs[0].size) for lay in model.layers
             if lay.blobs and lay.blobs[0] is not None}
    n = 0
    for lay in graph.layers[:stop]:
        g = lay.conv
        if (lay.type == "Convolution" and g is not None and g.kernel == (3, 3) and g.stride == (1, 1)
                and g.dilation == (1, 1) and g.group == 1):
            n += sizes.get(lay.name, 0)
    return n * 4 * 64 / 9 <= WINOGRAD_MAX_BYTES


def _plain_net(model, proto: bytes, fuse: bool, winograd: bool = True):
    """The whole net in OpenCV (see :func:`model_net`)."""
    from .caffe import caffemodel_chunks  # noqa: PLC0415

    chunks = caffemodel_chunks(model)
    # through a private temporary folder: OpenCV 4.x reads a caffemodel file
    # twice as fast as the same bytes in memory (VGG-16: 0.85 s against
    # 1.9 s), and the chunks are written without a joined copy of the file
    try:
        where = _scratch(sum(memoryview(c).nbytes for c in chunks))
        with tempfile.TemporaryDirectory(prefix="caffecompress-", dir=where) as d:
            pp, pw = Path(d, "net.prototxt"), Path(d, "net.caffemodel")
            pp.write_bytes(proto)
            with open(pw, "wb") as f:
                for c in chunks:
                    f.write(c)
            return load_net(pp, pw, fuse=fuse, winograd=winograd)
    except OSError:  # no writable temporary folder: through memory
        return load_net(proto, b"".join(chunks), fuse=fuse, winograd=winograd)


def _split_net(model, proto: bytes, fuse: bool, graph):
    """OpenCV for the trunk and NumPy for a large fully connected tail, or None."""
    from . import headnet  # noqa: PLC0415
    from .caffe.graph import prefix_prototxt  # noqa: PLC0415

    start = headnet.tail_start(graph, model)
    if start is None:
        return None
    tail = headnet.Tail(graph, start, model)
    feeder = None
    for lay in reversed(graph.layers[:start]):
        if tail.feed in lay.tops:
            if lay.type != "Input":
                if lay.tops.index(tail.feed) != 0:
                    return None  # OpenCV hands out a layer's first output only
                feeder = lay.name
            break
    if feeder is None and any(lay.type != "Input" for lay in graph.layers[:start]):
        return None  # layers beside the tail that it does not read: keep them all in OpenCV
    trunk = None
    if feeder is not None:
        text = prefix_prototxt(proto, start)
        if text is None:
            return None
        names = set(tail.names)
        sub = dataclasses.replace(model, layers=[lay for lay in model.layers if lay.name not in names],
                                  skeleton=b"")
        trunk = _plain_net(sub, text.encode("utf-8"), fuse, _winograd_ok(graph, model, start))
    return _SplitNet(trunk, tail, feeder)


class _SplitNet:
    """A trunk ``cv2.dnn.Net`` (or none: the tail reads a net input) and its NumPy tail.

    It answers what :func:`run_net` and :func:`compared_outputs` ask of a net.
    """

    def __init__(self, trunk, tail, feeder: str | None):
        self.trunk, self.tail, self.feeder = trunk, tail, feeder
        self._inputs: dict = {}

    def setInput(self, blob, name: str = "") -> None:  # noqa: N802 (OpenCV's name)
        self._inputs[name] = blob
        if self.trunk is not None:
            self.trunk.setInput(blob, name)

    def forward(self, names) -> list:
        # the inputs set are one image (OpenCV's blobs): a batch of one row
        return [v[0] for v in self.run_batch(self._inputs, names)]

    def run_batch(self, blobs: dict, layers) -> list:
        """:func:`run_net` with the tail run once on every row (one product, not one a row)."""
        from .errors import SchemaMismatchError  # noqa: PLC0415

        layers = list(layers)
        n = next(iter(blobs.values())).shape[0]
        own = set(self.tail.names)
        head = [name for name in layers if name in own]
        body = [name for name in layers if name not in own]
        got: dict = {}
        if self.trunk is None:
            if body:
                raise SchemaMismatchError(f"this net has no layer {body[0]!r}")
            x = blobs.get(self.tail.feed)
        else:
            fetch = body + ([self.feeder] if head and self.feeder not in body else [])
            got = dict(zip(fetch, run_net(self.trunk, blobs, fetch))) if fetch else {}
            x = got.get(self.feeder)
            if x is not None:  # (n, b, ...) a row's forwards -> (n * b, ...) rows of one batch
                x = x.reshape((-1,) + x.shape[2:])
        if head:
            for name, v in self.tail.run(x, head).items():
                got[name] = v.reshape((n, -1) + v.shape[1:])  # as one forward a row stacks them
        return [got[name] for name in layers]

    def getLayerNames(self) -> list:  # noqa: N802
        return (list(self.trunk.getLayerNames()) if self.trunk is not None else []) + list(self.tail.names)

    def getUnconnectedOutLayersNames(self) -> list:  # noqa: N802
        outs = list(self.trunk.getUnconnectedOutLayersNames()) if self.trunk is not None else []
        return [n for n in outs if n != self.feeder] + list(self.tail.outputs)
