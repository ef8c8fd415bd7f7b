"""Calibration inputs and the per-layer input statistics they give.

Inputs come from the bundled calibration images (the six scikit-image
photographs ``verify`` always used, in ``caffecompress/data/calib``), a
folder of images, or input blobs (``.npy`` for one-input nets, ``.npz``
mapping input names to blobs). Images are widened with flips and random
crops with contrast, brightness and grey changes (a fixed seed) up to a
row budget, because a handful of rows makes
the later layers' input Hessians rank-deficient and error-compensating
rounding then fits the calibration set (measured in
``../shared/reference/fidelity-frontier.md``).

Rows are split by *source image* into a fit part (Hessians and means that
drive the rounding and bias correction) and a validation part (the
per-layer check of whether a technique helps at all): crops of one photo
never sit on both sides.

Statistics per weight layer, from OpenCV forwards of the float net
(:mod:`caffecompress.runtime`): the im2col'd input rows of a convolution
(groups, stride, pad and dilation honoured) or the flattened input of an
inner product; ``H = X^T X`` and the column means over the fit rows, and a
sample of validation rows kept as they are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np

from . import runtime
from .errors import CalibrationError

__all__ = ["Calibration", "LayerStats", "calibration_inputs", "layer_stats", "im2col", "producers"]

#: Rows the bundled images are widened to (small inputs get twice as many).
DEFAULT_ROWS = 24
_SMALL_INPUT = 64 * 64
#: im2col positions kept per image and layer (a fixed-seed sample beyond):
#: about _FIT_POSITIONS over all fit rows, within these bounds per image.
_POSITIONS = 1024
_MIN_POSITIONS = 256
_FIT_POSITIONS = 1 << 14
#: Validation rows kept per layer (each candidate's check is a product with them).
_VAL_ROWS = 512
#: Hessian entries (all layers together, float64) kept; layers beyond keep
#: validation rows only and are rounded to the nearest level (no GPTQ).
_H_BUDGET = 1 << 25


@dataclass
class Calibration:
    """Calibration input blobs and their fit/validation split.

    Attributes
    ----------
    feeds : dict of str -> numpy.ndarray
        Input name -> ``(N, C, H, W)`` float32.
    fit, val : numpy.ndarray
        Row indices of the two parts.
    source : str
        What the rows are (for the container and ``info``).
    preprocessing : dict
        ``mean``, ``scale``, ``swap_rb`` as applied to images.
    """

    feeds: dict
    fit: np.ndarray
    val: np.ndarray
    source: str
    preprocessing: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Number of rows."""
        return int(next(iter(self.feeds.values())).shape[0])

    def rows(self, idx) -> dict:
        """The feeds restricted to rows ``idx``."""
        idx = np.asarray(idx)
        return {k: np.ascontiguousarray(v[idx]) for k, v in self.feeds.items()}


def bundled_images() -> list[np.ndarray]:
    """The bundled calibration images (BGR or gray ``uint8``), sorted by name."""
    cv2 = runtime._cv2()
    folder = resources.files("caffecompress") / "data" / "calib"
    out = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.lower().endswith(".jpg"):
            buf = np.frombuffer(entry.read_bytes(), np.uint8)
            im = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
            if im is not None:
                out.append(im)
    return out


def _augment(images: list, rows: int, seed: int = 0) -> tuple[list, list]:
    """``rows`` variants of ``images``: originals, flips, then photometrically changed random crops.

    The photometric changes widen what the rows cover: on a development set
    of scikit-image images outside both the calibration and the reported
    held-out sets (grass, gravel, cell, page, text, logo, horse,
    microaneurysms), the worst ratio of development error to the 0.02
    target over 8 zoo models fell from 1.89 to 1.64 at the same mean ratio.

    Returns the variants and, per variant, the index of its source image.
    """
    rng = np.random.default_rng(seed)
    out, src = [], []
    k = 0
    while len(out) < rows:
        for i, im in enumerate(images):
            if len(out) >= rows:
                break
            if k == 0:
                v = im
            elif k == 1:
                v = im[:, ::-1]
            else:
                h, w = im.shape[:2]
                f = rng.uniform(0.55, 0.9)
                ch, cw = max(2, int(h * f)), max(2, int(w * f))
                y0 = int(rng.integers(0, h - ch + 1))
                x0 = int(rng.integers(0, w - cw + 1))
                v = im[y0 : y0 + ch, x0 : x0 + cw]
                if rng.random() < 0.5:
                    v = v[:, ::-1]
                v = _photometric(v, rng)
            out.append(np.ascontiguousarray(v))
            src.append(i)
        k += 1
    return out, src


def _photometric(v: np.ndarray, rng) -> np.ndarray:
    """A contrast, brightness and (colour images, half the time) grey change of one crop."""
    f = v.astype(np.float32)
    if f.ndim == 3 and f.shape[2] >= 3 and rng.random() < 0.5:
        f = np.repeat(f[..., :3].mean(axis=2, keepdims=True), 3, axis=2)
    c = rng.uniform(0.5, 1.5)
    b = rng.uniform(-40.0, 40.0)
    m = f.mean()
    f = (f - m) * c + m + b
    return np.clip(f, 0, 255).astype(np.uint8)


def _split_by_source(src: list[int], n_sources: int) -> tuple[np.ndarray, np.ndarray]:
    """Every third source image (2, 5, ...) validates; at least one source each side."""
    src = np.asarray(src)
    if n_sources < 2:
        idx = np.arange(src.size)
        return idx[idx % 3 != 2], idx[idx % 3 == 2]
    val_src = {s for s in range(n_sources) if s % 3 == 2} or {n_sources - 1}
    is_val = np.isin(src, sorted(val_src))
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def _check_blob(name, blob, shape, path):
    if blob.ndim != 4 or tuple(blob.shape[1:]) != tuple(shape[-3:]):
        raise CalibrationError(
            f"input {name!r}: blob of shape {tuple(blob.shape)} does not fit the net's "
            f"N x {'x'.join(str(d) for d in shape[-3:])}", path=path)
    if blob.shape[0] < 2:
        raise CalibrationError(f"input {name!r}: need at least 2 rows, got {blob.shape[0]}", path=path)
    if not np.isfinite(blob).all():
        raise CalibrationError(f"input {name!r}: the blob holds NaN or Inf", path=path)


def _blob_inputs(path: Path, inputs: dict) -> dict:
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise CalibrationError(f"cannot read input blobs: {exc}", path=path) from None
    if isinstance(data, np.ndarray):
        if len(inputs) != 1:
            raise CalibrationError(
                f"a .npy holds one blob; this net has inputs {', '.join(inputs)}: use .npz", path=path)
        feeds = {next(iter(inputs)): data}
    else:
        with data:
            missing = [k for k in inputs if k not in data.files]
            if missing:
                raise CalibrationError(f"no blob for input(s) {', '.join(missing)}", path=path)
            feeds = {k: data[k] for k in inputs}
    out = {}
    for k, v in feeds.items():
        v = np.asarray(v)
        if v.dtype.kind not in "fiu":
            raise CalibrationError(f"input {k!r}: blob dtype {v.dtype} is not numeric", path=path)
        v = v.astype(np.float32)
        _check_blob(k, v, inputs[k], path)
        out[k] = v
    ns = {v.shape[0] for v in out.values()}
    if len(ns) != 1:
        raise CalibrationError("the input blobs have different row counts", path=path)
    return out


def calibration_inputs(
    inputs: dict,
    calib=None,
    *,
    mean=None,
    scale=None,
    swap_rb: bool = False,
    rows: int | None = None,
) -> Calibration:
    """Build the calibration rows for a net with declared ``inputs``.

    Parameters
    ----------
    inputs : dict of str -> tuple of int
        The net's inputs (``N, C, H, W``).
    calib : None, folder, ``.npy``/``.npz`` path, or sequence of images
        None: the bundled images.
    mean, scale, swap_rb :
        Preprocessing of images (as :func:`caffecompress.runtime.make_blob`).
    rows : int, optional
        Rows to widen images to (flips and crops); default 24, 48 for inputs
        of at most 64 x 64 pixels. Blob inputs are used as given.

    Raises
    ------
    CalibrationError
        An empty folder, unreadable images, a blob of the wrong shape or with
        NaN, or a net without declared inputs.
    """
    if not inputs:
        raise CalibrationError("the prototxt declares no input shape (Input layer, input_shape or input_dim)")
    for name, shp in inputs.items():
        if len(shp) < 3 or any(int(d) <= 0 for d in shp[-3:]):
            raise CalibrationError(f"input {name!r}: need a C, H, W shape, got {tuple(shp)}")
    prep = {"mean": runtime.DEFAULT_MEAN if mean is None else mean,
            "scale": runtime.DEFAULT_SCALE if scale is None else float(scale), "swap_rb": bool(swap_rb)}
    path = None
    if isinstance(calib, (str, os.PathLike)):
        path = Path(calib)
        if path.suffix.lower() in (".npy", ".npz"):
            if not path.is_file():
                raise CalibrationError("no such file", path=path)
            feeds = _blob_inputs(path, inputs)
            n = next(iter(feeds.values())).shape[0]
            idx = np.arange(n)
            return Calibration(feeds, idx[idx % 3 != 2], idx[idx % 3 == 2], f"blobs {path.name} ({n} rows)",
                               {"blobs": True})
        if not path.is_dir():
            raise CalibrationError("not a folder of images nor a .npy/.npz file", path=path)
        try:
            images = runtime.load_images(path)
        except FileNotFoundError:
            raise CalibrationError("the folder holds no readable image", path=path) from None
        what = f"folder {path} ({len(images)} images"
    elif calib is None:
        images = bundled_images()
        what = f"bundled ({len(images)} images"
    else:
        images = [np.asarray(im) for im in calib]
        what = f"given ({len(images)} images"
    if not images:
        raise CalibrationError("no calibration images", path=path)
    if rows is None:
        small = min(int(s[-1]) * int(s[-2]) for s in inputs.values()) <= _SMALL_INPUT
        rows = 2 * DEFAULT_ROWS if small else DEFAULT_ROWS
    rows = max(int(rows), len(images), 2)
    variants, src = _augment(images, rows)
    feeds = {}
    for name, shp in inputs.items():
        try:
            feeds[name] = runtime.make_blob(variants, shp, mean=prep["mean"], scale=prep["scale"], swap_rb=swap_rb)
        except ValueError as exc:
            raise CalibrationError(f"input {name!r}: {exc}", path=path) from None
    fit, val = _split_by_source(src, len(images))
    what += f", widened to {rows} rows by flips and photometrically changed crops; {len(fit)} fit, {len(val)} validation)"
    return Calibration(feeds, fit, val, what, prep)


# ---------------------------------------------------------------- statistics


@dataclass
class LayerStats:
    """Input statistics of one weight layer, per group.

    Attributes
    ----------
    H : numpy.ndarray or None
        ``(groups, cols, cols)`` float64 sum of ``x x^T`` over the fit rows
        (None when over the Hessian budget).
    n_fit : int
    mean_fit : numpy.ndarray
        ``(groups, cols)`` float64 column means over the fit rows.
    Xval : numpy.ndarray
        ``(groups, rows, cols)`` float32 validation rows (a fixed-seed sample).
    """

    groups: int
    cols: int
    H: np.ndarray | None
    n_fit: int
    mean_fit: np.ndarray
    Xval: np.ndarray


def im2col(x: np.ndarray, geom, *, positions: int | None = None, seed: int = 0,
           limit: int | None = None) -> np.ndarray:
    """Rows of a convolution's input windows: ``(groups, positions, C/g * kh * kw)``.

    Column order is the weight blob's ``(c, i, j)``, so a group's output is
    ``rows @ W_g.reshape(out_g, -1).T``.

    Parameters
    ----------
    x : numpy.ndarray
        One image's input ``(C, H, W)`` (or ``(1, C, H, W)``).
    geom : ConvGeometry
    positions : int, optional
        Keep at most this many output positions (fixed-seed sample).
    limit : int, optional
        Return only the first this many of those rows (the same rows as
        slicing the full result, without gathering the rest).
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 4:
        x = x[0]
    c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), g = geom.kernel, geom.stride, geom.pad, geom.dilation, geom.group
    ekh, ekw = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if h + 2 * ph < ekh or w + 2 * pw < ekw:
        return np.zeros((g, 0, (c // g) * kh * kw), np.float32)
    ho, wo = (h + 2 * ph - ekh) // sh + 1, (w + 2 * pw - ekw) // sw + 1
    pos = np.arange(ho * wo)
    if positions is not None and pos.size > positions:
        pos = np.sort(np.random.default_rng(seed).choice(pos.size, positions, replace=False))
    if limit is not None:
        pos = pos[:limit]
    yo, xo = np.divmod(pos, wo)
    # input coordinates of each kept window's taps (P, kh, kw), read from the
    # unpadded input: padding the whole input for every image and layer cost
    # more than the gather of a sample of its windows (RFB-320: 0.5 s a compress)
    yi = (yo * sh - ph)[:, None, None] + (np.arange(kh) * dh)[None, :, None]
    xi = (xo * sw - pw)[:, None, None] + (np.arange(kw) * dw)[None, None, :]
    inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
    flat = np.clip(yi, 0, h - 1) * w + np.clip(xi, 0, w - 1)
    sel = x.reshape(c, h * w)[:, flat]  # (C, P, kh, kw)
    if not inside.all():
        sel[:, ~inside] = 0.0  # the zero padding
    cg = c // g
    return np.ascontiguousarray(sel.reshape(g, cg, pos.size, kh * kw).transpose(0, 2, 1, 3)).reshape(
        g, pos.size, cg * kh * kw)


def producers(graph, names) -> dict:
    """Where each weight layer's input can be fetched.

    Returns
    -------
    dict of str -> (str, str)
        Layer name -> ``("input", blob)`` for a net input, or ``("layer",
        producer)`` for the OpenCV layer whose first output is the bottom
        (after in-place layers). Layers whose input cannot be fetched (a
        non-first top of a multi-output layer) are left out.
    """
    out = {}
    wanted = set(names)
    for i, lay in enumerate(graph.layers):
        if lay.name not in wanted or not lay.bottoms:
            continue
        b = lay.bottoms[0]
        src = None
        for prev in reversed(graph.layers[:i]):
            if b in prev.tops:
                src = ("layer", prev.name) if prev.tops.index(b) == 0 and prev.type != "Input" else None
                if prev.type == "Input":
                    src = ("input", b)
                break
        else:
            if b in graph.inputs:
                src = ("input", b)
        if src is not None:
            out[lay.name] = src
    return out


def _rows_of(node, x: np.ndarray, seed: int, positions: int = _POSITIONS, limit: int | None = None) -> np.ndarray:
    """Input rows of one weight layer for one image: ``(groups, rows, cols)``
    (the first ``limit`` of them when given)."""
    if node.conv is not None:
        return im2col(x, node.conv, positions=positions, seed=seed, limit=limit)
    # InnerProduct: flatten from `axis` (the image axis counts as the first)
    axis = node.axis if node.axis >= 0 else x.ndim + node.axis
    return np.ascontiguousarray(x.reshape(int(np.prod(x.shape[:axis])), -1)[None][:, :limit], dtype=np.float32)


def layer_stats(net, graph, calib: Calibration, names, *, budget: int = _H_BUDGET,
                outputs: Sequence[str] = (), kept: dict | None = None) -> dict:
    """Statistics of the named weight layers' inputs, from one pass over the rows.

    Parameters
    ----------
    net : cv2.dnn.Net
        The float net.
    graph : NetGraph
    calib : Calibration
    names : iterable of str
        Convolution (not Deconvolution) and InnerProduct layers.
    outputs : sequence of str
        More layers to fetch on every row forwarded (the compared outputs).
    kept : dict, optional
        Filled with row -> those layers' outputs (``(1,) + shape`` each), for
        the rows the pass forwarded: the reference outputs of the same net
        without a forward of their own.

    Returns
    -------
    dict of str -> LayerStats
        Layers whose inputs could be fetched.
    """
    nodes = {n.name: n for n in graph.layers}
    names = [n for n in names if n in nodes and nodes[n].type != "Deconvolution"
             and (nodes[n].conv is not None or nodes[n].type == "InnerProduct")]
    src = producers(graph, names)
    names = [n for n in names if n in src]
    fetch = sorted({s[1] for s in src.values() if s[0] == "layer"})
    fetch += [o for o in outputs if o not in fetch]
    acc: dict = {}
    val_rows: dict = {n: [] for n in names}
    val_cap = {n: 0 for n in names}
    is_val = np.zeros(calib.n, bool)
    is_val[calib.val] = True
    positions = _positions(calib)
    for r in range(calib.n):
        # a validation row past every layer's cap adds nothing: no forward
        todo = [n for n in names if not is_val[r] or val_cap[n] < _VAL_ROWS]
        if not todo:
            continue
        feeds = calib.rows([r])
        # every row fetches the same blobs (what OpenCV fuses may depend on them)
        outs = dict(zip(fetch, runtime.run_net(net, feeds, fetch))) if fetch else {}
        if kept is not None:
            kept[r] = [outs[o][0] for o in outputs]
        for name in todo:
            kind, what = src[name]
            x = feeds[what][0] if kind == "input" else outs[what][0]
            rows = _rows_of(nodes[name], x, seed=r, positions=positions,
                            limit=_VAL_ROWS - val_cap[name] if is_val[r] else None)
            if is_val[r]:
                if rows.shape[1]:  # already limited to what the cap leaves
                    val_rows[name].append(rows)
                    val_cap[name] += rows.shape[1]
                continue
            a = acc.setdefault(name, {})
            g, _, cols = rows.shape
            if "H" not in a:
                a["H"] = np.zeros((g, cols, cols), np.float64) if _h_ok(g, cols, acc, budget) else None
                a["buf"] = []
            if a["H"] is not None:
                a["buf"].append(rows)
                if sum(b.shape[1] for b in a["buf"]) >= cols:
                    _add_products(a)
            s = rows.sum(axis=1, dtype=np.float64)  # the same additions as a float64 copy's sum
            a["s"] = a.get("s", 0.0) + s
            a["n"] = a.get("n", 0) + rows.shape[1]
    out = {}
    for name in names:
        a = acc.get(name, {})
        if a.get("H") is not None and a["buf"]:
            _add_products(a)
        if not a.get("n") or not val_rows[name]:
            continue
        xv = np.concatenate(val_rows[name], axis=1)
        out[name] = LayerStats(
            groups=xv.shape[0], cols=xv.shape[2], H=a.get("H"), n_fit=int(a["n"]),
            mean_fit=a["s"] / a["n"], Xval=xv)
    return out


def _positions(calib: Calibration) -> int:
    """im2col positions sampled per image and layer."""
    # the Hessians' cost is rows x cols^2: many small images need fewer positions each
    return int(min(_POSITIONS, max(_MIN_POSITIONS, _FIT_POSITIONS // max(len(calib.fit), 1))))


def _add_products(a: dict) -> None:
    """Add the buffered rows' ``X^T X`` into the float64 Hessian.

    Rows are taken in blocks of at least ``cols`` (an image's rows, or
    several images' where each has fewer): each block's product runs in
    float32 and is summed in float64. A block per image of an inner
    product's single row made a ``cols x cols`` product and addition per
    image (RFB-320's two 2304-column layers of 20 rows an image: 0.7 s).
    """
    rows = a["buf"][0] if len(a["buf"]) == 1 else np.concatenate(a["buf"], axis=1)
    a["buf"] = []
    np.add(a["H"], np.matmul(rows.transpose(0, 2, 1), rows), out=a["H"])


def _h_ok(g, cols, acc, budget) -> bool:
    used = sum(v["H"].size for v in acc.values() if isinstance(v, dict) and v.get("H") is not None)
    return used + g * cols * cols <= budget
