"""Our Caffe schema: bindings vs .proto, vs the reference tables, coexistence
with a pycaffe-style ``caffe`` package, and real zoo files."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, text_format

from caffecompress.caffe import proto as cproto
from caffecompress.caffe.proto import pb, pb_bvlc

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT.parent / "shared" / "reference" / "caffe-schema.md"
DESCRIPTOR = ROOT / "caffecompress" / "caffe" / "caffe_descriptor.bin"

FDT = descriptor_pb2.FieldDescriptorProto


def _committed_fdp() -> descriptor_pb2.FileDescriptorProto:
    fds = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR.read_bytes())
    assert len(fds.file) == 1
    return fds.file[0]


# --------------------------------------------------------------- bindings == .proto


def test_descriptor_matches_proto_source(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools (protoc) not installed")
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import regen_proto
    finally:
        sys.path.pop(0)
    out = tmp_path / "d.bin"
    assert regen_proto.main(["--out", str(out)]) == 0
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    committed = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR.read_bytes())
    assert fresh == committed, "caffe_descriptor.bin is stale: run tools/regen_proto.py"


def test_file_name_and_package_are_our_own():
    fdp = _committed_fdp()
    assert fdp.name == "caffecompress/caffe.proto"
    assert fdp.package == "caffecompress.caffe"
    assert fdp.syntax in ("", "proto2")
    assert not fdp.dependency  # self-contained
    assert pb.NetParameter.DESCRIPTOR.full_name == "caffecompress.caffe.NetParameter"
    assert pb_bvlc.NetParameter.DESCRIPTOR.full_name == "caffecompress.caffe_bvlc.NetParameter"


def test_every_message_is_in_the_namespace():
    fdp = _committed_fdp()
    for msg in fdp.message_type:
        cls = getattr(pb, msg.name)
        assert cls.DESCRIPTOR.name == msg.name
        assert [f.number for f in cls.DESCRIPTOR.fields] == [f.number for f in msg.field]
    for enum in fdp.enum_type:
        assert getattr(pb, enum.name).DESCRIPTOR.name == enum.name
        for v in enum.value:
            assert getattr(pb, v.name) == v.number
    assert pb.V1LayerParameter.CONVOLUTION == 4
    assert pb.V0LayerParameter.PoolMethod.Value("AVE") == 1
    assert pb.FLOAT16 == 2 and pb.TEST == 1
    assert pb.Type.Value("FLOAT16") == 2 and pb.Phase.Name(1) == "TEST"


def test_nothing_registered_in_default_pool():
    from google.protobuf import descriptor_pool

    default = descriptor_pool.Default()
    for name in ("caffecompress.caffe.NetParameter", "caffecompress.caffe_bvlc.NetParameter"):
        with pytest.raises(KeyError):
            default.FindMessageTypeByName(name)


# --------------------------------------------------------------- vs reference tables

_TYPES = {
    "double": FDT.TYPE_DOUBLE, "float": FDT.TYPE_FLOAT, "int64": FDT.TYPE_INT64,
    "uint64": FDT.TYPE_UINT64, "int32": FDT.TYPE_INT32, "bool": FDT.TYPE_BOOL,
    "string": FDT.TYPE_STRING, "bytes": FDT.TYPE_BYTES, "uint32": FDT.TYPE_UINT32,
}
_LABELS = {"optional": FDT.LABEL_OPTIONAL, "repeated": FDT.LABEL_REPEATED, "required": FDT.LABEL_REQUIRED}


def _reference_tables(text: str):
    """Yield (section, kind, owner, rows) for each field/enum table."""
    section, owner, kind = "", None, None
    rows: list[list[str]] = []
    for line in text.splitlines() + [""]:
        m = re.match(r"^## (\d)\.", line)
        if m:
            section = m.group(1)
        h = re.match(r"^#{3,4} (enum )?`([\w.]+)`( additions| changes)?(?: — (.+))?\s*$", line)
        if h:
            if owner and rows:
                yield section, kind, owner, rows
            owner, rows = (h.group(2), h.group(4) or "BVLC"), []
            kind = "enum" if h.group(1) else ("add" if h.group(3) else "msg")
            continue
        if owner and line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells[1] in ("#", "number"):  # header row
                continue
            rows.append(cells)
        elif owner and rows and not line.startswith("|"):
            yield section, kind, owner, rows
            owner, rows = None, []


def _check_field(msg: descriptor_pb2.DescriptorProto, row, where: str, problems: list):
    name, number, label, ftype, default, packed = row
    fields = {f.name: f for f in msg.field}
    if name not in fields:
        problems.append(f"{where}.{name}: missing")
        return
    f = fields[name]
    if f.number != int(number):
        problems.append(f"{where}.{name}: number {f.number} != {number}")
    if f.label != _LABELS[label]:
        problems.append(f"{where}.{name}: label {label} -> {FDT.Label.Name(f.label)}")
    if ftype in _TYPES:
        ok = f.type == _TYPES[ftype]
    else:
        ok = f.type_name.endswith("." + ftype) and f.type in (FDT.TYPE_MESSAGE, FDT.TYPE_ENUM)
    if not ok:
        problems.append(f"{where}.{name}: type {f.type_name or f.type} != {ftype}")
    want_default = None if default == "—" else default.strip("`")
    if want_default is not None and want_default.startswith('"'):
        want_default = want_default[1:-1]
    got_default = f.default_value if f.HasField("default_value") else None
    if f.type in (FDT.TYPE_FLOAT, FDT.TYPE_DOUBLE) and None not in (got_default, want_default):
        # runtimes print float defaults with float32 noise ("9.99999975e-06")
        same = np.float32(got_default) == np.float32(want_default)
    else:
        same = got_default == want_default
    if not same:
        problems.append(f"{where}.{name}: default {got_default!r} != {want_default!r}")
    want_packed = packed == "**yes**"
    if bool(f.options.packed) != want_packed:
        problems.append(f"{where}.{name}: packed {f.options.packed} != {want_packed}")


def _compare_with_reference(fdp, text: str) -> list[str]:
    msgs = {m.name: m for m in fdp.message_type}
    enums = {e.name: e for e in fdp.enum_type}
    for m in fdp.message_type:
        for e in m.enum_type:
            enums[f"{m.name}.{e.name}"] = e
    problems: list[str] = []
    tables = list(_reference_tables(text))
    listed: dict[str, set] = {}
    for _, kind, (owner, _), rows in tables:
        if kind != "enum":
            listed.setdefault(owner, set()).update(r[0] for r in rows)
    for owner, names in listed.items():
        extra = {f.name for f in msgs[owner].field} - names if owner in msgs else set()
        if extra:
            problems.append(f"{owner}: fields in no reference table: {sorted(extra)}")
    for section, kind, (owner, fork), rows in tables:
        where = f"{owner} [{fork}]"
        if kind == "enum":
            if owner not in enums:
                problems.append(f"enum {where}: missing")
                continue
            have = {v.name: v.number for v in enums[owner].value}
            want = {r[0]: int(r[1]) for r in rows}
            if have != want:
                problems.append(f"enum {where}: {sorted(have.items())} != {sorted(want.items())}")
            continue
        if owner not in msgs:
            problems.append(f"{where}: missing message")
            continue
        for row in rows:
            if len(row) == 6:
                _check_field(msgs[owner], row, where, problems)
    return problems


# Every deliberate deviation from the reference tables, with the choice made
# (documented in proto/caffe.proto's header). Anything else is a bug.
DEVIATIONS = {
    # required -> optional: we read legacy files as they are.
    "ClipParameter [BVLC].min: label required -> LABEL_OPTIONAL",
    "ClipParameter [BVLC].max: label required -> LABEL_OPTIONAL",
    "PSROIPoolingParameter [OpenCV].spatial_scale: label required -> LABEL_OPTIONAL",
    "PSROIPoolingParameter [OpenCV].output_dim: label required -> LABEL_OPTIONAL",
    "PSROIPoolingParameter [OpenCV].group_size: label required -> LABEL_OPTIONAL",
    "PSROIPoolingParameter [R-FCN].spatial_scale: label required -> LABEL_OPTIONAL",
    "PSROIPoolingParameter [R-FCN].output_dim: label required -> LABEL_OPTIONAL",
    "PSROIPoolingParameter [R-FCN].group_size: label required -> LABEL_OPTIONAL",
    "BoxAnnotatorOHEMParameter [R-FCN].roi_per_img: label required -> LABEL_OPTIONAL",
    # LayerParameter numbers: BVLC, then SSD, then R-FCN win over OpenCV.
    "LayerParameter [OpenCV].detection_output_param: number 204 != 147",
    "LayerParameter [OpenCV].permute_param: number 202 != 148",
    "LayerParameter [OpenCV].norm_param: number 206 != 149",
    "LayerParameter [OpenCV].norm_param: type .caffecompress.caffe.NormalizeParameter != NormalizeBBoxParameter",
    "LayerParameter [OpenCV].prior_box_param: number 203 != 150",
    "LayerParameter [OpenCV].proposal_param: number 536000201 != 201",
    "LayerParameter [OpenCV].psroi_pooling_param: number 10001 != 10002",
    "NormalizeBBoxParameter [OpenCV]: missing message",  # same message, SSD's name
    # OpenCV names whose OpenCV numbers are taken, moved to a private range.
    "PoolingParameter [OpenCV].ceil_mode: number 536000013 != 13",
    "DetectionOutputParameter [OpenCV].normalized_bbox: number 536000010 != 10",
    # Defaults follow the fork whose number we use (SSD); the union has more.
    "PriorBoxParameter [OpenCV].clip: default 'false' != 'true'",
    "enum PriorBoxParameter.CodeType [OpenCV]: [('CENTER_SIZE', 2), ('CORNER', 1), ('CORNER_SIZE', 3)]"
    " != [('CENTER_SIZE', 2), ('CORNER', 1)]",
    # SSD's additions (SSD table) vs OpenCV's: SSD keeps 10..12 and resize_param.
    # R-FCN's LossParameter changes are left out (NONE renumbered; clashes BVLC).
    "LossParameter [R-FCN].pre_fixed_normalizer: missing",
    "enum LossParameter.NormalizationMode [R-FCN]: [('BATCH_SIZE', 2), ('FULL', 0), ('NONE', 3), ('VALID', 1)]"
    " != [('BATCH_SIZE', 2), ('FULL', 0), ('NONE', 4), ('PRE_FIXED', 3), ('VALID', 1)]",
    # SSD solver 41/42 clash with BVLC layer_wise_reduce/weights.
    "SolverParameter [SSD fork].eval_type: missing",
    "SolverParameter [SSD fork].ap_version: missing",
}


@pytest.fixture(scope="module")
def reference_text():
    if not REFERENCE.exists():
        pytest.skip(f"reference tables not found at {REFERENCE}")
    return REFERENCE.read_text(encoding="utf-8")


def test_schema_matches_reference_tables(reference_text):
    problems = _compare_with_reference(_committed_fdp(), reference_text)
    assert set(problems) == DEVIATIONS, (
        "unexpected:\n" + "\n".join(sorted(set(problems) - DEVIATIONS))
        + "\nno longer deviating:\n" + "\n".join(sorted(DEVIATIONS - set(problems)))
    )


def test_bvlc_view_is_exactly_bvlc_master(reference_text):
    """pb_bvlc vs the section 1-3 tables: every message, field and enum, nothing more."""
    fdp = descriptor_pb2.FileDescriptorProto()
    pb_bvlc.NetParameter.DESCRIPTOR.file.CopyToProto(fdp)
    bvlc_only = reference_text.split("\n## 4.")[0]
    problems = _compare_with_reference(fdp, bvlc_only)
    assert set(problems) == {p for p in DEVIATIONS if "[BVLC]" in p}
    tables = list(_reference_tables(bvlc_only))
    messages = {o for s, k, (o, f), r in tables if k == "msg"}
    enums = {o for s, k, (o, f), r in tables if k == "enum"}
    assert {m.name for m in fdp.message_type} == messages
    n_fields = sum(len(m.field) for m in fdp.message_type)
    n_enums = len(fdp.enum_type) + sum(len(m.enum_type) for m in fdp.message_type)
    n_values = sum(len(e.value) for e in fdp.enum_type) + sum(
        len(e.value) for m in fdp.message_type for e in m.enum_type
    )
    # The reference's own counts for BVLC master.
    assert (len(messages), len(enums), n_fields, n_enums, n_values) == (63, 26, 423, 26, 111)


# --------------------------------------------------------------- coexistence with pycaffe

# A pycaffe-like schema: file "caffe.proto", package "caffe", generated the
# way protoc would (here built directly as a FileDescriptorProto so the test
# needs no protoc), registered in the process-wide default pool.
_PYCAFFE_LIKE = textwrap.dedent(
    r'''
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="caffe.proto", package="caffe", syntax="proto2")
    def msg(name, *fields):
        m = fdp.message_type.add(name=name)
        for fname, num, label, ftype, tname, packed in fields:
            f = m.field.add(name=fname, number=num, label=label, type=ftype)
            if tname:
                f.type_name = ".caffe." + tname
            if packed:
                f.options.packed = True
    O, R = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    msg("BlobShape", ("dim", 1, R, F.TYPE_INT64, None, True))
    msg("BlobProto", ("num", 1, O, F.TYPE_INT32, None, False),
        ("data", 5, R, F.TYPE_FLOAT, None, True), ("shape", 7, O, F.TYPE_MESSAGE, "BlobShape", False))
    msg("LayerParameter", ("name", 1, O, F.TYPE_STRING, None, False),
        ("type", 2, O, F.TYPE_STRING, None, False), ("blobs", 7, R, F.TYPE_MESSAGE, "BlobProto", False))
    msg("NetParameter", ("name", 1, O, F.TYPE_STRING, None, False),
        ("layer", 100, R, F.TYPE_MESSAGE, "LayerParameter", False))
    pool = descriptor_pool.Default()
    pool.AddSerializedFile(fdp.SerializeToString())
    d = pool.FindMessageTypeByName("caffe.NetParameter")
    get = getattr(message_factory, "GetMessageClass", None)
    PycaffeNet = get(d) if get else message_factory.MessageFactory(pool).GetPrototype(d)
    '''
)


@pytest.mark.parametrize("pycaffe_first", [True, False], ids=["pycaffe-first", "ours-first"])
def test_coexists_with_pycaffe_style_schema(zoo, pycaffe_first):
    model = zoo / "lenet-mnist" / "lenet_iter_10000.caffemodel"
    ours = "from caffecompress.caffe.proto import pb\n"
    body = (_PYCAFFE_LIKE + ours) if pycaffe_first else (ours + _PYCAFFE_LIKE)
    body += textwrap.dedent(
        f'''
        import numpy as np
        raw = open({str(model)!r}, "rb").read()
        a = PycaffeNet.FromString(raw)
        b = pb.NetParameter.FromString(raw)
        assert a.name == b.name == "LeNet"
        assert [l.name for l in a.layer] == [l.name for l in b.layer]
        for la, lb in zip(a.layer, b.layer):
            assert la.type == lb.type and len(la.blobs) == len(lb.blobs)
            for x, y in zip(la.blobs, lb.blobs):
                assert list(x.shape.dim) == list(y.shape.dim)
                assert np.array_equal(np.array(x.data, np.float32), np.array(y.data, np.float32))
        # each message type stays in its own pool, under its own name
        assert type(a).DESCRIPTOR.full_name == "caffe.NetParameter"
        assert type(b).DESCRIPTOR.full_name == "caffecompress.caffe.NetParameter"
        print("OK", sum(len(l.blobs) for l in b.layer))
        '''
    )
    res = subprocess.run([sys.executable, "-c", body], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["OK", "8"]


# --------------------------------------------------------------- real files


def _caffemodels(zoo):
    return sorted(zoo.glob("*/*.caffemodel"))


@pytest.fixture(scope="module")
def zoo_nets(zoo):
    """Every zoo caffemodel parsed once: (path, NetParameter)."""
    return [(path, pb.NetParameter.FromString(path.read_bytes())) for path in _caffemodels(zoo)]


def test_zoo_caffemodels_parse(zoo, zoo_nets):
    from conftest import zoo_manifest

    rows = {r["path"]: r for r in zoo_manifest()}
    assert len(zoo_nets) >= 18
    for path, net in zoo_nets:
        rel = str(path.relative_to(zoo))
        # MANIFEST notes: "N layer records" / "N layers records"; "M blobs".
        m = re.search(r"(\d+) (layers?) records; (\d+) blobs", rows[rel]["notes"])
        n_rec, field, n_blobs = int(m.group(1)), m.group(2), int(m.group(3))
        records = net.layer if field == "layer" else net.layers
        assert len(records) == n_rec, rel
        assert sum(len(r.blobs) for r in records) == n_blobs, rel


def test_bvlc_view_roundtrips_zoo_bytes_exactly(zoo):
    """Fork fields stay unknown and in place: parse + serialise == file, for all."""
    for path in _caffemodels(zoo):
        raw = path.read_bytes()
        assert pb_bvlc.NetParameter.FromString(raw).SerializeToString() == raw, path.name


def test_fork_fields_decode_by_ssd_numbers(zoo_nets):
    """The SSD-trained yufacedetectnet carries permute/prior_box/norm at 202/203/206."""
    (net,) = [n for p, n in zoo_nets if p.name == "yufacedetectnet-open-v1.caffemodel"]
    by_type = {}
    for layer in net.layer:
        by_type.setdefault(layer.type, layer)
    assert list(by_type["Permute"].permute_param.order) == [0, 2, 3, 1]
    assert by_type["PriorBox"].HasField("prior_box_param")
    assert len(by_type["PriorBox"].prior_box_param.min_size) >= 1
    assert by_type["Normalize"].HasField("norm_param")


def test_mean_binaryproto(zoo):
    blob = pb.BlobProto.FromString((zoo / "cifar10-quick" / "mean.binaryproto").read_bytes())
    dims = list(blob.shape.dim) or [blob.num, blob.channels, blob.height, blob.width]
    assert dims == [1, 3, 32, 32] and len(blob.data) == 3072


def test_zoo_prototxts_parse_strictly(zoo):
    """Every zoo prototxt, fork ones included, parses with no unknown field."""
    files = sorted(zoo.glob("**/*.prototxt"))
    assert len(files) >= 38
    for path in files:
        net = text_format.Parse(path.read_text(encoding="utf-8"), pb.NetParameter())
        assert len(net.layer) + len(net.layers) > 0, path.name


def test_fork_text_fields_round_trip():
    text = (
        'layer { name: "p" type: "Pooling" pooling_param { pool: MAX kernel_size: 3 ceil_mode: false } }\n'
        'layer { name: "pb" type: "PriorBox" prior_box_param { min_size: 10 min_size: 20 clip: true } }\n'
        'layer { name: "d" type: "DetectionOutput" detection_output_param { visualize: true normalized_bbox: false } }\n'
        'layer { name: "r" type: "Proposal" proposal_param { feat_stride: 8 } }\n'
    )
    net = text_format.Parse(text, pb.NetParameter())
    assert net.layer[0].pooling_param.ceil_mode is False
    assert not net.layer[0].pooling_param.HasField("round_mode")
    assert list(net.layer[1].prior_box_param.min_size) == [10, 20]
    back = pb.NetParameter.FromString(net.SerializeToString())
    assert back == net
    assert text_format.Parse(text_format.MessageToString(back), pb.NetParameter()) == net


def test_raw_data_fields():
    blob = pb.BlobProto(raw_data_type=pb.FLOAT16, raw_data=b"\x00\x3c")
    wire = blob.SerializeToString()
    assert wire == b"\x50\x02\x62\x02\x00\x3c"  # field 10 varint 2, field 12 len 2
    assert pb.BlobProto.FromString(wire).raw_data == b"\x00\x3c"


def test_python_module_imports_no_extra_runtime():
    """The bindings need only google.protobuf (no generated code, no protoc)."""
    assert cproto.FILE.name == "caffecompress/caffe.proto"
    src = Path(cproto.__file__).read_text()
    assert "grpc_tools" not in src and "_pb2 import" not in src


@pytest.mark.parametrize("pycaffe_first", [True, False], ids=["pycaffe-first", "ours-first"])
def test_coexists_with_protoc_generated_caffe_pb2(tmp_path, zoo, pycaffe_first):
    """A real protoc-generated ``caffe_pb2`` (our full schema under pycaffe's
    file name and package) imported into the same process as our bindings."""
    pytest.importorskip("grpc_tools", reason="grpcio-tools (protoc) not installed")
    from grpc_tools import protoc

    text = (ROOT / "proto" / "caffe.proto").read_text()
    (tmp_path / "caffe.proto").write_text(text.replace("package caffecompress.caffe;", "package caffe;"))
    assert protoc.main(["protoc", f"-I{tmp_path}", f"--python_out={tmp_path}", str(tmp_path / "caffe.proto")]) == 0
    model = zoo / "ultraface" / "slim-320.caffemodel"
    imports = ["import caffe_pb2", "from caffecompress.caffe.proto import pb"]
    if not pycaffe_first:
        imports.reverse()
    body = "\n".join([f"import sys; sys.path.insert(0, {str(tmp_path)!r})", *imports]) + textwrap.dedent(
        f'''
        raw = open({str(model)!r}, "rb").read()
        a = caffe_pb2.NetParameter.FromString(raw)
        b = pb.NetParameter.FromString(raw)
        assert a.SerializeToString() == b.SerializeToString()
        assert caffe_pb2.NetParameter.DESCRIPTOR.file.name == "caffe.proto"
        assert [l.name for l in a.layer] == [l.name for l in b.layer]
        print("OK", len(b.layer))
        '''
    )
    res = subprocess.run([sys.executable, "-c", body], capture_output=True, text=True, timeout=120)
    if res.returncode and "gencode" in res.stderr.lower():
        pytest.skip("this protobuf runtime is older than the bundled protoc's generated code")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["OK", "100"]


def test_nested_message_classes_are_the_namespace_classes():
    """On every runtime, ``net.layer.add()`` is a ``pb.LayerParameter`` etc.,
    so messages built separately can be copied into nets."""
    for ns in (pb, pb_bvlc):
        for name, cls in vars(ns).items():
            fields = getattr(getattr(cls, "DESCRIPTOR", None), "fields", None)
            if fields is None:
                continue
            msg = cls()
            for f in fields:
                if f.message_type is None:
                    continue
                # protobuf 7 dropped FieldDescriptor.label for is_repeated
                repeated = getattr(f, "is_repeated", None)
                if repeated is None:
                    repeated = f.label == f.LABEL_REPEATED
                sub = getattr(msg, f.name).add() if repeated else getattr(msg, f.name)
                assert type(sub) is getattr(ns, f.message_type.name), (name, f.name)
    net = pb.NetParameter()
    net.layer.add().CopyFrom(pb.LayerParameter(name="x", blobs=[pb.BlobProto(data=[1.0])]))
    assert net.layer[0].blobs[0].data[0] == 1.0
