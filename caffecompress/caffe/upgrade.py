"""Upgrade a NetParameter of any generation (V0, V1, V2) to the current V2 form.

The steps and their order follow Caffe's own loader (``UpgradeNetAsNeeded``;
facts in ``shared/reference/caffe-format.md`` section 2):

1. V0 -> V1: "padding" pseudo-layers are folded into the conv/pool layer that
   consumes them, then each flat V0 record is mapped onto a V1 record with the
   right ``*_param`` sub-messages (data-layer fields included);
2. data-transformation upgrade: ``scale``/``mean_file``/``crop_size``/
   ``mirror`` move from V1 data layers' own parameters into ``transform_param``;
3. V1 -> V2: enum type -> type string, ``blobs_lr``/``weight_decay``/``param``/
   ``blob_share_mode`` -> ``ParamSpec``; every ``*_param`` is copied;
4. input upgrade: ``input`` + ``input_shape`` / legacy ``input_dim`` become a
   leading ``Input`` layer named "input" (inputs without shapes, as in old
   caffemodels, are just dropped);
5. BatchNorm: a BatchNorm layer with exactly three ``param`` entries gets
   ``lr_mult = decay_mult = 0`` on each.

On top of Caffe (which reads legacy blob dims at load time and writes
``shape`` when saving), legacy 4-D blob dims are rewritten as ``shape`` here,
so every V2 blob says its shape one way, unless ``keep_blob_dims`` (the
weights reader's choice: a restored file keeps the shape fields it stored).

Every new message is built from the pool of the net given (``pb``,
``pb_bvlc`` or a tolerant-parse variant; see :func:`.proto.classes_of`).

Where Caffe aborts, this raises :class:`~caffecompress.errors.FormatError`;
where Caffe logs a problem and carries on, so does this (the messages go to
the optional ``notes`` list).
"""

from __future__ import annotations

from ..errors import FormatError
from .proto import classes_of, pb

__all__ = [
    "detect_format",
    "needs_upgrade",
    "upgrade_net",
    "v1_type_name",
    "v0_type_to_v1",
    "blob_shape",
    "V1_TYPE_NAMES",
    "V0_TYPES",
]

_V1 = pb.V1LayerParameter

#: V1 ``LayerType`` enum value -> V2 type string (Caffe's ``UpgradeV1LayerType``).
V1_TYPE_NAMES: dict[int, str] = {
    _V1.NONE: "",
    _V1.ABSVAL: "AbsVal",
    _V1.ACCURACY: "Accuracy",
    _V1.ARGMAX: "ArgMax",
    _V1.BNLL: "BNLL",
    _V1.CONCAT: "Concat",
    _V1.CONTRASTIVE_LOSS: "ContrastiveLoss",
    _V1.CONVOLUTION: "Convolution",
    _V1.DECONVOLUTION: "Deconvolution",
    _V1.DATA: "Data",
    _V1.DROPOUT: "Dropout",
    _V1.DUMMY_DATA: "DummyData",
    _V1.EUCLIDEAN_LOSS: "EuclideanLoss",
    _V1.ELTWISE: "Eltwise",
    _V1.EXP: "Exp",
    _V1.FLATTEN: "Flatten",
    _V1.HDF5_DATA: "HDF5Data",
    _V1.HDF5_OUTPUT: "HDF5Output",
    _V1.HINGE_LOSS: "HingeLoss",
    _V1.IM2COL: "Im2col",
    _V1.IMAGE_DATA: "ImageData",
    _V1.INFOGAIN_LOSS: "InfogainLoss",
    _V1.INNER_PRODUCT: "InnerProduct",
    _V1.LRN: "LRN",
    _V1.MEMORY_DATA: "MemoryData",
    _V1.MULTINOMIAL_LOGISTIC_LOSS: "MultinomialLogisticLoss",
    _V1.MVN: "MVN",
    _V1.POOLING: "Pooling",
    _V1.POWER: "Power",
    _V1.RELU: "ReLU",
    _V1.SIGMOID: "Sigmoid",
    _V1.SIGMOID_CROSS_ENTROPY_LOSS: "SigmoidCrossEntropyLoss",
    _V1.SILENCE: "Silence",
    _V1.SOFTMAX: "Softmax",
    _V1.SOFTMAX_LOSS: "SoftmaxWithLoss",
    _V1.SPLIT: "Split",
    _V1.SLICE: "Slice",
    _V1.TANH: "TanH",
    _V1.WINDOW_DATA: "WindowData",
    _V1.THRESHOLD: "Threshold",
}

#: V0 lower-case type string -> V1 enum value (Caffe's ``UpgradeV0LayerType``).
V0_TYPES: dict[str, int] = {
    "accuracy": _V1.ACCURACY,
    "bnll": _V1.BNLL,
    "concat": _V1.CONCAT,
    "conv": _V1.CONVOLUTION,
    "data": _V1.DATA,
    "dropout": _V1.DROPOUT,
    "euclidean_loss": _V1.EUCLIDEAN_LOSS,
    "flatten": _V1.FLATTEN,
    "hdf5_data": _V1.HDF5_DATA,
    "hdf5_output": _V1.HDF5_OUTPUT,
    "im2col": _V1.IM2COL,
    "images": _V1.IMAGE_DATA,
    "infogain_loss": _V1.INFOGAIN_LOSS,
    "innerproduct": _V1.INNER_PRODUCT,
    "lrn": _V1.LRN,
    "multinomial_logistic_loss": _V1.MULTINOMIAL_LOGISTIC_LOSS,
    "pool": _V1.POOLING,
    "relu": _V1.RELU,
    "sigmoid": _V1.SIGMOID,
    "softmax": _V1.SOFTMAX,
    "softmax_loss": _V1.SOFTMAX_LOSS,
    "split": _V1.SPLIT,
    "tanh": _V1.TANH,
    "window_data": _V1.WINDOW_DATA,
}


def v1_type_name(value: int, *, layer=None) -> str:
    """V2 type string of a V1 ``LayerType`` enum value.

    Raises
    ------
    FormatError
        For a value Caffe does not know (Caffe aborts on it too).
    """
    try:
        return V1_TYPE_NAMES[int(value)]
    except KeyError:
        raise FormatError(f"unknown V1 layer type enum value {value}", layer=layer) from None


def v0_type_to_v1(name: str, *, layer=None) -> int:
    """V1 enum value of a V0 type string such as ``"conv"`` or ``"innerproduct"``."""
    try:
        return V0_TYPES[name]
    except KeyError:
        raise FormatError(f"unknown V0 layer type {name!r}", layer=layer) from None


def blob_shape(blob) -> tuple[int, ...]:
    """Shape of a BlobProto by Caffe's reading rule.

    If any legacy dim (``num``, ``channels``, ``height``, ``width``) is present
    the shape is those four values; otherwise it is ``shape.dim`` (``()`` when
    the blob has neither, which Caffe reads as a 0-axis blob of one value).
    """
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        return (blob.num, blob.channels, blob.height, blob.width)
    return tuple(int(d) for d in blob.shape.dim)


def detect_format(net) -> str:
    """Generation of a NetParameter: ``"V0"``, ``"V1"`` or ``"V2"``.

    V0 when any ``layers`` record holds a nested V0 ``layer``; V1 when
    ``layers`` is used; V2 otherwise (an empty net is V2).

    Raises
    ------
    FormatError
        The net uses both ``layer`` (V2) and ``layers`` (V0/V1); Caffe refuses
        to upgrade such a net.
    """
    if len(net.layers) and len(net.layer):
        raise FormatError(
            f"the net mixes {len(net.layer)} V2 'layer' and {len(net.layers)} V0/V1 'layers' "
            "records; Caffe refuses to upgrade such an inconsistent NetParameter"
        )
    if any(rec.HasField("layer") for rec in net.layers):
        return "V0"
    return "V1" if len(net.layers) else "V2"


def needs_upgrade(net) -> bool:
    """True when :func:`upgrade_net` would change anything."""
    if detect_format(net) != "V2" or len(net.input):
        return True
    if any(lp.type == "BatchNorm" and len(lp.param) == 3 for lp in net.layer):
        return True
    return any(_has_legacy_dims(b) for lp in net.layer for b in lp.blobs)


# ---------------------------------------------------------------- step 1: V0 -> V1


def _fold_padding_layers(net, notes):
    """V0 records with "padding" layers folded into their consumers.

    Returns (records, source_index) where records are copies and
    source_index[i] is the index in ``net.layers`` of record i.
    """
    producer: dict[str, int] = {name: -1 for name in net.input}
    out, src = [], []
    for i, rec in enumerate(net.layers):
        v0 = rec.layer
        is_padding = v0.type == "padding"
        if not is_padding:
            new = type(rec)()
            new.CopyFrom(rec)
            out.append(new)
            src.append(i)
        for j, blob in enumerate(rec.bottom):
            if blob not in producer:
                raise FormatError(f"unknown input blob {blob!r} (bottom {j})", layer=v0.name or rec.name)
            k = producer[blob]
            if k < 0:
                continue
            source = net.layers[k]
            if source.layer.type != "padding":
                continue
            name = v0.name or rec.name
            if is_padding:
                raise FormatError("a padding layer feeds another padding layer", layer=name)
            if v0.type not in ("conv", "pool"):
                raise FormatError(
                    f"padding layer {source.layer.name!r} feeds a {v0.type!r} layer; "
                    "only conv and pool layers can absorb padding",
                    layer=name,
                )
            if len(rec.bottom) != 1 or len(source.bottom) != 1 or len(source.top) != 1:
                raise FormatError(
                    "padding folding needs one bottom on the consumer and one bottom/top on the padding layer",
                    layer=name,
                )
            out[-1].layer.pad = source.layer.pad
            out[-1].bottom[j] = source.bottom[0]
        for blob in rec.top:
            producer[blob] = i
    return out, src


def _v0_record_to_v1(rec, notes):
    """One V0 record (with padding already folded) as a V1 record."""
    v1 = type(rec)()
    v1.bottom.extend(rec.bottom)
    v1.top.extend(rec.top)
    if not rec.HasField("layer"):
        return v1
    v0 = rec.layer
    t = v0.type
    name = v0.name
    if v0.HasField("name"):
        v1.name = v0.name
    if v0.HasField("type"):
        v1.type = v0_type_to_v1(t, layer=name)
    v1.blobs.extend(v0.blobs)
    v1.blobs_lr.extend(v0.blobs_lr)
    v1.weight_decay.extend(v0.weight_decay)

    def unused(field):
        notes.append(f"layer {name!r}: V0 field {field!r} has no meaning for type {t!r}; dropped")

    def has(field):
        return v0.HasField(field)

    conv, ip = v1.convolution_param, v1.inner_product_param
    if has("num_output"):
        if t == "conv":
            conv.num_output = v0.num_output
        elif t == "innerproduct":
            ip.num_output = v0.num_output
        else:
            unused("num_output")
    if has("biasterm"):
        if t == "conv":
            conv.bias_term = v0.biasterm
        elif t == "innerproduct":
            ip.bias_term = v0.biasterm
        else:
            unused("biasterm")
    for v0f, v1f in (("weight_filler", "weight_filler"), ("bias_filler", "bias_filler")):
        if has(v0f):
            if t == "conv":
                getattr(conv, v1f).CopyFrom(getattr(v0, v0f))
            elif t == "innerproduct":
                getattr(ip, v1f).CopyFrom(getattr(v0, v0f))
            else:
                unused(v0f)
    for v0f, conv_f, pool_f in (("pad", "pad", "pad"), ("kernelsize", "kernel_size", "kernel_size"),
                                ("stride", "stride", "stride")):
        if has(v0f):
            if t == "conv":
                getattr(conv, conv_f).append(getattr(v0, v0f))
            elif t == "pool":
                setattr(v1.pooling_param, pool_f, getattr(v0, v0f))
            else:
                unused(v0f)
    if has("group"):
        if t == "conv":
            conv.group = v0.group
        else:
            unused("group")
    if has("pool"):
        if t == "pool":
            # Same numbering (MAX, AVE, STOCHASTIC) in both enums.
            v1.pooling_param.pool = v0.pool
        else:
            unused("pool")
    if has("dropout_ratio"):
        if t == "dropout":
            v1.dropout_param.dropout_ratio = v0.dropout_ratio
        else:
            unused("dropout_ratio")
    for f in ("local_size", "alpha", "beta", "k"):
        if has(f):
            if t == "lrn":
                setattr(v1.lrn_param, f, getattr(v0, f))
            else:
                unused(f)
    source_of = {"data": v1.data_param, "hdf5_data": v1.hdf5_data_param, "images": v1.image_data_param,
                 "window_data": v1.window_data_param, "infogain_loss": v1.infogain_loss_param}
    if has("source"):
        if t in source_of:
            source_of[t].source = v0.source
        else:
            unused("source")
    # Preprocessing fields go straight to transform_param, whatever the type.
    if has("scale"):
        v1.transform_param.scale = v0.scale
    if has("meanfile"):
        v1.transform_param.mean_file = v0.meanfile
    if has("cropsize"):
        v1.transform_param.crop_size = v0.cropsize
    if has("mirror"):
        v1.transform_param.mirror = v0.mirror
    if has("batchsize"):
        if t in ("data", "hdf5_data", "images", "window_data"):
            source_of[t].batch_size = v0.batchsize
        else:
            unused("batchsize")
    if has("rand_skip"):
        if t == "data":
            v1.data_param.rand_skip = v0.rand_skip
        elif t == "images":
            v1.image_data_param.rand_skip = v0.rand_skip
        else:
            unused("rand_skip")
    for v0f, v1f in (("shuffle_images", "shuffle"), ("new_height", "new_height"), ("new_width", "new_width")):
        if has(v0f):
            if t == "images":
                setattr(v1.image_data_param, v1f, getattr(v0, v0f))
            else:
                unused(v0f)
    if has("concat_dim"):
        if t == "concat":
            v1.concat_param.concat_dim = v0.concat_dim
        else:
            unused("concat_dim")
    for v0f, v1f in (("det_fg_threshold", "fg_threshold"), ("det_bg_threshold", "bg_threshold"),
                     ("det_fg_fraction", "fg_fraction"), ("det_context_pad", "context_pad"),
                     ("det_crop_mode", "crop_mode")):
        if has(v0f):
            if t == "window_data":
                setattr(v1.window_data_param, v1f, getattr(v0, v0f))
            else:
                unused(v0f)
    if has("hdf5_output_param"):
        if t == "hdf5_output":
            v1.hdf5_output_param.CopyFrom(v0.hdf5_output_param)
        else:
            unused("hdf5_output_param")
    for f in ("new_num", "new_channels"):
        if has(f):
            unused(f)
    return v1


def _upgrade_v0(net, notes):
    """V0 net -> V1 net (a new message) and the source index of each record."""
    records, src = _fold_padding_layers(net, notes)
    v1net = type(net)()
    if net.HasField("name"):
        v1net.name = net.name
    for rec in records:
        v1net.layers.add().CopyFrom(_v0_record_to_v1(rec, notes))
    v1net.input.extend(net.input)
    v1net.input_dim.extend(net.input_dim)
    if net.HasField("force_backward"):
        v1net.force_backward = net.force_backward
    return v1net, src


# ---------------------------------------------------------------- step 2: data transformation

_DATA_PARAMS = {_V1.DATA: "data_param", _V1.IMAGE_DATA: "image_data_param", _V1.WINDOW_DATA: "window_data_param"}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")


def _needs_data_upgrade(net) -> bool:
    for rec in net.layers:
        field = _DATA_PARAMS.get(rec.type)
        if field and any(getattr(rec, field).HasField(f) for f in _TRANSFORM_FIELDS):
            return True
    return False


def _upgrade_data_transformation(net) -> None:
    for rec in net.layers:
        field = _DATA_PARAMS.get(rec.type)
        if not field:
            continue
        # Caffe touches (and so creates) both sub-messages on every such layer.
        param = getattr(rec, field)
        param.SetInParent()
        rec.transform_param.SetInParent()
        for f in _TRANSFORM_FIELDS:
            if param.HasField(f):
                setattr(rec.transform_param, f, getattr(param, f))
                param.ClearField(f)


# ---------------------------------------------------------------- step 3: V1 -> V2

# V1 fields copied as they are into the same-named V2 field.
_V1_COPY_REPEATED = ("bottom", "top", "include", "exclude", "blobs", "loss_weight")
_V1_PARAMS: dict = {}


def _v1_params(rec, lp) -> tuple:
    """Names of the ``*_param`` fields both messages declare (per schema view or variant)."""
    key = (rec.DESCRIPTOR.file.name, lp.DESCRIPTOR.file.name)
    if key not in _V1_PARAMS:
        _V1_PARAMS[key] = tuple(
            f.name for f in rec.DESCRIPTOR.fields
            if f.name.endswith("_param") and f.name in lp.DESCRIPTOR.fields_by_name
        )
    return _V1_PARAMS[key]


def _v1_record_to_v2(rec, notes):
    # classes from the record's own pool: pb, pb_bvlc or a tolerant-parse variant
    lp = classes_of(rec).LayerParameter()
    name = rec.name or None
    for f in _V1_COPY_REPEATED:
        getattr(lp, f).extend(getattr(rec, f))
    if rec.HasField("name"):
        lp.name = rec.name
    if rec.HasField("type"):
        lp.type = v1_type_name(rec.type, layer=name)

    def spec(i):
        while len(lp.param) <= i:
            lp.param.add()
        return lp.param[i]

    for i, pname in enumerate(rec.param):
        spec(i).name = pname
    for i, mode in enumerate(rec.blob_share_mode):
        if mode not in (_V1.STRICT, _V1.PERMISSIVE):
            raise FormatError(f"unknown blob_share_mode {mode}", layer=name)
        # STRICT/PERMISSIVE have the same numbers in both enums.
        spec(i).share_mode = mode
    for i, lr in enumerate(rec.blobs_lr):
        spec(i).lr_mult = lr
    for i, wd in enumerate(rec.weight_decay):
        spec(i).decay_mult = wd
    for f in _v1_params(rec, lp):
        if rec.HasField(f):
            getattr(lp, f).CopyFrom(getattr(rec, f))
    if rec.HasField("layer"):
        notes.append(f"layer {name!r}: V1 record also holds a V0 layer; ignored (as Caffe does)")
    return lp


def _upgrade_v1(net, notes):
    v2 = type(net)()
    v2.CopyFrom(net)
    v2.ClearField("layers")
    v2.ClearField("layer")
    for rec in net.layers:
        v2.layer.add().CopyFrom(_v1_record_to_v2(rec, notes))
    return v2


# ---------------------------------------------------------------- steps 4, 5 and blob dims


def _upgrade_input(net) -> bool:
    """Turn legacy net inputs into a leading Input layer; True if one was added."""
    n = len(net.input)
    has_shape, has_dim = len(net.input_shape) > 0, len(net.input_dim) > 0
    added = False
    if has_shape or has_dim:
        if has_shape and len(net.input_shape) < n:
            raise FormatError(f"{n} inputs but only {len(net.input_shape)} input_shape entries")
        if not has_shape and len(net.input_dim) < 4 * n:
            raise FormatError(f"{n} inputs need {4 * n} input_dim values, the net has {len(net.input_dim)}")
        layer = classes_of(net).LayerParameter(name="input", type="Input")
        layer.input_param.SetInParent()
        for i, top in enumerate(net.input):
            layer.top.append(top)
            shape = layer.input_param.shape.add()
            if has_shape:
                shape.CopyFrom(net.input_shape[i])
            else:
                shape.dim.extend(net.input_dim[4 * i : 4 * i + 4])
        rest = list(net.layer)
        copies = []
        for lp in rest:
            c = type(lp)()
            c.CopyFrom(lp)
            copies.append(c)
        net.ClearField("layer")
        net.layer.add().CopyFrom(layer)
        for c in copies:
            net.layer.add().CopyFrom(c)
        added = True
    net.ClearField("input")
    net.ClearField("input_shape")
    net.ClearField("input_dim")
    return added


def _upgrade_batch_norm(net) -> None:
    for lp in net.layer:
        if lp.type == "BatchNorm" and len(lp.param) == 3:
            for spec in lp.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0


def _has_legacy_dims(blob) -> bool:
    return any(blob.HasField(f) for f in ("num", "channels", "height", "width"))


def _upgrade_blob_dims(net) -> None:
    for lp in net.layer:
        for blob in lp.blobs:
            if _has_legacy_dims(blob):
                dims = blob_shape(blob)
                for f in ("num", "channels", "height", "width"):
                    blob.ClearField(f)
                blob.shape.ClearField("dim")
                blob.shape.dim.extend(dims)


# ---------------------------------------------------------------- entry point


def upgrade_net(net, *, notes: list | None = None, keep_blob_dims: bool = False):
    """Upgrade a NetParameter of any generation to V2, in Caffe's order.

    Parameters
    ----------
    net : NetParameter
        From :data:`.proto.pb`, :data:`.proto.pb_bvlc` or a tolerant-parse
        variant (new messages are built from the same pool). A weights file's net (blobs with data, or a skeleton whose blobs hold
        only shapes) or a prototxt's net. It is not modified.
    notes : list, optional
        Receives one message per problem Caffe would log and carry on from
        (a V0 field the layer type cannot use, a V0 record in a V1 net).
    keep_blob_dims : bool
        Leave each blob's shape fields as stored (legacy 4-D dims stay legacy,
        as Caffe's own upgrade leaves them), so a weights file restores with
        the shape fields it had. By default they are rewritten as ``shape``.

    Returns
    -------
    v2_net : pb.NetParameter
        A new V2 net: only ``layer`` records, no legacy inputs, blob shapes
        in ``shape``. Blobs (data or placeholders, unknown fields included)
        move along with their layers.
    source_index : list of int or None
        ``source_index[i]`` is the index of the record in ``net.layers`` (V0,
        V1) or ``net.layer`` (V2) that produced ``v2_net.layer[i]``; ``None``
        for the ``Input`` layer made from legacy ``input`` fields. V0 "padding"
        layers produce no V2 layer, so their indices never appear.

    Raises
    ------
    FormatError
        Mixed ``layer``/``layers``; an unknown V0 type string or V1 enum; a
        padding layer feeding anything but conv/pool; an unknown bottom in a
        V0 net; fewer input shapes than inputs. ``layer=`` names the layer.
    """
    if notes is None:
        notes = []
    fmt = detect_format(net)
    if fmt == "V2":
        work = type(net)()
        work.CopyFrom(net)
        src: list = list(range(len(net.layer)))
    else:
        if fmt == "V0":
            work, src = _upgrade_v0(net, notes)
        else:
            work = type(net)()
            work.CopyFrom(net)
            src = list(range(len(net.layers)))
        if _needs_data_upgrade(work):
            _upgrade_data_transformation(work)
        work = _upgrade_v1(work, notes)
    if len(work.input):
        if _upgrade_input(work):
            src = [None] + src
    _upgrade_batch_norm(work)
    if not keep_blob_dims:
        _upgrade_blob_dims(work)
    return work, src
