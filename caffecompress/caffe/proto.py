"""Message classes of caffecompress's own Caffe schema.

The classes are built at import time from ``caffe_descriptor.bin`` (compiled
from ``proto/caffe.proto`` by ``tools/regen_proto.py``) inside a **private**
descriptor pool. Two consequences:

* no generated ``_pb2`` code, so the same file works on every protobuf runtime
  from 3.20 up to 7.x (generated code from a new protoc refuses old runtimes);
* nothing is registered in the process-wide default pool, so this module
  coexists with pycaffe's ``caffe_pb2`` (package ``caffe``, file
  ``caffe.proto``) or any other copy of the Caffe schema.

The wire and text formats depend on neither file name nor package, so these
classes read and write the same bytes and prototxt text as Caffe.

Examples
--------
>>> from caffecompress.caffe.proto import pb
>>> net = pb.NetParameter(name="n")
>>> layer = net.layer.add(name="conv1", type="Convolution")
>>> pb.V1LayerParameter.CONVOLUTION
4
"""

from __future__ import annotations

from importlib import resources
from types import SimpleNamespace

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

__all__ = [
    "pb", "pb_bvlc", "POOL", "FILE", "PACKAGE", "FORK_FIELDS", "FORK_MESSAGES", "message_class",
    "schema_without", "classes_of", "short_name",
]

#: Name of the schema file inside the descriptor (unique on purpose).
FILE_NAME = "caffecompress/caffe.proto"


#: Fields of BVLC messages that come from forks (SSD, OpenCV, Fast R-CNN,
#: R-FCN), by message: left out of :data:`pb_bvlc`.
FORK_FIELDS = {
    "BlobProto": ("raw_data_type", "raw_data"),
    "BatchNormParameter": ("scale_bias",),
    "DropoutParameter": ("scale_train",),
    "PoolingParameter": ("ceil_mode",),
    "TransformationParameter": (
        "resize_param", "noise_param", "emit_constraint", "crop_h", "crop_w",
        "distort_param", "expand_param",
    ),
    "SolverParameter": ("plateau_winsize", "show_per_class_result"),
    "SolverState": ("minimum_loss", "iter_last_event"),
    "LayerParameter": (
        "annotated_data_param", "multibox_loss_param", "permute_param",
        "prior_box_param", "detection_output_param", "detection_evaluate_param",
        "norm_param", "video_data_param", "box_annotator_ohem_param",
        "psroi_pooling_param", "roi_pooling_param", "smooth_l1_loss_param",
        "proposal_param",
    ),
}
#: Messages (and the top-level enum ``Type``) that only forks define.
FORK_MESSAGES = (
    "Type", "PermuteParameter", "NormalizeParameter", "PriorBoxParameter",
    "DetectionOutputParameter", "NonMaximumSuppressionParameter",
    "SaveOutputParameter", "ResizeParameter", "AnnotatedDataParameter",
    "BatchSampler", "Sampler", "SampleConstraint", "EmitConstraint",
    "NoiseParameter", "SaltPepperParameter", "DistortionParameter",
    "ExpansionParameter", "MultiBoxLossParameter", "DetectionEvaluateParameter",
    "VideoDataParameter", "LabelMap", "LabelMapItem", "AnnotatedDatum",
    "AnnotationGroup", "Annotation", "NormalizedBBox", "ROIPoolingParameter",
    "SmoothL1LossParameter", "PSROIPoolingParameter",
    "BoxAnnotatorOHEMParameter", "ProposalParameter",
)


def _read_descriptor() -> descriptor_pb2.FileDescriptorProto:
    data = resources.files(__package__).joinpath("caffe_descriptor.bin").read_bytes()
    fds = descriptor_pb2.FileDescriptorSet.FromString(data)
    if len(fds.file) != 1:  # pragma: no cover - guarded by tools/regen_proto.py
        raise ImportError("caffe_descriptor.bin must hold exactly one file")
    return fds.file[0]


def _bvlc_view(fdp: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """The same schema minus every fork field and message: BVLC master only.

    Parsing with it keeps fork fields as unknown fields in their original
    order, so re-serialising a Caffe-written file gives back its exact bytes
    (upb writes unknown fields after known ones; a file with fork fields
    interleaved in number order would otherwise come back reordered).
    """
    old_pkg = f".{fdp.package}."
    out = descriptor_pb2.FileDescriptorProto()
    out.CopyFrom(fdp)
    out.name = fdp.name.replace(".proto", "_bvlc.proto")
    out.package = fdp.package + "_bvlc"
    new_pkg = f".{out.package}."
    del out.message_type[:]
    for msg in fdp.message_type:
        if msg.name in FORK_MESSAGES:
            continue
        m = out.message_type.add()
        m.CopyFrom(msg)
        drop = set(FORK_FIELDS.get(msg.name, ()))
        del m.field[:]
        for field in msg.field:
            if field.name in drop:
                continue
            f = m.field.add()
            f.CopyFrom(field)
            if f.type_name.startswith(old_pkg):
                f.type_name = new_pkg + f.type_name[len(old_pkg):]
    del out.enum_type[:]
    out.enum_type.extend(e for e in fdp.enum_type if e.name not in FORK_MESSAGES)
    return out


def _load_pool(fdp) -> tuple[descriptor_pool.DescriptorPool, object]:
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(fdp.SerializeToString())
    return pool, pool.FindFileByName(fdp.name)


_FACTORIES: dict = {}


def _class_getter(pool):
    # protobuf >= 4.22 has GetMessageClass; 3.20 only MessageFactory.GetPrototype
    # (which newer runtimes removed). One factory per pool, so a message class
    # and the class of the same message nested in another are one class.
    get = getattr(message_factory, "GetMessageClass", None)
    if get is not None:
        return get
    if id(pool) not in _FACTORIES:
        _FACTORIES[id(pool)] = message_factory.MessageFactory(pool).GetPrototype
    return _FACTORIES[id(pool)]


_FDP = _read_descriptor()
#: The private descriptor pool holding our schema.
POOL, FILE = _load_pool(_FDP)
#: The protobuf package of our schema (not on the wire).
PACKAGE = FILE.package
_BVLC_POOL, _BVLC_FILE = _load_pool(_bvlc_view(_FDP))


def message_class(name: str, *, bvlc: bool = False):
    """Return the message class for a short or full message name.

    Parameters
    ----------
    name : str
        ``"NetParameter"`` or ``"caffecompress.caffe.NetParameter"``.
    bvlc : bool
        Take the class from the BVLC-only view (:data:`pb_bvlc`).

    Returns
    -------
    type
        A :class:`google.protobuf.message.Message` subclass.
    """
    pool, package = (_BVLC_POOL, _BVLC_FILE.package) if bvlc else (POOL, PACKAGE)
    short = name.rsplit(".", 1)[-1]
    return _class_getter(pool)(pool.FindMessageTypeByName(f"{package}.{short}"))


def _namespace(file, bvlc: bool | None = None) -> SimpleNamespace:
    ns = SimpleNamespace()
    get = _class_getter(file.pool)
    for mname, mdesc in file.message_types_by_name.items():
        setattr(ns, mname, get(mdesc) if bvlc is None else message_class(mname, bvlc=bvlc))
    # Top-level enums (Phase, Type) and their values, like a _pb2 module.
    for ename, edesc in file.enum_types_by_name.items():
        setattr(ns, ename, EnumTypeWrapper(edesc))
        for value in edesc.values:
            setattr(ns, value.name, value.number)
    return ns


#: Namespace of every message class by its short name (``pb.NetParameter``,
#: ``pb.LayerParameter``, ``pb.BlobProto``, ``pb.V1LayerParameter``, ...), plus
#: the top-level enums (``pb.Phase.Name(1)``, ``pb.Type.Value("FLOAT16")``) and values
#: (``pb.TEST``, ``pb.FLOAT16``), as a generated ``caffe_pb2`` module has them.
#: Nested enums are on the classes: ``pb.V1LayerParameter.CONVOLUTION``.
pb = _namespace(FILE, bvlc=False)

#: The same schema restricted to BVLC master (no fork field or message; its
#: own private pool and package ``caffecompress.caffe_bvlc``). Fork fields
#: read with it stay unknown fields in their original order, so parse +
#: serialise reproduces a Caffe-written file byte for byte; a message from it
#: whose unknown fields are empty holds only BVLC fields.
pb_bvlc = _namespace(_BVLC_FILE, bvlc=True)


# ---------------------------------------------------------------- schema variants

_VARIANTS: dict = {}
_NS_BY_FILE: dict = {}


def short_name(desc) -> str:
    """A message's name relative to its package (the same in every view and variant)."""
    pkg = desc.file.package
    return desc.full_name[len(pkg) + 1:] if pkg else desc.full_name


def schema_without(drop, *, bvlc: bool = True) -> SimpleNamespace:
    """A namespace like :data:`pb_bvlc` (or :data:`pb`) minus some fields.

    Parameters
    ----------
    drop : iterable of (str, int)
        ``(message short name, field number)`` pairs left out of the schema, so
        a parse keeps those fields as unknown bytes (written back verbatim).
        The tolerant structure parse (:mod:`.tolerant`) uses this for fields
        whose bytes do not parse as the type we declare (another fork's meaning).
    bvlc : bool
        Start from the BVLC-only view (default) or from the full schema.

    Returns
    -------
    types.SimpleNamespace
        Message classes of a private pool of their own (cached per ``drop``),
        same package and names as the view they come from.
    """
    key = (bool(bvlc), frozenset(drop))
    if not key[1]:
        return pb_bvlc if bvlc else pb
    ns = _VARIANTS.get(key)
    if ns is None:
        base = _bvlc_view(_FDP) if bvlc else _FDP
        fdp = descriptor_pb2.FileDescriptorProto()
        fdp.CopyFrom(base)
        fdp.name = base.name.replace(".proto", "_v%d.proto" % len(_VARIANTS))
        for msg in fdp.message_type:
            numbers = {n for m, n in key[1] if m == msg.name}
            if numbers:
                keep = [f for f in msg.field if f.number not in numbers]
                del msg.field[:]
                msg.field.extend(keep)
        pool, file = _load_pool(fdp)
        ns = _namespace(file)
        _NS_BY_FILE[file.name] = ns
        _VARIANTS[key] = ns
    return ns


def classes_of(msg) -> SimpleNamespace:
    """The namespace of message classes that ``msg`` (a message or class) comes from.

    Code that builds new messages next to parsed ones (the upgrade) takes its
    classes from here, so it works on :data:`pb`, :data:`pb_bvlc` and any
    :func:`schema_without` variant alike (protobuf refuses to mix pools).
    """
    name = msg.DESCRIPTOR.file.name
    if name == FILE.name:
        return pb
    if name == _BVLC_FILE.name:
        return pb_bvlc
    try:
        return _NS_BY_FILE[name]
    except KeyError:
        raise TypeError(f"{msg.DESCRIPTOR.full_name} is not from caffecompress's Caffe schema") from None
