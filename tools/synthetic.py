"""Trained-like synthetic Caffe models, resampled from the statistics of real ones.

Compression figures (clustering SSE, entropy, Huffman sizes) are meaningless
on Gaussian weights: trained conv/fc blobs are peaked and heavy-tailed, and
their spread shrinks with fan-in. This tool therefore

1. reads every trained model of the zoo (``fit`` sub-command), standardises
   each conv / fc weight blob and each bias, pools them per layer kind (each
   blob contributing at most a fixed number of values, so one big fc layer
   does not dominate) and keeps the pooled empirical quantile function;
2. fits ``log(std) = a + b * log(fan_in)`` over the real weight blobs of
   each kind, and the bias spread relative to the weight spread;
3. records all of it in the small ``tools/zoo_stats.json`` (committed), so
   building a model later does not need the zoo;
4. draws new blobs by inverse-CDF sampling of the pooled quantile function
   (linear between quantiles, exponential tails beyond the last ones, so
   no value repeats at the extremes) with a fixed seed, scaled to the fitted
   std for the layer's fan-in.

The zoo holds no trained BatchNorm/Scale statistics, so those blobs are
drawn from simple documented laws (they are stored losslessly by the
compressor, so their realism does not move compression figures). PReLU
slopes come from the zoo's real PReLU layers.

Usage::

    python tools/synthetic.py fit                    # rewrite tools/zoo_stats.json from the zoo
    python tools/synthetic.py vgg16 /tmp/vgg16.caffemodel
    python tools/synthetic.py build NET.prototxt OUT.caffemodel [--seed S]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from caffecompress.model import Layer, Model  # noqa: E402

STATS_PATH = Path(__file__).with_name("zoo_stats.json")
ZOO = Path(os.environ.get("CAFFE_ZOO", ROOT.parent / "shared" / "caffe-zoo"))
VGG16_PROTOTXT = "prototxt/vgg16_deploy.prototxt"

CONV_TYPES = {"Convolution", "Deconvolution", "ConvolutionDepthwise", "DepthwiseConvolution"}
FC_TYPES = {"InnerProduct", "Embed"}
_PER_BLOB_CAP = 20000  # values a single blob may add to a pooled distribution
_CHUNK = 1 << 22  # sample in chunks of 4M values to bound temporary memory

__all__ = [
    "fit_zoo_stats",
    "load_stats",
    "trained_like",
    "infer_blob_shapes",
    "model_from_prototxt",
    "make_vgg16",
]


# --------------------------------------------------------------------------
# Fitting the zoo statistics
# --------------------------------------------------------------------------


def _zoo_models(zoo: Path) -> list[Path]:
    """Trained V2 caffemodels of the zoo (V1 re-saves of the same nets are skipped)."""
    rows = list(csv.DictReader(open(zoo / "MANIFEST.tsv"), delimiter="\t"))
    return [zoo / r["path"] for r in rows if r["path"].endswith(".caffemodel") and r["format"].startswith("V2")]


def _kind(layer_type: str | None) -> str | None:
    if layer_type in CONV_TYPES:
        return "conv"
    if layer_type in FC_TYPES:
        return "fc"
    return None


def _fan_in(kind: str, shape: tuple) -> int:
    # conv (out, in/group, kh, kw): fan-in = in/group * kh * kw; fc (out, in)
    return int(np.prod(shape[1:])) if len(shape) > 1 else 1


def _quantile_table(values: np.ndarray, n_points: int) -> dict:
    """Pooled quantiles at logit-spaced levels (dense in the tails).

    Levels are ``sigmoid(linspace(-lim, lim, n_points))`` with the outermost
    one near ``1/n`` (as far as the data reaches); only ``lim`` and the
    quantiles are stored, so the levels are recomputed exactly.
    """
    lim = math.log(max(values.size, 4) - 1.0)
    q = np.quantile(values, _levels(lim, n_points))
    return {"logit_lim": lim, "quantiles": [float(f"{x:.7g}") for x in q]}


def _levels(lim: float, n: int) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.linspace(-lim, lim, n)))


def fit_zoo_stats(zoo: Path = ZOO, n_points: int = 1025) -> dict:
    """Measure the zoo's conv/fc blob statistics (see the module docstring).

    Parameters
    ----------
    zoo : pathlib.Path
        The caffe-zoo folder (with MANIFEST.tsv).
    n_points : int
        Quantile points per pooled distribution.

    Returns
    -------
    dict
        JSON-able statistics, as stored in ``tools/zoo_stats.json``.
    """
    import caffecompress

    rng = np.random.default_rng(0)
    pools = {"conv": [], "fc": []}
    bias_pools = {"conv": [], "fc": []}
    rows = {"conv": [], "fc": []}  # (fan_in, std, mean, bias_std/std, bias_mean/bias_std)
    prelu = []
    sources = []
    for path in _zoo_models(zoo):
        model = caffecompress.read_caffemodel(path)
        sources.append(str(path.relative_to(zoo)))
        for lay in model.layers:
            if lay.type == "PReLU" and lay.blobs:
                prelu.append(lay.blobs[0].ravel().astype(np.float64))
            kind = _kind(lay.type)
            if kind is None or not lay.blobs:
                continue
            w = lay.blobs[0].astype(np.float64).ravel()
            if w.size < 64 or w.std() == 0:
                continue
            mu, sd = w.mean(), w.std()
            z = (w - mu) / sd
            if z.size > _PER_BLOB_CAP:
                z = rng.choice(z, _PER_BLOB_CAP, replace=False)
            pools[kind].append(z)
            bratio = bmean = float("nan")
            if len(lay.blobs) > 1 and lay.blobs[1].size >= 4:
                b = lay.blobs[1].astype(np.float64).ravel()
                if b.std() > 0:
                    bias_pools[kind].append((b - b.mean()) / b.std())
                    bratio, bmean = b.std() / sd, b.mean() / b.std()
            rows[kind].append((_fan_in(kind, lay.blobs[0].shape), sd, mu / sd, bratio, bmean))
    stats = {
        "about": "pooled standardised conv/fc blob distributions and fan-in scaling of trained zoo models; "
        "written by `python tools/synthetic.py fit`",
        "sources": sources,
        "kinds": {},
    }
    for kind in ("conv", "fc"):
        r = np.array(rows[kind], dtype=np.float64)
        x, y = np.log(r[:, 0]), np.log(r[:, 1])
        b, a = np.polyfit(x, y, 1)
        resid = y - (a + b * x)
        pooled = np.concatenate(pools[kind])
        bias = np.concatenate(bias_pools[kind])
        ok = np.isfinite(r[:, 3])
        z = pooled
        stats["kinds"][kind] = {
            "n_blobs": int(len(r)),
            "n_pooled": int(pooled.size),
            "fan_in_range": [int(r[:, 0].min()), int(r[:, 0].max())],
            "log_std_fit": {"a": float(a), "b": float(b), "resid_sd": float(resid.std())},
            "mean_over_std": {"median": float(np.median(r[:, 2])), "sd": float(r[:, 2].std())},
            "excess_kurtosis_pooled": float(((z - z.mean()) ** 4).mean() / z.var() ** 2 - 3),
            **_quantile_table(pooled, n_points),
            "bias": {
                "std_over_weight_std": float(np.median(r[ok, 3])),
                "mean_over_std": float(np.median(r[ok, 4])),
                **_quantile_table(bias, 257),
            },
        }
    stats["prelu"] = _quantile_table(np.concatenate(prelu), 129)
    return stats


def load_stats(path: Path = STATS_PATH) -> dict:
    """The committed zoo statistics."""
    return json.loads(Path(path).read_text())


# --------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------


def _inverse_cdf(u: np.ndarray, levels: np.ndarray, q: np.ndarray, k: int = 8) -> np.ndarray:
    """Quantile function: linear between table points, exponential tails outside."""
    out = np.interp(u, levels, q)
    lo, hi = levels[0], levels[-1]
    m = u < lo
    if m.any():
        s = (q[k] - q[0]) / math.log(levels[k] / lo)
        out[m] = q[0] - s * np.log(lo / u[m])
    m = u > hi
    if m.any():
        s = (q[-1] - q[-1 - k]) / math.log((1 - levels[-1 - k]) / (1 - hi))
        out[m] = q[-1] + s * np.log((1 - hi) / (1 - u[m]))
    return out


def _draw(n: int, table: dict, rng: np.random.Generator, out: np.ndarray, scale: float, shift: float) -> None:
    q = np.asarray(table["quantiles"], dtype=np.float64)
    levels = _levels(table["logit_lim"], q.size)
    flat = out.reshape(-1)
    for s in range(0, n, _CHUNK):
        e = min(n, s + _CHUNK)
        u = rng.random(e - s)
        # u == 0 is possible in principle and has no finite quantile
        np.maximum(u, np.finfo(np.float64).tiny, out=u)
        v = _inverse_cdf(u, levels, q)
        v *= scale
        v += shift
        flat[s:e] = v


def weight_std(kind: str, fan_in: int, stats: dict | None = None) -> float:
    """The fitted std of a trained weight blob of ``kind`` with this fan-in."""
    st = (stats or load_stats())["kinds"][kind]["log_std_fit"]
    return float(math.exp(st["a"] + st["b"] * math.log(max(fan_in, 1))))


def trained_like(shape, kind: str, rng: np.random.Generator, *, stats: dict | None = None,
                 role: str = "weight", fan_in: int | None = None) -> np.ndarray:
    """A float32 blob drawn like a trained one of the same layer kind.

    Parameters
    ----------
    shape : tuple of int
        Caffe blob shape (conv ``(out, in/group, kh, kw)``, fc ``(out, in)``,
        bias ``(out,)``).
    kind : {"conv", "fc"}
        Layer kind whose pooled zoo distribution to resample.
    rng : numpy.random.Generator
        Seeded generator (the result is a pure function of its state).
    stats : dict, optional
        Zoo statistics (default: ``tools/zoo_stats.json``).
    role : {"weight", "bias"}
        Which blob of the layer.
    fan_in : int, optional
        For a bias: the fan-in of its layer's weights (sets its scale).

    Returns
    -------
    numpy.ndarray
        float32, C-contiguous, of ``shape``.
    """
    stats = stats or load_stats()
    ks = stats["kinds"][kind]
    shape = tuple(int(s) for s in shape)
    n = int(np.prod(shape)) if shape else 1
    out = np.empty(shape, dtype=np.float32)
    if role == "weight":
        fan = _fan_in(kind, shape) if fan_in is None else fan_in
        fit = ks["log_std_fit"]
        # per-layer spread varies around the fit as in the zoo (clipped at 1 sd)
        noise = float(np.clip(rng.standard_normal(), -1, 1)) * fit["resid_sd"]
        sd = weight_std(kind, fan, stats) * math.exp(noise)
        mean = ks["mean_over_std"]["median"] * sd
        _draw(n, ks, rng, out, sd, mean)
    elif role == "bias":
        fan = fan_in if fan_in is not None else 1
        b = ks["bias"]
        sd = weight_std(kind, fan, stats) * b["std_over_weight_std"]
        _draw(n, b, rng, out, sd, b["mean_over_std"] * sd)
    else:
        raise ValueError(f"role must be 'weight' or 'bias', not {role!r}")
    return out


# --------------------------------------------------------------------------
# Shapes from a prototxt
# --------------------------------------------------------------------------

_V1_TYPE_NAMES = {
    "CONVOLUTION": "Convolution", "DECONVOLUTION": "Deconvolution", "INNER_PRODUCT": "InnerProduct",
    "POOLING": "Pooling", "RELU": "ReLU", "DROPOUT": "Dropout", "SOFTMAX": "Softmax", "LRN": "LRN",
    "CONCAT": "Concat", "ELTWISE": "Eltwise", "FLATTEN": "Flatten", "SPLIT": "Split", "SIGMOID": "Sigmoid",
    "TANH": "TanH", "POWER": "Power", "SLICE": "Slice", "BNLL": "BNLL", "ABSVAL": "AbsVal", "MVN": "MVN",
    "THRESHOLD": "Threshold", "EXP": "Exp", "SOFTMAX_LOSS": "SoftmaxWithLoss", "ACCURACY": "Accuracy",
    "DATA": "Data", "IMAGE_DATA": "ImageData", "HDF5_DATA": "HDF5Data", "MEMORY_DATA": "MemoryData",
}
_PASS_THROUGH = {
    "ReLU", "PReLU", "ELU", "Sigmoid", "TanH", "Dropout", "LRN", "BatchNorm", "Scale", "Bias", "Softmax",
    "Power", "AbsVal", "BNLL", "Exp", "Log", "Threshold", "MVN", "Normalize", "Clip", "Swish", "ReLU6",
    "Split", "Silence", "Eltwise",
}


def _spec_text(prototxt_path) -> str:
    """V2 prototxt text: through our schema (any generation, upgraded) when available."""
    text = Path(prototxt_path).read_text()
    try:
        import caffecompress

        netdef = caffecompress.read_prototxt(prototxt_path)
        net = getattr(netdef, "net", None)
        if net is not None:
            return str(net)
    except Exception:  # the schema layer is optional here: fall back to V1/V2 text
        pass
    return text


def _ints(msg, key) -> list[int]:
    return [int(float(v)) for v in msg.all(key)] if msg is not None else []


def _pair(msg, one: str, h: str, w: str, default: int) -> tuple[int, int]:
    vals = _ints(msg, one)
    hv, wv = _ints(msg, h), _ints(msg, w)
    if hv or wv:
        return (hv[-1] if hv else default), (wv[-1] if wv else default)
    if not vals:
        return default, default
    return vals[0], vals[-1] if len(vals) > 1 else vals[0]


def _conv_out(size, k, s, p, d):
    return None if size is None else (size + 2 * p - (d * (k - 1) + 1)) // s + 1


def infer_blob_shapes(prototxt_path) -> tuple[str, list[tuple[str, str, list[tuple]]]]:
    """Learned-blob shapes of every layer of a deploy net, in Caffe's blob order.

    Handles Convolution/Deconvolution (groups, dilation), InnerProduct (axis,
    transpose), BatchNorm, Scale, Bias, PReLU, Normalize, Embed; propagates
    shapes through pooling, concat, flatten, reshape, slice, crop and
    element-wise layers (unknown spatial sizes stay unknown; only channel
    counts are needed for conv weights).

    Returns
    -------
    (str, list)
        Net name and ``[(layer name, V2 type, [blob shapes])]`` for every layer.
    """
    from textformat import parse_prototxt_text

    root = parse_prototxt_text(_spec_text(prototxt_path))
    shapes: dict[str, list] = {}
    names = [str(v) for v in root.all("input")]
    ishapes = [[int(float(d)) for d in s.all("dim")] for s in root.all("input_shape")]
    flat = [int(float(d)) for d in root.all("input_dim")]
    for k, nm in enumerate(names):
        shapes[nm] = ishapes[k] if k < len(ishapes) else flat[4 * k : 4 * k + 4]
    out = []
    for rec in root.all("layer") + root.all("layers"):
        name = str(rec.get("name", ""))
        typ = str(rec.get("type", ""))
        typ = _V1_TYPE_NAMES.get(typ, typ)
        bottoms, tops = [str(b) for b in rec.all("bottom")], [str(t) for t in rec.all("top")]
        inc = rec.get("include")
        if inc is not None and str(inc.get("phase", "TEST")) == "TRAIN":
            continue
        ins = [shapes.get(b) for b in bottoms]
        x = ins[0] if ins else None
        blobs: list[tuple] = []
        res: list | None = None
        if typ == "Input":
            ip = rec.get("input_param")
            shp = ip.all("shape") if ip is not None else []
            for j, t in enumerate(tops):
                shapes[t] = [int(float(d)) for d in shp[min(j, len(shp) - 1)].all("dim")]
            out.append((name, typ, []))
            continue
        if typ in CONV_TYPES:
            cp = rec.get("convolution_param")
            nout = _ints(cp, "num_output")[-1]
            group = (_ints(cp, "group") or [1])[-1]
            kh, kw = _pair(cp, "kernel_size", "kernel_h", "kernel_w", 1)
            sh, sw = _pair(cp, "stride", "stride_h", "stride_w", 1)
            ph, pw = _pair(cp, "pad", "pad_h", "pad_w", 0)
            dil = _ints(cp, "dilation") or [1]
            dh, dw = dil[0], dil[-1]
            cin = x[1]
            if typ == "Deconvolution":
                blobs.append((cin, nout // group, kh, kw))
                hh = None if x[2] is None else sh * (x[2] - 1) + dh * (kh - 1) + 1 - 2 * ph
                ww = None if x[3] is None else sw * (x[3] - 1) + dw * (kw - 1) + 1 - 2 * pw
            else:
                blobs.append((nout, cin // group, kh, kw))
                hh, ww = _conv_out(x[2], kh, sh, ph, dh), _conv_out(x[3], kw, sw, pw, dw)
            if str(cp.get("bias_term", "true")).lower() != "false":
                blobs.append((nout,))
            res = [x[0], nout, hh, ww]
        elif typ == "InnerProduct":
            ipp = rec.get("inner_product_param")
            nout = _ints(ipp, "num_output")[-1]
            axis = (_ints(ipp, "axis") or [1])[-1]
            k = int(np.prod(x[axis:]))
            transpose = str(ipp.get("transpose", "false")).lower() == "true"
            blobs.append((k, nout) if transpose else (nout, k))
            if str(ipp.get("bias_term", "true")).lower() != "false":
                blobs.append((nout,))
            res = list(x[:axis]) + [nout]
        elif typ == "Embed":
            ep = rec.get("embed_param")
            nout, nin = _ints(ep, "num_output")[-1], _ints(ep, "input_dim")[-1]
            blobs.append((nin, nout))
            if str(ep.get("bias_term", "true")).lower() != "false":
                blobs.append((nout,))
            res = list(x) + [nout]
        elif typ == "BatchNorm":
            blobs += [(x[1],), (x[1],), (1,)]
        elif typ == "Scale":
            sp = rec.get("scale_param")
            if len(bottoms) == 1:
                blobs.append((x[1],))
            if sp is not None and str(sp.get("bias_term", "false")).lower() == "true":
                blobs.append((x[1],))
        elif typ == "Bias" and len(bottoms) == 1:
            blobs.append((x[1],))
        elif typ == "PReLU":
            pp = rec.get("prelu_param")
            shared = pp is not None and str(pp.get("channel_shared", "false")).lower() == "true"
            blobs.append(() if shared else (x[1],))
        elif typ == "Normalize":
            npm = rec.get("norm_param")
            shared = npm is not None and str(npm.get("channel_shared", "true")).lower() == "true"
            blobs.append((1,) if shared else (x[1],))
        # output shapes of parameter-free layers
        if res is None:
            res = _propagate(typ, rec, ins, x)
        for j, t in enumerate(tops):
            if isinstance(res, tuple):  # several tops
                shapes[t] = res[j] if j < len(res) else None
            else:
                shapes[t] = res
        out.append((name, typ, blobs))
    return str(root.get("name", "")), out


def _propagate(typ, rec, ins, x):
    if x is None:
        return None
    if typ in _PASS_THROUGH:
        return list(x)
    if typ == "Pooling":
        pp = rec.get("pooling_param")
        if pp is not None and str(pp.get("global_pooling", "false")).lower() == "true":
            return [x[0], x[1], 1, 1]
        kh, kw = _pair(pp, "kernel_size", "kernel_h", "kernel_w", 1)
        sh, sw = _pair(pp, "stride", "stride_h", "stride_w", 1)
        ph, pw = _pair(pp, "pad", "pad_h", "pad_w", 0)
        floor = pp is not None and str(pp.get("ceil_mode", "true")).lower() == "false"

        def size(n, k, s, p):
            if n is None:
                return None
            o = ((n + 2 * p - k) // s if floor else -(-(n + 2 * p - k) // s)) + 1
            if p and (o - 1) * s >= n + p:
                o -= 1
            return o

        return [x[0], x[1], size(x[2], kh, sh, ph), size(x[3], kw, sw, pw)]
    if typ == "Concat":
        cp = rec.get("concat_param")
        axis = (_ints(cp, "axis") or _ints(cp, "concat_dim") or [1])[-1]
        res = list(x)
        vals = [s[axis] if s is not None else None for s in ins]
        res[axis] = None if None in vals else sum(vals)
        return res
    if typ == "Flatten":
        fp = rec.get("flatten_param")
        axis = (_ints(fp, "axis") or [1])[-1]
        rest = x[axis:]
        return list(x[:axis]) + [None if None in rest else int(np.prod(rest))]
    if typ == "Reshape":
        rp = rec.get("reshape_param")
        dims = _ints(rp.get("shape"), "dim") if rp is not None and rp.get("shape") is not None else []
        res = [x[i] if d == 0 and i < len(x) else d for i, d in enumerate(dims)]
        if -1 in res and None not in x:
            known = int(np.prod([d for d in res if d != -1]))
            res[res.index(-1)] = int(np.prod(x)) // max(known, 1)
        return [None if d == -1 else d for d in res]
    if typ == "Slice":
        sp = rec.get("slice_param")
        axis = (_ints(sp, "axis") or _ints(sp, "slice_dim") or [1])[-1]
        n_tops = len(rec.all("top"))
        pts = _ints(sp, "slice_point")
        total = x[axis]
        if total is None:
            return tuple([None] * n_tops)
        edges = [0] + (pts or [total * (i + 1) // n_tops for i in range(n_tops - 1)]) + [total]
        return tuple(list(x[:axis]) + [edges[i + 1] - edges[i]] + list(x[axis + 1 :]) for i in range(n_tops))
    if typ == "Crop" and len(ins) > 1 and ins[1] is not None:
        cp = rec.get("crop_param")
        axis = (_ints(cp, "axis") or [2])[-1]
        return list(x[:axis]) + list(ins[1][axis:])
    if typ == "Permute":
        order = _ints(rec.get("permute_param"), "order")
        order = order + [i for i in range(len(x)) if i not in order]
        return [x[i] for i in order]
    return None  # unknown: downstream parametric layers will say so


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------


def model_from_prototxt(prototxt_path, seed: int = 0, *, stats: dict | None = None) -> Model:
    """A :class:`Model` with trained-like blobs for every learned layer of a deploy net.

    Parameters
    ----------
    prototxt_path : str or os.PathLike
        Deploy prototxt (V1 or V2; V0 through our schema when available).
    seed : int
        Seeds one generator; blobs are drawn in layer order, so the model is
        a pure function of (prototxt, seed, statistics).
    stats : dict, optional
        Zoo statistics (default: ``tools/zoo_stats.json``).

    Returns
    -------
    Model
        Layers in prototxt order (layers without blobs included), with V2
        types and the prototxt text verbatim; no skeleton (the writer builds
        the records from names, types and blobs).
    """
    stats = stats or load_stats()
    rng = np.random.default_rng(seed)
    name, specs = infer_blob_shapes(prototxt_path)
    layers = []
    for lname, typ, shapes in specs:
        blobs = []
        kind = _kind(typ)
        if kind is not None:
            w = trained_like(shapes[0], kind, rng, stats=stats)
            fan = _fan_in(kind, shapes[0])
            if typ == "Deconvolution":
                fan = int(np.prod(shapes[0][:1] + shapes[0][2:]))
            blobs.append(w)
            for s in shapes[1:]:
                blobs.append(trained_like(s, kind, rng, stats=stats, role="bias", fan_in=fan))
        elif typ == "BatchNorm":
            c = shapes[0][0]
            # moving sums with scale factor 1: mean ~ spread of pre-BN activations, var > 0
            blobs = [
                (rng.standard_normal(c) * 0.5).astype(np.float32),
                np.exp(rng.normal(-0.5, 0.7, c)).astype(np.float32),
                np.ones(1, np.float32),
            ]
        elif typ in ("Scale", "Bias"):
            for j, s in enumerate(shapes):
                gamma = typ == "Scale" and j == 0
                v = rng.normal(1.0, 0.3, s) if gamma else rng.normal(0.0, 0.3, s)
                blobs.append(np.asarray(v, dtype=np.float32).reshape(s))
        elif typ == "PReLU":
            out = np.empty(shapes[0], np.float32)
            _draw(out.size, stats["prelu"], rng, out, 1.0, 0.0)
            blobs.append(out)
        elif typ == "Normalize":
            blobs.append(np.full(shapes[0], 20.0, np.float32))  # SSD's usual initial scale
        layers.append(Layer(lname, typ, blobs))
    return Model(layers=layers, name=name, prototxt=Path(prototxt_path).read_text(),
                 source=str(prototxt_path))


def make_vgg16(out_path, *, seed: int = 0, zoo: Path = ZOO, prototxt: Path | None = None) -> Model:
    """Write a VGG-16 ``.caffemodel`` (138,357,544 parameters, ~528 MB) with trained-like weights.

    Parameters
    ----------
    out_path : str or os.PathLike
        Where to write (never inside the repository: it is large).
    seed : int
        Generator seed.
    zoo : pathlib.Path
        Zoo folder holding ``prototxt/vgg16_deploy.prototxt`` (the real V1 deploy net).
    prototxt : pathlib.Path, optional
        Use this prototxt instead.

    Returns
    -------
    Model
        The model that was written.
    """
    from caffecompress.caffe import write_caffemodel

    model = model_from_prototxt(prototxt or (zoo / VGG16_PROTOTXT), seed)
    write_caffemodel(model, out_path)
    return model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit", help="measure the zoo and rewrite tools/zoo_stats.json")
    f.add_argument("--zoo", type=Path, default=ZOO)
    v = sub.add_parser("vgg16", help="write the VGG-16-sized model")
    v.add_argument("out", type=Path)
    v.add_argument("--seed", type=int, default=0)
    b = sub.add_parser("build", help="trained-like weights for any deploy prototxt")
    b.add_argument("prototxt", type=Path)
    b.add_argument("out", type=Path)
    b.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.cmd == "fit":
        stats = fit_zoo_stats(a.zoo)
        STATS_PATH.write_text(json.dumps(stats, separators=(",", ":")) + "\n")
        for k, s in stats["kinds"].items():
            print(k, s["n_blobs"], "blobs,", s["n_pooled"], "pooled values; log std fit", s["log_std_fit"],
                  "excess kurtosis", round(s["excess_kurtosis_pooled"], 2))
    elif a.cmd == "vgg16":
        m = make_vgg16(a.out, seed=a.seed)
        print(f"{a.out}: {m.num_params} parameters, {os.path.getsize(a.out)} bytes")
    else:
        from caffecompress.caffe import write_caffemodel

        m = model_from_prototxt(a.prototxt, a.seed)
        write_caffemodel(m, a.out)
        print(f"{a.out}: {m.num_params} parameters, {os.path.getsize(a.out)} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
