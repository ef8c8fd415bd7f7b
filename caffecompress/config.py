"""Compression settings: presets, per-kind flags, per-layer overrides, TOML files.

A :class:`Settings` holds what the user asked for; :func:`plan_blob` turns it
into the concrete treatment of one blob (lossless, or bits + pruning + init).
Which blobs are compressed is decided by *role*: the weight blob of a
parametric layer (convolution, inner product, embedding, recurrent weights)
above a size floor. Everything else (biases, BatchNorm/Scale statistics,
PReLU slopes) is stored losslessly.
"""

from __future__ import annotations

import fnmatch
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

__all__ = [
    "PRESETS",
    "CONV_TYPES",
    "FC_TYPES",
    "RECURRENT_TYPES",
    "Settings",
    "BlobPlan",
    "blob_kind",
    "plan_blob",
    "load_toml",
    "make_settings",
]

PRESETS = ("lossless", "default", "deep-compression")

CONV_TYPES = frozenset(
    {"Convolution", "Deconvolution", "ConvolutionDepthwise", "DepthwiseConvolution"}
)
FC_TYPES = frozenset({"InnerProduct", "Embed"})
RECURRENT_TYPES = frozenset({"LSTM", "RNN"})

# Deep Compression (Han et al. 2016, Table 4, AlexNet) without retraining:
# fraction of weights pruned per kind. The first conv layer is fragile (84 %
# kept), later conv layers keep ~37 %, the big fc layers 9 %, the classifier 25 %.
DC_PRUNE = {"first_conv": 0.16, "conv": 0.63, "fc": 0.91, "last_fc": 0.75}
DC_BITS = {"conv": 8, "fc": 5}

# The default preset: data-free, near-lossless at the output. Per blob, the
# smallest bit width whose weight SQNR reaches the target (plus SIZE_BONUS_DB
# for small blobs). Measured over the zoo through OpenCV
# (benchmarks/zoo_ratios.py --presets default), max relative L2 error / geometric-
# mean ratio over the models of 100 KB and more: 34 dB 0.049 / 4.32x,
# 35 dB 0.048 / 4.20x, 36 dB 0.034 / 4.10x. 36 dB keeps a margin under the
# 0.05 promise that small engine changes cannot eat.
DEFAULT_SQNR_DB = 36.0
# Small blobs get a higher target: a few extra bits there cost few bytes, and
# the zoo's small layers (depthwise 3x3, 1x1 squeezes, first convs) are the
# ones whose errors the rest of the net amplifies (measured per layer on
# UltraFace and YuFaceDetectNet through OpenCV). (size below, extra dB)
SIZE_BONUS_DB = ((4096, 12.0), (32768, 6.0))
# The net's first conv (its errors travel through every later layer) and its
# last fc (the logits a Softmax or a regressor reads directly) aim higher too.
POSITION_BONUS_DB = {"first_conv": 6.0, "last_fc": 6.0}
# The default preset with OpenCV 4.x and a deploy prototxt: compress to this
# output error on the calibration inputs (held-out images land near it:
# benchmarks/results_table.py).
DEFAULT_MAX_ERROR = 0.02
DEFAULT_MIN_BITS = 3
DEFAULT_MAX_BITS = 12
# The data-free rule of the grid method (``--data-free``, and the default
# without OpenCV): one absolute step for every weight blob (equal noise per
# weight, the reverse water-filling optimum when weights are equally
# sensitive), finer for small blobs (GRID_SIZE_FINER: (size below, divisor);
# cheap, and the ones errors propagate from), and finer where the blob's SQNR
# would fall under a floor (nets of small weights; no zoo blob reaches it).
# Tuned on the bundled calibration images, never on the held-out ones
# (benchmarks/tune_data_free.py, zoo models >= 100 KB; geometric-mean ratio at
# worst / geometric-mean error): step 2^-9.5: 4.67x at 0.037 / 0.012, with the
# size divisors 4.46x at 0.030 / 0.008; 2^-10: 4.35x at 0.035 / 0.008, with
# them 4.16x at 0.023 / 0.006; 2^-10.5: 4.06x at 0.020 / 0.006. The k-means
# SQNR rule (36 dB) gave 4.10x at 0.034 / 0.010. Dividing the first conv's and
# last fc's steps by 2 as well changed nothing; capping the SQNR (coarser steps
# for blobs of large weights) raised the worst error to 0.085-0.20; scaling
# the step by fan-in^(+-1/4) or making fc steps coarser by sqrt(2) or 2 moved
# along the same ratio/error curve or below it.
DEFAULT_STEP = 2.0 ** -9.5
GRID_SIZE_FINER = ((4096, 4.0), (32768, 2.0))
DEFAULT_GRID_MIN_SQNR_DB = 24.0
# Dependent (trellis) quantisation in the data-free rule: the union grid's
# step is DQ_STEP_SCALE times the plain rule's (the two interleaved
# quantisers each span twice that), so the output error stays near the plain
# rule's while the indices carry fewer bits. Same tuning (calibration images,
# zoo >= 100 KB, ratio at worst / geometric-mean error): plain 4.455x at
# 0.030 / 0.0084; DQ at 0.5: 4.44x at 0.027 / 0.0065; 0.57: 4.56x at 0.028 /
# 0.0084 (+2.4 % at equal error, every model +1.2-3.0 %); 0.65: 4.69x at
# 0.038 / 0.0102; 0.75: 4.84x at 0.040 / 0.0108.
# On where the compiled trellis runs (numba): the NumPy lock-step twin costs
# a fixed ~4096 array steps a blob, ~50x slower on a zoo model's small blobs.
DEFAULT_DQ = True
DQ_STEP_SCALE = 0.57
# The lossy presets store the blobs of kind "other" (biases, BatchNorm and
# Scale factors, PReLU slopes) rounded to this many float32 mantissa bits
# (relative error < 2**-13 a value), packed (engine/floatpack.py): over the
# 17,306 such values of the 18 zoo models, 16.8 bits a value against 30.4 for
# LZMA of the exact floats (27.8 packed exact; 8 bits 12.8, 10 bits 14.8).
# Output error of that rounding alone on the development images, the worst
# compared output, per zoo model (benchmarks/dev_other_rounding.py): 8 bits
# 7.8e-5..1.6e-2, 10 bits 2.3e-5..4.3e-3, 12 bits 5.3e-6..6.9e-4 (ultraface:
# BatchNorm means cancel against their inputs); the fidelity-targeted default
# measures it with the weights.
OTHER_MANTISSA_BITS = 12
# The fidelity-targeted default rounds a k-means codebook of 2**b levels to
# b + CODEBOOK_MANTISSA_EXTRA mantissa bits before rounding the weights onto
# it (a level moves by < 2**-(b + 11) of its magnitude, ~1/1000 of the level
# spacing), so the stored codebook packs to ~b + 15 bits a level, not 32.
# Development images (benchmarks/dev_fidelity.py --set
# config.CODEBOOK_MANTISSA_EXTRA=N, max_error 0.02, zoo >= 100 KB; ratio /
# worst error over the target): levels packed unrounded 6.538x / 1.32; +10:
# 6.563x / 1.32 (kept: the same allocations); +8: 6.617x / 1.80 and +6:
# 6.576x / 2.09 (lenet-mnist's allocation moves to points that generalise
# worse; the cheaper levels change which points are tried).
CODEBOOK_MANTISSA_EXTRA = 10


def default_dq() -> bool:
    """Whether the data-free rule uses dependent quantisation here
    (:data:`DEFAULT_DQ`, and numba installed: ``pip install 'caffecompress[fast]'``)."""
    from .engine.trellis import have_compiled  # noqa: PLC0415

    return DEFAULT_DQ and have_compiled()


@dataclass(frozen=True)
class Settings:
    """What the user asked for; all fields optional on top of a preset.

    Parameters
    ----------
    preset : str
        ``lossless``, ``default`` or ``deep-compression``.
    bits, conv_bits, fc_bits : int or None
        Fixed bit width for every compressed blob / conv kinds / fc kinds
        (overrides the preset's SQNR-driven choice).
    prune : float or None
        Fraction of weights of every compressed blob set to zero.
    init : str or None
        k-means initialisation (``linear``, ``density``, ``random``, ``optimal``).
    sqnr_target : float or None
        Weight SQNR (dB) the default preset reaches per blob.
    min_size : int
        Blobs with fewer elements are stored losslessly.
    layers : dict
        Per-layer overrides ``{name_or_glob: {bits, prune, init, lossless, sqnr_target, step, dq}}``
        (``dq``: dependent quantisation on that ``step``);
        the first matching pattern (in insertion order; exact names first) wins.
    backend : str
        ``cpu | gpu | hybrid | auto``.
    max_error : float or None
        Fidelity-targeted compression (``default`` preset): the largest
        relative L2 error allowed on any compared output, measured through
        OpenCV on the calibration inputs. None: :data:`DEFAULT_MAX_ERROR`
        whenever OpenCV 4.x and the deploy prototxt are there.
    data_free : bool
        Keep the data-free rule even when OpenCV is there.
    step : float or None
        A uniform grid step for every compressed weight blob (the ``grid``
        method); None with ``preset="default"`` and no ``bits`` or
        ``sqnr_target``: the data-free rule (:data:`DEFAULT_STEP`, finer
        where a blob's SQNR would fall under :data:`DEFAULT_GRID_MIN_SQNR_DB`).
    """

    preset: str = "default"
    bits: int | None = None
    conv_bits: int | None = None
    fc_bits: int | None = None
    prune: float | None = None
    init: str | None = None
    sqnr_target: float | None = None
    min_size: int = 256
    layers: dict = field(default_factory=dict)
    backend: str = "cpu"
    max_error: float | None = None
    data_free: bool = False
    step: float | None = None

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        for name in ("bits", "conv_bits", "fc_bits"):
            _check_bits(getattr(self, name), name)
        if self.max_error is not None:
            me = self.max_error
            if isinstance(me, bool) or not isinstance(me, (int, float)) or not 0.0 < float(me) < 1.0:
                raise ValueError(f"max_error must be a fraction in (0, 1), got {me!r}")
            if self.data_free:
                raise ValueError("max_error and data_free exclude each other")
            if self.preset != "default":
                raise ValueError(f"max_error needs the default preset, not {self.preset!r}")
        _check_prune(self.prune, "prune")
        _check_step(self.step, "step")
        for pat, ov in self.layers.items():
            if not isinstance(ov, dict):
                raise ValueError(f"override for layer {pat!r} must be a table, got {ov!r}")
            unknown = set(ov) - _OVERRIDE_KEYS
            if unknown:
                raise ValueError(
                    f"override for layer {pat!r}: unknown key(s) {', '.join(sorted(unknown))}"
                    f" (allowed: {', '.join(sorted(_OVERRIDE_KEYS))})"
                )
            _check_bits(ov.get("bits"), f"layers.{pat}.bits")
            _check_prune(ov.get("prune"), f"layers.{pat}.prune")
            _check_step(ov.get("step"), f"layers.{pat}.step")
            if "dq" in ov and (not isinstance(ov["dq"], bool) or "step" not in ov):
                raise ValueError(f"layers.{pat}.dq must be true or false, beside a step")


_OVERRIDE_KEYS = frozenset({"bits", "prune", "init", "lossless", "sqnr_target", "step", "dq"})


def _check_step(v, name):
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0.0 < float(v) < math.inf):
        raise ValueError(f"{name} must be a positive number, got {v!r}")


def _check_bits(v, name):
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 12:
        raise ValueError(f"{name} must be an integer from 1 to 12, got {v!r}")


def _check_prune(v, name):
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) < 1.0:
        raise ValueError(f"{name} must be a fraction in [0, 1), got {v!r}")


@dataclass(frozen=True)
class BlobPlan:
    """The treatment of one blob.

    ``lossless`` blobs are stored as their exact bytes, after rounding to
    ``mantissa`` bits where that is set. Otherwise ``step`` is
    a uniform grid step (the ``grid`` method; with ``sqnr_target``, made finer
    where the blob's SQNR would fall under it), or ``bits`` a fixed bit width,
    or both None with ``sqnr_target`` set: the pipeline searches the smallest
    k-means width in ``[min_bits, max_bits]`` reaching the target.
    """

    lossless: bool
    bits: int | None = None
    step: float | None = None
    dq: bool = False
    prune: float = 0.0
    init: str = "linear"
    sqnr_target: float | None = None
    min_bits: int = DEFAULT_MIN_BITS
    max_bits: int = DEFAULT_MAX_BITS
    kind: str = "other"
    mantissa: int | None = None


def blob_kind(layer_type: str | None, blob_index: int, shape: tuple) -> str:
    """Role of a blob: ``conv``, ``fc`` (weights to compress) or ``other``.

    Weight blobs are blob 0 of convolution / inner-product / embedding layers
    and the >= 2-D blobs of recurrent layers. With no type known (a
    ``.caffemodel.h5`` read without prototxt), blob 0 of >= 2 dimensions
    counts: 4-D as conv, 2-D as fc.
    """
    ndim = len(shape)
    if layer_type in CONV_TYPES:
        return "conv" if blob_index == 0 else "other"
    if layer_type in FC_TYPES:
        return "fc" if blob_index == 0 else "other"
    if layer_type in RECURRENT_TYPES:
        return "fc" if ndim >= 2 else "other"
    if layer_type is None and blob_index == 0 and ndim >= 2:
        return "conv" if ndim == 4 else "fc"
    return "other"


def _match_override(layers: dict, name: str) -> dict:
    if name in layers:
        return layers[name]
    for pat, ov in layers.items():
        if fnmatch.fnmatchcase(name, pat):
            return ov
    return {}


def plan_blob(
    settings: Settings,
    layer_name: str,
    layer_type: str | None,
    blob_index: int,
    shape: tuple,
    *,
    position: str = "",
) -> BlobPlan:
    """Decide how one blob is stored.

    Parameters
    ----------
    position : str
        ``"first_conv"`` / ``"last_fc"`` when the blob is the net's first conv or
        last fc weight (the deep-compression preset prunes those less).
    """
    kind = blob_kind(layer_type, blob_index, shape)
    size = math.prod(shape) if shape else 1
    ov = _match_override(settings.layers, layer_name)
    if kind == "other" and not ov.get("lossless") and settings.preset != "lossless":
        return BlobPlan(lossless=True, kind=kind, mantissa=OTHER_MANTISSA_BITS)
    if kind == "other" or ov.get("lossless") or (size < settings.min_size and "bits" not in ov):
        return BlobPlan(lossless=True, kind=kind)
    if ov.get("lossless") is False:
        pass  # an explicit "lossless = false" just means: follow the rest
    preset = settings.preset
    if preset == "lossless" and not ov and settings.bits is None and settings.prune is None \
            and settings.conv_bits is None and settings.fc_bits is None:
        return BlobPlan(lossless=True, kind=kind)

    kind_bits = settings.conv_bits if kind == "conv" else settings.fc_bits
    bits = ov.get("bits", kind_bits if kind_bits is not None else settings.bits)
    prune = ov.get("prune", settings.prune)
    init = ov.get("init", settings.init)
    target = ov.get("sqnr_target")
    step = ov["step"] if "step" in ov else (settings.step if bits is None else None)
    if step is not None and preset != "deep-compression":
        return BlobPlan(lossless=False, step=float(step), dq=bool(ov.get("dq", False)) and "step" in ov,
                        prune=float(prune or 0.0), kind=kind)
    if preset == "default" and bits is None and prune is None and target is None \
            and settings.sqnr_target is None:
        finer = next((f for lim, f in GRID_SIZE_FINER if size < lim), 1.0)
        dq = default_dq()
        scale = DQ_STEP_SCALE if dq else 1.0
        return BlobPlan(lossless=False, step=DEFAULT_STEP / finer * scale, dq=dq,
                        sqnr_target=DEFAULT_GRID_MIN_SQNR_DB, kind=kind)
    if preset == "deep-compression":
        if bits is None:
            bits = DC_BITS[kind]
        if prune is None:
            prune = DC_PRUNE[position] if position in DC_PRUNE else DC_PRUNE[kind]
    elif preset == "lossless" and bits is None:
        # lossless preset with only pruning asked: prune, keep values exact-ish
        # at the widest grid
        bits = 12
    if bits is None:
        if target is None:
            target = settings.sqnr_target if settings.sqnr_target is not None else DEFAULT_SQNR_DB
        if "sqnr_target" not in ov:
            target = float(target) + next((b for lim, b in SIZE_BONUS_DB if size < lim), 0.0)
            target += POSITION_BONUS_DB.get(position, 0.0)
    return BlobPlan(
        lossless=False,
        bits=bits,
        prune=float(prune or 0.0),
        init=init or "linear",
        sqnr_target=None if bits is not None else float(target),
        kind=kind,
    )


def load_toml(path) -> dict:
    """Read a TOML config file into keyword arguments for :class:`Settings`.

    Top-level keys: ``preset, bits, conv_bits, fc_bits, prune, init,
    sqnr_target, min_size, backend``; a ``[layers]`` table maps layer names or
    globs to ``{bits, prune, init, lossless, sqnr_target}``. Dashes in keys
    are accepted for underscores (``conv-bits``).
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    allowed = {f.name for f in fields(Settings)}
    out = {}
    for key, val in data.items():
        k = key.replace("-", "_")
        if k not in allowed:
            raise ValueError(f"{path}: unknown setting {key!r} (allowed: {', '.join(sorted(allowed))})")
        out[k] = val
    if "layers" in out:
        out["layers"] = {
            pat: {kk.replace("-", "_"): vv for kk, vv in ov.items()} if isinstance(ov, dict) else ov
            for pat, ov in out["layers"].items()
        }
    return out


def make_settings(preset: str | None = None, config=None, **overrides) -> Settings:
    """Build :class:`Settings` from a preset, a TOML file and keyword overrides.

    Later sources win: preset < config file < keyword arguments; ``None``
    keyword values are ignored, ``layers`` dicts are merged (keyword patterns
    first).
    """
    kw = {}
    if config is not None:
        kw.update(load_toml(config) if isinstance(config, (str, Path)) else dict(config))
    if preset is not None:
        kw["preset"] = preset
    layers = dict(kw.get("layers") or {})
    for k, v in overrides.items():
        if v is None:
            continue
        if k == "layers":
            layers = {**dict(v), **{p: o for p, o in layers.items() if p not in v}}
            continue
        kw[k] = v
    if layers:
        kw["layers"] = layers
    allowed = {f.name for f in fields(Settings)}
    bad = set(kw) - allowed
    if bad:
        raise TypeError(f"unknown compression option(s): {', '.join(sorted(bad))}")
    return Settings(**kw)
