"""A seeded mutation fuzzer over every reader, run in worker processes.

Seeds are small files built here (and the zoo's MTCNN det1 when present):
binary caffemodels V0/V1/V2, prototxt, binaryproto, Caffe's
``.caffemodel.h5`` and the project's own ``.ccz.h5`` (formats 1.0, 1.1
with ``grid`` blobs, 1.2 with dependent quantisation and rANS streams, 1.3
with packed float fields, and 2.0: the LZMA index block holding the
skeleton and prototxt, parts without offsets or CRCs). Each case is
``(kind, seed, case_seed)``: the worker rebuilds the mutated file from those
numbers alone (so any case can be replayed with :func:`replay`), calls the
library entry point for the kind and classifies what happened.

Mutation families:

``bytes``   flips of bytes and bits, truncation, insertion, huge varints
            and lengths, duplicated and zeroed runs (every kind);
``text``    token edits (prototxt);
``h5``      HDF5 structure edited with h5py: renamed, deleted and retyped
            datasets, soft- and hard-link cycles, external links and external
            storage, virtual datasets, deep nesting, compressed "bombs",
            damaged attributes (``.caffemodel.h5`` and ``.ccz.h5``);
``index``   ``.ccz.h5`` only: the JSON index rewritten (CRC recomputed) with
            hostile values, deleted/duplicated/swapped records, deep nesting,
            and the ``grid`` method's own meta (``step``, ``qmin``, ``nsym``,
            label counts; 1.2's ``dq_seg``, ``coder``, ``seg`` and ``tok``
            switched on, off or hostile) and its label and rANS streams
            forged (op ``grid_*``); 1.3's ``fpack`` codec of ``lossless``
            records switched on, off or given hostile meta (op ``lossless_*``);
``stream``  ``.ccz.h5`` only: a stream's bytes rewritten with a valid CRC
            (2.x: a part's bytes, or the skeleton or prototxt in the block).

Outcomes: ``ok`` (a result), ``error`` (a CaffeCompressError naming the
file), and the contract violations ``unnamed`` (typed but without the file
name), ``untyped`` (any other exception), ``silent`` (a ``.ccz.h5`` restored
to weights other than the original's), ``blowup`` (MemoryError or a peak RSS
rise above the limit), ``hang`` (no answer within the timeout) and ``crash``
(the worker died, e.g. by a signal); ``wrong`` is a result where only an
error is right (weights taken through a link or from external storage).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import resource
import shutil
import tempfile
import time
import traceback
import zlib
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import wait as mp_wait
from pathlib import Path

import numpy as np

KINDS = ("v0", "v1", "v2", "prototxt", "binaryproto", "h5", "ccz")
FAMILIES = {
    "v0": ("bytes",),
    "v1": ("bytes",),
    "v2": ("bytes",),
    "prototxt": ("bytes", "text", "text"),
    "binaryproto": ("bytes",),
    "h5": ("bytes", "h5", "h5"),
    "ccz": ("bytes", "h5", "index", "index", "stream"),
}
BAD = ("unnamed", "untyped", "silent", "wrong", "blowup", "hang", "crash")
# a result from these edits is wrong by definition: weights read from elsewhere than the file
_FOREIGN = ("h5:external_storage", "h5:vds", "h5:external_link", "h5:softlink_cycle", "h5:data_link")
GOLDEN = Path(__file__).resolve().parents[1] / "golden"
ZOO = Path(os.environ.get("CAFFE_ZOO", Path(__file__).resolve().parents[2].parent / "shared" / "caffe-zoo"))


# ------------------------------------------------------------------ seeds


def _synthetic_model(seed=0):
    from caffecompress.model import Layer, Model

    rng = np.random.default_rng(seed)

    def t(*shape, s=0.1):
        return (rng.standard_t(4, shape) * s).astype(np.float32)

    fc = t(32, 128, s=0.05)
    return Model(
        layers=[
            Layer("data", "Input", [], []),
            Layer("conv1", "Convolution", [t(8, 3, 3, 3), t(8)], ["", ""]),
            Layer("bn1", "BatchNorm", [rng.random(8, dtype=np.float32), rng.random(8, dtype=np.float32),
                                       np.array([999.0], np.float32)], []),
            Layer("scale1", "Scale", [1 + t(8), t(8)], []),
            Layer("relu1", "PReLU", [np.full(8, 0.25, np.float32)], []),
            Layer("fc", "InnerProduct", [fc, np.zeros(32, np.float32)], ["shared_w", ""]),
            Layer("fc_b", "InnerProduct", [fc.copy(), t(32)], ["shared_w", ""]),
            Layer("prob", "Softmax", [], []),
        ],
        name="fuzz-seed",
    )


_PROTOTXT = """name: "fuzz-seed"
input: "data"
input_shape { dim: 1 dim: 3 dim: 6 dim: 6 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "PReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool" type: "Pooling" bottom: "conv1" top: "pool"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" param { name: "shared_w" } param { }
  inner_product_param { num_output: 32 } }
layer { name: "fc_b" type: "InnerProduct" bottom: "fc" top: "fc_b" param { name: "shared_w" } param { }
  inner_product_param { num_output: 32 } }
layer { name: "prob" type: "Softmax" bottom: "fc_b" top: "prob" }
"""


def _pick(rng, seq):
    """One element of ``seq`` (any objects; ``Generator.choice`` would make an array of them)."""
    seq = list(seq)
    return seq[int(rng.integers(0, len(seq)))]


def _legacy4(shape):
    return (1,) * (4 - len(shape)) + tuple(int(d) for d in shape)


def _v1_bytes(model) -> bytes:
    from caffecompress.caffe.proto import pb

    types = {"Convolution": "CONVOLUTION", "InnerProduct": "INNER_PRODUCT", "Softmax": "SOFTMAX"}
    net = pb.NetParameter(name="fuzz-v1")
    for lay in model.layers:
        if lay.type not in types:
            continue
        rec = net.layers.add(name=lay.name, type=getattr(pb.V1LayerParameter, types[lay.type]))
        for a in lay.blobs:
            b = rec.blobs.add()
            b.num, b.channels, b.height, b.width = _legacy4(a.shape)
            b.data.extend(a.ravel().tolist())
    return net.SerializeToString()


def _v0_bytes(model) -> bytes:
    from caffecompress.caffe.proto import pb

    net = pb.NetParameter(name="fuzz-v0")
    net.input.append("data")
    net.input_dim.extend([1, 3, 6, 6])
    for lay, typ in ((model.layer("conv1"), "conv"), (model.layer("fc"), "innerproduct")):
        rec = net.layers.add()
        v0 = rec.layer
        v0.name, v0.type = lay.name, typ
        v0.num_output = int(lay.blobs[0].shape[0])
        if typ == "conv":
            v0.kernelsize = 3
        for a in lay.blobs:
            b = v0.blobs.add()
            b.num, b.channels, b.height, b.width = _legacy4(a.shape)
            b.data.extend(a.ravel().tolist())
    return net.SerializeToString()


def _binaryproto_bytes(seed=0) -> list:
    from caffecompress.caffe.proto import pb

    rng = np.random.default_rng(seed)
    a = pb.BlobProto(num=1, channels=3, height=8, width=8)
    a.data.extend(rng.uniform(0, 255, 192).astype(np.float32).tolist())
    b = pb.BlobProto()
    b.shape.dim.extend([3, 4, 4])
    b.double_data.extend(rng.uniform(0, 255, 48).tolist())
    return [a.SerializeToString(), b.SerializeToString()]


def build_seeds(folder) -> dict:
    """Write the seed files into ``folder``; return ``{kind: [seed dict, ...]}``.

    A seed dict has ``path`` and, for caffemodels, ``prototxt`` (or None).
    """
    import caffecompress as cc
    from caffecompress.caffe import write_caffemodel_h5
    from caffecompress.caffe.writer import caffemodel_bytes

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    seeds: dict = {k: [] for k in KINDS}
    m = _synthetic_model()
    proto = folder / "seed.prototxt"
    proto.write_text(_PROTOTXT)

    def put(kind, name, data, prototxt=None):
        p = folder / name
        p.write_bytes(data)
        seeds[kind].append({"path": str(p), "prototxt": None if prototxt is None else str(prototxt)})
        return p

    v2 = put("v2", "seed-v2.caffemodel", caffemodel_bytes(m), proto)
    m16 = _synthetic_model()
    for lay in m16.layers:
        lay.storage = ["float16"] * len(lay.blobs)
    put("v2", "seed-v2-fp16.caffemodel", caffemodel_bytes(m16, keep_fp16=True))
    put("v1", "seed-v1.caffemodel", _v1_bytes(m))
    put("v0", "seed-v0.caffemodel", _v0_bytes(m))
    seeds["prototxt"].append({"path": str(proto), "prototxt": None})
    for i, b in enumerate(_binaryproto_bytes()):
        put("binaryproto", f"seed-{i}.binaryproto", b)
    h5 = folder / "seed.caffemodel.h5"
    write_caffemodel_h5(cc.read_caffemodel(v2), h5)
    seeds["h5"].append({"path": str(h5), "prototxt": str(proto)})
    zoo_model = ZOO / "mtcnn" / "det1.caffemodel"
    zoo_proto = ZOO / "mtcnn" / "det1.prototxt"
    if zoo_model.exists() and zoo_proto.exists():
        z = put("v2", "det1.caffemodel", zoo_model.read_bytes(), None)
        zp = folder / "det1.prototxt"
        zp.write_bytes(zoo_proto.read_bytes())
        seeds["v2"][-1]["prototxt"] = str(zp)
        seeds["prototxt"].append({"path": str(zp), "prototxt": None})
        for rel in ("prototxt/lenet_v0_2014.prototxt",):
            if (ZOO / rel).exists():
                q = folder / Path(rel).name
                q.write_bytes((ZOO / rel).read_bytes())
                seeds["prototxt"].append({"path": str(q), "prototxt": None})
        cc.save(cc.compress(cc.read_caffemodel(z), preset="lossless"), folder / "det1.lossless.ccz.h5")
        seeds["ccz"].append({"path": str(folder / "det1.lossless.ccz.h5"), "prototxt": None})
    # without a skeleton (a model built in memory) and with one without blob
    # placeholders (HDF5 weights + prototxt): only the layout CRC ties their records
    cc.save(cc.compress(_synthetic_model(), preset="default", bits=4, prune=0.5), folder / "seed.nosk.ccz.h5")
    seeds["ccz"].append({"path": str(folder / "seed.nosk.ccz.h5"), "prototxt": None})
    cc.save(cc.compress(cc.read_caffemodel(h5, prototxt=proto), preset="lossless"), folder / "seed.fromh5.ccz.h5")
    seeds["ccz"].append({"path": str(folder / "seed.fromh5.ccz.h5"), "prototxt": None})
    src = cc.read_caffemodel(v2, prototxt=proto)
    for name, kw in (("lossless", {"preset": "lossless"}), ("default", {"preset": "default"}),
                     ("bits4-prune", {"preset": "default", "bits": 4, "prune": 0.5}),
                     ("deep", {"preset": "deep-compression"}),
                     # format 1.1: grid blobs (data-free rule: wide alphabets; one coarse step: narrow ones)
                     ("grid", {"preset": "default", "data_free": True}),
                     ("grid-step", {"preset": "default", "data_free": True, "step": 0.02})):
        p = folder / f"seed.{name}.ccz.h5"
        cm = cc.compress(src, **kw)
        cc.save(cm, p)
        seeds["ccz"].append({"path": str(p), "prototxt": None})
        if name in ("default", "bits4-prune"):  # and the 1.x layout the same writer still makes
            p = folder / f"seed.{name}.v1.ccz.h5"
            cc.save(cm, p, format_major=1)
            seeds["ccz"].append({"path": str(p), "prototxt": None})
    # the golden files of the example model: 1.1's five grid blobs (alphabets
    # up to 3116), 1.2's DQ and rANS blobs (token mode and a 241-symbol alphabet),
    # 1.3's packed float fields, 2.2's running-magnitude rANS contexts, 2.3's level-gap codebooks
    for name in ("example.grid.ccz.h5", "example.dq-rans.ccz.h5", "example.rans-step.ccz.h5",
                 "example.fpack.ccz.h5", "example.v22-fidelity.ccz.h5", "example.v23-bits6.ccz.h5"):
        golden = GOLDEN / name
        if golden.exists():
            p = folder / f"golden.{name.removeprefix('example.')}"
            shutil.copyfile(golden, p)
            seeds["ccz"].append({"path": str(p), "prototxt": None})
    return seeds


# ------------------------------------------------------------------ byte mutations


def _varint(v: int) -> bytes:
    out = bytearray()
    v &= (1 << 70) - 1
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


_HUGE = (2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**35, 2**62, 2**63 - 1, 2**64 - 1)


def mutate_bytes(data: bytes, rng) -> tuple[str, bytes]:
    """One byte-level mutation of ``data``: ``(op, new bytes)``."""
    b = bytearray(data)
    n = len(b)
    op = str(_pick(rng, ["flip_byte", "flip_bit", "truncate", "insert", "huge_varint",
                         "huge_length", "dup_run", "zero_run", "multi"]))
    pos = int(rng.integers(0, max(n, 1)))
    if n == 0:
        return "insert", bytes(rng.integers(0, 256, 8, dtype=np.uint8))
    if op == "flip_byte":
        b[pos] ^= int(rng.integers(1, 256))
    elif op == "flip_bit":
        b[pos] ^= 1 << int(rng.integers(0, 8))
    elif op == "truncate":
        del b[pos:]
    elif op == "insert":
        k = int(_pick(rng, [1, 1, 2, 4, 8, 64]))
        b[pos:pos] = bytes(rng.integers(0, 256, k, dtype=np.uint8))
    elif op == "huge_varint":
        v = _varint(int(_pick(rng, _HUGE)))
        if rng.random() < 0.3:
            v = b"\xff" * int(rng.integers(9, 12)) + b"\x01"
        if rng.random() < 0.5:
            b[pos:pos] = v
        else:
            b[pos : pos + len(v)] = v
    elif op == "huge_length":
        # a length-delimited key (wire type 2) near pos: its length becomes huge
        j = next((k for k in range(pos, min(n, pos + 256)) if b[k] & 7 == 2), pos)
        end = j + 1
        while end < n and b[end] & 0x80:
            end += 1
        b[j + 1 : end + 1] = _varint(int(_pick(rng, _HUGE)))
    elif op == "dup_run":
        k = int(rng.integers(1, 256))
        b[pos:pos] = b[pos : pos + k]
    elif op == "zero_run":
        k = int(rng.integers(1, 256))
        b[pos : pos + k] = bytes(len(b[pos : pos + k]))
    else:  # several flips
        for _ in range(int(rng.integers(2, 9))):
            b[int(rng.integers(0, n))] = int(rng.integers(0, 256))
    return op, bytes(b)


# ------------------------------------------------------------------ text mutations

_TOK = re.compile(r'\s+|#[^\n]*|"(?:[^"\\\n]|\\.)*"|[A-Za-z_][\w.]*|[-+]?[\d.]+(?:[eE][-+]?\d+)?|.', re.S)
_VOCAB = ["{", "}", "{", "}", ":", "<", ">", "[", "]", ",", ";", '"x"', '"', "'", "foo", "foo {", "layer",
          "layers", "name", "type", "bottom", "top", "param", "dim", "-1", "0", "1e309", "nan", "-inf",
          "99999999999999999999999", "0x7fffffffffffffff", "#", "\\", "\n", "\x00", "é", "layer {",
          "input_dim: 1000000000", "blobs { }", "[caffe.ext]", "true", "\"\\x\""]


def mutate_text(data: bytes, rng) -> tuple[str, bytes]:
    """One token-level edit of prototxt text."""
    text = data.decode("latin-1")
    toks = _TOK.findall(text) or [""]
    idx = [i for i, t in enumerate(toks) if not t.isspace()] or [0]
    i = int(_pick(rng, idx))
    op = str(_pick(rng, ["delete", "duplicate", "insert", "swap", "replace", "unterminate", "drop_line",
                         "dup_block", "append"]))
    if op == "delete":
        toks[i] = ""
    elif op == "duplicate":
        toks[i] = toks[i] + " " + toks[i]
    elif op == "insert":
        toks[i] = f"{_pick(rng, _VOCAB)} {toks[i]}"
    elif op == "swap":
        j = int(_pick(rng, idx))
        toks[i], toks[j] = toks[j], toks[i]
    elif op == "replace":
        toks[i] = str(_pick(rng, _VOCAB))
    elif op == "unterminate":
        strs = [k for k in idx if toks[k].startswith('"')] or [i]
        k = int(_pick(rng, strs))
        toks[k] = toks[k][:-1] if len(toks[k]) > 1 else '"'
    elif op == "append":
        toks.append("\n" + str(_pick(rng, _VOCAB)))
    out = "".join(toks)
    if op == "drop_line":
        lines = out.split("\n")
        del lines[int(rng.integers(0, len(lines)))]
        out = "\n".join(lines)
    elif op == "dup_block":
        a = int(rng.integers(0, len(out) + 1))
        out = out[:a] + out[a : a + int(rng.integers(1, 200))] + out[a:]
    return op, out.encode("latin-1")


# ------------------------------------------------------------------ HDF5 structure


def _datasets(f):
    import h5py

    out = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            out.append(name)

    f.visititems(visit)
    return out


def _groups(f):
    import h5py

    out = []
    f.visititems(lambda n, o: out.append(n) if isinstance(o, h5py.Group) else None)
    return out


_RENAMES = ["00", "4294967296", "99999999999999999999", "-1", "w", "1e3", " 0", "0x1", "+1", "7", "٣", "1.0", ""]


def mutate_h5(path: str, rng, kind: str) -> str:
    """Edit the HDF5 structure of the file at ``path`` in place; return the op name."""
    import h5py

    ops = ["rename", "delete", "retype", "softlink_cycle", "softlink_self", "dangling", "hardlink_cycle",
           "external_link", "external_storage", "deep_nesting", "bomb", "undeclared", "attrs", "vds",
           "extra_objects", "gzip"]
    if kind == "h5":
        ops += ["delete_group", "data_link"]
    else:
        ops += ["version", "version", "index_attr", "format_attr"]
    op = str(_pick(rng, ops))
    with h5py.File(path, "r+") as f:
        dsets = _datasets(f) or ["payload"]
        groups = [g for g in _groups(f)] or [""]
        target = str(_pick(rng, dsets))
        parent = target.rpartition("/")[0]
        pg = f[parent] if parent else f
        leaf = target.rpartition("/")[2]
        if op == "rename":
            new = str(_pick(rng, _RENAMES))
            if new == "":
                new = "x"
            if new not in pg:
                pg.move(leaf, new)
        elif op == "delete":
            del pg[leaf]
        elif op == "delete_group":
            g = str(_pick(rng, groups))
            if g and g in f:
                del f[g]
        elif op == "retype":
            old = f[target]
            shape = old.shape
            del pg[leaf]
            choice = int(rng.integers(0, 12))
            if choice == 0:
                pg.create_dataset(leaf, shape=shape, dtype="i4")
            elif choice == 1:
                pg.create_dataset(leaf, data=np.ones(shape, "f8"))
            elif choice == 2:
                pg.create_dataset(leaf, data=np.ones(shape, "f2"))
            elif choice == 3:
                pg.create_dataset(leaf, data=np.ones(shape, bool))
            elif choice == 4:
                pg.create_dataset(leaf, data=["text"] * 3, dtype=h5py.string_dtype())
            elif choice == 5:
                pg.create_dataset(leaf, data=np.zeros(4, [("a", "f4"), ("b", "i4")]))
            elif choice == 6:
                pg.create_dataset(leaf, data=np.ones(3, "c8"))
            elif choice == 7:
                pg.create_dataset(leaf, data=np.float32(1.5))  # scalar
            elif choice == 8:
                pg.create_dataset(leaf, shape=(0,), dtype="f4")
            elif choice == 9:
                pg.create_group(leaf)
            elif choice == 10:
                pg.create_dataset(leaf, data=np.arange(16, dtype="u1").reshape(4, 4))
            else:
                pg.create_dataset(leaf, shape=(), dtype=h5py.Empty("f4"))
        elif op == "softlink_cycle":
            root = "/data" if "data" in f else "/"
            del pg[leaf]
            pg[leaf] = h5py.SoftLink(root)
        elif op == "softlink_self":
            del pg[leaf]
            pg[leaf] = h5py.SoftLink("/" + target)
        elif op == "dangling":
            del pg[leaf]
            pg[leaf] = h5py.SoftLink("/nowhere/at/all")
        elif op == "hardlink_cycle":
            g = pg if parent else f.require_group("loopgrp")
            g["loop"] = g
        elif op == "external_link":
            del pg[leaf]
            dest = str(_pick(rng, [path, "/etc/passwd", "/nonexistent.h5", "/dev/zero"]))
            pg[leaf] = h5py.ExternalLink(dest, "/" + target)
        elif op == "external_storage":
            old = f[target]
            shape = old.shape or (4,)
            n = int(np.prod(shape)) * 4
            del pg[leaf]
            src = str(_pick(rng, ["/dev/urandom", "/dev/zero", "/etc/hostname", "/proc/self/environ", path]))
            pg.create_dataset(leaf, shape=shape, dtype="f4", external=[(src, 0, max(n, 4))])
        elif op == "deep_nesting":
            depth = int(_pick(rng, [40, 200, 1000]))
            g = f.require_group("data") if kind == "h5" else f
            name = "/".join(["n"] * depth)
            g.create_dataset(name + "/0", data=np.ones(3, np.float32))
        elif op == "bomb":
            old_shape = f[target].shape
            del pg[leaf]
            n = int(_pick(rng, [1 << 22, 1 << 24]))  # 16 or 64 MiB of zeros
            ds = pg.create_dataset(leaf, shape=(n,), dtype="f4", chunks=(1 << 20,), compression="gzip",
                                   compression_opts=9)
            ds[: 1 << 20] = np.zeros(1 << 20, np.float32)
            for s in range(1 << 20, n, 1 << 20):
                ds.id.write_direct_chunk((s,), ds.id.read_direct_chunk((0,))[1])
            del old_shape
        elif op == "gzip":  # the same values, deflated (another tool's writer): must still read
            old = f[target][()]
            del pg[leaf]
            if old.ndim:
                pg.create_dataset(leaf, data=old, compression="gzip", shuffle=bool(rng.integers(0, 2)))
            else:
                pg.create_dataset(leaf, data=old)
        elif op == "undeclared":
            del pg[leaf]
            pg.create_dataset(leaf, shape=(10**6, 10**6), dtype="f4", chunks=True)
        elif op == "attrs":
            obj = f[str(_pick(rng, ["/", *dsets]))]
            obj.attrs[str(_pick(rng, ["format", "x", "index", "format_version"]))] = _pick(rng, 
                [np.int64(-1), np.zeros((2, 2)), "str", np.bytes_(b"\xff\xfe")])
        elif op == "vds":
            old = f[target]
            shape = old.shape or (4,)
            del pg[leaf]
            layout = h5py.VirtualLayout(shape=shape, dtype=old.dtype if False else "f4")
            src = str(_pick(rng, [path, "/dev/zero", "/nonexistent.h5"]))
            layout[...] = h5py.VirtualSource(src, "/" + target, shape=shape, dtype="f4")
            pg.create_virtual_dataset(leaf, layout, fillvalue=7.0)
        elif op == "extra_objects":
            for i in range(int(rng.integers(1, 50))):
                f.require_group("data" if kind == "h5" else "junk").create_dataset(f"extra{i}/{i}", data=[1.0])
        elif op == "data_link":
            if "data" in f:
                del f["data"]
            f["data"] = _pick(rng, [h5py.SoftLink("/"), h5py.SoftLink("/data"), h5py.ExternalLink(path, "/data")])
        elif op == "version":
            f.attrs["format_version"] = np.bytes_(str(_pick(rng, 
                [" 1.0", "1.-1", "1", "1.0.0", "", "01.0", "1.0 ", "+1.0", "1_0", "١.٠", "1.99999999999999999999",
                 "-0.5", "1.0\x00", "2.0", "0.9", "1.x"])))
        elif op == "index_attr":
            f.attrs["index"] = _pick(rng, [np.array([1.5, 2.5, 3.5]), np.array([-1, 5, 0], np.int64),
                                           np.array([2**64 - 1, 2**64 - 1, 1], np.uint64), np.bytes_("abc"),
                                           np.zeros((3, 3), np.uint64), np.array([0, 0, 0], np.uint64)])
        else:  # format_attr
            f.attrs["format"] = _pick(rng, [np.int32(3), "caffecompress", np.bytes_(b"caffecompress\x00"),
                                            np.array([b"caffecompress", b"x"])])
    return op


# ------------------------------------------------------------------ the .ccz.h5 index


def _major(attrs) -> int:
    v = attrs.get("format_version", b"1.0")
    v = v.decode() if isinstance(v, bytes) else str(v)
    return 2 if v.startswith("2.") else 1


def read_ccz(path):
    """``(attrs dict, payload bytes, index dict)`` of a ``.ccz.h5``.

    A 2.x file's skeleton and prototxt (inside its index block) come back as
    ``attrs["_texts"]`` (``(skeleton, prototxt or None)``), which
    :func:`write_ccz` puts back into the block."""
    import h5py

    from caffecompress import container

    with h5py.File(path, "r") as f:
        attrs = {k: f.attrs[k] for k in f.attrs}
        payload = f["payload"][()].tobytes()
    off, ln, _ = (int(v) for v in attrs["index"])
    if _major(attrs) >= 2:
        text, skel, proto = container.read_index_block(payload[off : off + ln])
        attrs["_texts"] = (skel, proto)
        return attrs, payload, json.loads(text)
    return attrs, payload, json.loads(zlib.decompress(payload[off : off + ln]))


def write_ccz(path, attrs, payload: bytes, index_text: str, extra: bytes = b""):
    """Rewrite a ``.ccz.h5`` with ``payload + extra`` and a new index (CRC recomputed)."""
    import h5py

    from caffecompress import container

    if "_texts" in attrs:
        skel, proto = attrs["_texts"]
        z = container.index_block(index_text.encode("utf-8"), skel, proto)
    else:
        z = zlib.compress(index_text.encode("utf-8"), 6)
    body = payload + extra
    idx = [len(body), len(z), zlib.crc32(z) & 0xFFFFFFFF]
    with h5py.File(path, "w", libver=("v110", "v110")) as f:
        for k, v in attrs.items():
            if k != "index" and not k.startswith("_"):
                f.attrs[k] = v
        f.attrs["index"] = np.array(idx, np.uint64)
        f.create_dataset("payload", data=np.frombuffer(body + z, np.uint8))


def _nodes(obj, path=()):
    yield path, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _nodes(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _nodes(v, path + (i,))


def _set(obj, path, value):
    for k in path[:-1]:
        obj = obj[k]
    obj[path[-1]] = value


_DEEP = "__DEEP__"
_HOSTILE = ["", None, 0, -1, 1, 3, 2**31, 2**63, 2**64 + 5, -(2**63) - 1, 1e308, float("inf"), float("-inf"),
            float("nan"), "Infinity", True, False, [], {}, "100000,100000,100000", [100000, 100000, 100000],
            "a", "<f4", "|O", "V0", [0, 0, "<f4", 0, 0], {"data": [0, 0, "<f4", 0, 0]}, ["x"], [[1]], 0.5,
            "lossless", "raw", "ref", "-1", "4294967296", _DEEP, "\ud800"]


_GRID_KEYS = ("step", "qmin", "nsym", "nlab", "bits", "l_n", "l_nsym", "l_chunk", "dq_seg", "seg", "tok")
#: Format 1.2's switches of a grid record: dependent quantisation (dq_seg),
#: the rANS coder (coder, seg) and its magnitude-token mode (tok).
_SWITCHES = ("dq_seg", "coder", "tok", "seg", "ctx")


def _grid_value(key, v, rng):
    """A hostile or nearly right value for a grid meta ``key`` (now ``v``)."""
    if key == "step":
        x = float.fromhex(v) if isinstance(v, str) else 0.01
        return _pick(rng, ["", "zz", "0x", "nan", "inf", "-inf", "0x0p+0", "-0x0p+0", (-x).hex(), (x * 2).hex(),
                           (x / 2).hex(), float(np.nextafter(x, 1.0)).hex(), float(np.nextafter(x, 0.0)).hex(),
                           (5e-324).hex(), (1e308).hex(), float.hex(3.4e38), x, 1, True, None, [x], repr(x),
                           "0x1.0p+1024", "0x1.fffffffffffffp+1023", " " + v if isinstance(v, str) else "1"])
    n = v if type(v) is int else 1  # noqa: E721
    return _pick(rng, [n + 1, n - 1, -n, 0, 1, -1, 2047, 2048, -2047, -2048, 4095, 4096, 4097, 2**31, 2**63,
                       10**30, -(10**30), float(n), n + 0.5, str(n), True, None, [n]])


def _mutate_grid(ix, rng) -> str:
    """Edit the meta or label streams of a ``grid`` record: the method's own
    fields. A file without grid records gets one of its records relabelled
    ``grid`` with plausible grid meta over the streams it has."""
    grid = [b for b in ix["blobs"] if b.get("method") == "grid"]
    if not grid:
        if not ix["blobs"]:
            return "grid_none"
        b = _pick(rng, ix["blobs"])
        b["method"] = "grid"
        meta = b["meta"]
        shape = b["shape"] if isinstance(b["shape"], list) else []
        meta.setdefault("shape", ",".join(str(d) for d in shape))
        meta.update(step=(0.01).hex(), qmin=int(_pick(rng, [-3, 0, -2047])), nsym=int(_pick(rng, [1, 2, 7, 4095])))
        meta.setdefault("nlab", int(np.prod(shape)) if all(type(d) is int for d in shape) else 0)  # noqa: E721
        return "grid_relabel"
    pool = grid
    b = _pick(rng, pool)
    meta, parts = b["meta"], b["parts"]
    t = int(rng.integers(0, 10))
    if t >= 6:  # a 1.2 or 2.2 switch turned on, off or hostile: the streams no longer match the decoder
        key = str(_pick(rng, _SWITCHES))
        u = int(rng.integers(0, 3))
        if u == 0:
            meta.pop(key, None)
            return f"grid_no_{key}"
        if key == "coder":
            meta[key] = _pick(rng, ["rans", "huffman", "RANS", "", 0, None, ["rans"]])
        elif u == 1:
            meta[key] = _pick(rng, [4096, 1, 0, True])  # on, with a plausible value
        else:
            meta[key] = _grid_value(key, meta.get(key), rng)
        return f"grid_set_{key}"
    if t <= 2:  # one meta field
        key = str(_pick(rng, [k for k in _GRID_KEYS if k in meta] or ["step"]))
        meta[key] = _grid_value(key, meta.get(key), rng)
        return f"grid_{key}"
    if t == 3:  # qmin and nsym moved together: still within or just past +-2047
        q, n = meta.get("qmin", 0), meta.get("nsym", 1)
        if type(q) is int and type(n) is int:  # noqa: E721
            d = int(_pick(rng, [-1, 1, -2047, 2047, 4096]))
            meta["qmin"], meta["nsym"] = q + d, n + int(_pick(rng, [0, -d, 1, -1]))
        return "grid_range"
    if t == 4:  # a label stream part dropped, or taken from another record
        names = [k for k in parts if k.startswith(("l_", "a_"))] or list(parts) or ["l_lengths"]
        k = str(_pick(rng, names))
        others = [o for o in pool if o is not b and k in o["parts"]]
        if others and rng.random() < 0.6:
            parts[k] = list(_pick(rng, others)["parts"][k])
            return "grid_part_other"
        parts.pop(k, None)
        return "grid_part_drop"
    # a codebook part (a grid stores none), or the method renamed
    if rng.random() < 0.5 and parts:
        parts["codebook"] = list(_pick(rng, list(parts.values())))
        return "grid_codebook"
    b["method"] = str(_pick(rng, ["exact", "shared", "shared+sparse", "raw", "grid"]))
    return "grid_method"


_FPACK_KEYS = ("ebase", "ebits", "mbits")


def _mutate_lossless(ix, rng) -> str:
    """Edit a ``lossless`` record's codec: 1.3's ``fpack`` switched on over an
    LZMA stream (or off, over packed fields), its meta hostile or off by one;
    or a packed codebook's meta (2.1, 2.3)."""
    books = [b for b in ix["blobs"] if isinstance(b.get("meta"), dict) and "cb_n" in b["meta"]]
    if books and rng.random() < 0.4:  # 2.1's packed codebook (its count and widths), 2.3's level gaps
        meta = _pick(rng, books)["meta"]
        keys = ["cb_n", "cb_lmbits", "cb_lbase", "cb_lk"] if "cb_lk" in meta else \
            ["cb_n", "cb_ebase", "cb_ebits", "cb_mbits"]
        key = str(_pick(rng, keys + ["cb_lk" if "cb_lk" not in meta else "cb_ebits"]))
        v = meta.get(key, 0)
        n = v if type(v) is int else 0  # noqa: E721
        meta[key] = _pick(rng, [n + 1, n - 1, -1, 0, 8, 24, 256, 4097, 2**31, float(n), str(n), True, None])
        return f"lossless_codebook_{key}"
    pool = [b for b in ix["blobs"] if b.get("method") == "lossless" and isinstance(b.get("meta"), dict)]
    if not pool:
        return "lossless_none"
    b = _pick(rng, pool)
    meta = b["meta"]
    if meta.get("codec") != "fpack" or rng.random() < 0.2:
        if meta.get("codec") == "fpack":
            meta.clear()
            meta.update(codec=_pick(rng, ["lzma", "zlib"]), shuffle=4)
            return "lossless_fpack_off"
        meta["codec"] = "fpack"
        meta.update(ebase=int(_pick(rng, [0, 100, 127, 255])), ebits=int(_pick(rng, [0, 3, 8])),
                    mbits=int(_pick(rng, [0, 12, 23])))
        return "lossless_fpack_on"
    key = str(_pick(rng, _FPACK_KEYS))
    v = meta.get(key, 0)
    n = v if type(v) is int else 0  # noqa: E721
    meta[key] = _pick(rng, [n + 1, n - 1, -1, 0, 8, 9, 23, 24, 255, 256, 2**31, float(n), str(n), True, None])
    return f"lossless_{key}"


def mutate_index(path: str, rng) -> str:
    """Rewrite the JSON index of a ``.ccz.h5`` with a hostile edit (its CRC recomputed)."""
    attrs, payload, ix = read_ccz(path)
    payload = payload[: int(attrs["index"][0])]
    op = str(_pick(rng, ["set", "set", "set", "delete", "dup", "swap", "drop_blob", "dup_blob", "targeted",
                         "targeted", "deep", "grid", "grid", "grid", "lossless"]))
    nodes = [p for p, _ in _nodes(ix) if p]
    if op == "set":
        _set(ix, nodes[int(rng.integers(0, len(nodes)))], _HOSTILE[int(rng.integers(0, len(_HOSTILE)))])
    elif op == "delete":
        p = nodes[int(rng.integers(0, len(nodes)))]
        parent = ix
        for k in p[:-1]:
            parent = parent[k]
        del parent[p[-1]]
    elif op in ("dup", "swap"):
        lists = [p for p, v in _nodes(ix) if isinstance(v, list) and len(v) >= 2]
        if lists:
            p = lists[int(rng.integers(0, len(lists)))]
            lst = ix
            for k in p:
                lst = lst[k]
            i, j = (int(v) for v in rng.integers(0, len(lst), 2))
            if op == "dup":
                lst.insert(i, json.loads(json.dumps(lst[j])))
            else:
                lst[i], lst[j] = lst[j], lst[i]
    elif op == "drop_blob" and ix["blobs"]:
        del ix["blobs"][int(rng.integers(0, len(ix["blobs"])))]
    elif op == "dup_blob" and ix["blobs"]:
        i = int(rng.integers(0, len(ix["blobs"])))
        ix["blobs"].insert(i, json.loads(json.dumps(ix["blobs"][i])))
    elif op == "targeted" and ix["blobs"]:
        b = ix["blobs"][int(rng.integers(0, len(ix["blobs"])))]
        t = int(rng.integers(0, 9))
        if t == 0:
            b["parts"] = ""
        elif t == 1 and b["parts"]:
            e = next(iter(b["parts"].values()))
            e[1] = float("inf")
        elif t == 2:
            lay = ix["layers"][int(rng.integers(0, len(ix["layers"])))]
            lay[2]["storage"] = 0
        elif t == 3:
            b["meta"]["shape"] = "100000,100000,100000"
        elif t == 4:
            b["shape"] = list(reversed(b["shape"])) + [1]
        elif t == 5:
            b["meta"]["shape"] = ",".join(str(d) for d in b["shape"][::-1]) + ",1"
        elif t == 6:
            b["layer"] = int(rng.integers(0, len(ix["layers"])))
        elif t == 7:
            b["meta"]["nlab"] = 10**12
        else:
            ix["layers"][int(rng.integers(0, len(ix["layers"])))][0] = "renamed"
    elif op == "grid":
        op = _mutate_grid(ix, rng)
    elif op == "lossless":
        op = _mutate_lossless(ix, rng)
    elif op == "deep":
        _set(ix, nodes[int(rng.integers(0, len(nodes)))], _DEEP)
    text = json.dumps(ix, sort_keys=True)
    if _DEEP in text:
        depth = int(_pick(rng, [1000, 100000]))
        text = text.replace(json.dumps(_DEEP), "[" * depth + "]" * depth, 1)
    write_ccz(path, attrs, payload, text)
    return op


def _resize_or_flip(op: str, data: bytes, rng, itemsize: int = 1) -> tuple[str, bytes]:
    """``op`` "resize": halved, doubled or emptied; else bytes mutated
    (``"bytes_<how>"``); trimmed to whole items of ``itemsize``."""
    if op == "resize":
        u = int(rng.integers(0, 3))
        data = data[: len(data) // 2] if u == 0 else data + data if u == 1 else b""
    else:
        op, data = mutate_bytes(data, rng)
        op = "bytes_" + op
    return op, data[: len(data) - len(data) % itemsize]


def _mutate_stream_2(path, attrs, payload, ix, rng) -> str:
    """:func:`mutate_stream` for a 2.x file: a part's bytes (offsets follow from
    the order, no CRC a part) or the skeleton or prototxt in the index block."""
    order = [(i, k) for i, b in enumerate(ix["blobs"]) for k in sorted(b["parts"])]
    where, off = {}, 0
    for i, k in order:
        ln = ix["blobs"][i]["parts"][k][0]
        where[(i, k)] = (off, ln)
        off += ln
    skel, proto = attrs["_texts"]
    entries = order + [("texts", "skeleton")] + ([("texts", "prototxt")] if proto is not None else [])
    i, k = entries[int(rng.integers(0, len(entries)))]
    op = str(_pick(rng, ["bytes", "bytes", "bomb", "other_stream", "resize"]))
    if i == "texts":
        data = skel if k == "skeleton" else proto
        if op == "bomb":
            data = bytes(int(_pick(rng, [1 << 24, 1 << 25])))
        elif op == "other_stream" and order:
            o, ln = where[order[int(rng.integers(0, len(order)))]]
            data = payload[o : o + ln]
        else:
            op, data = _resize_or_flip(op, data, rng)
        attrs["_texts"] = (data, proto) if k == "skeleton" else (skel, data)
        write_ccz(path, attrs, payload, json.dumps(ix, sort_keys=True))
        return f"model_{op}"
    o, ln = where[(i, k)]
    data = payload[o : o + ln]
    dt = ix["blobs"][i]["parts"][k][1]
    itemsize = np.dtype(dt).itemsize
    if op == "other_stream":
        o2, ln2 = where[order[int(rng.integers(0, len(order)))]]
        data = payload[o2 : o2 + ln2]
    else:  # (a part has no inflated form: "bomb" resizes it)
        op, data = _resize_or_flip("resize" if op == "bomb" else op, data, rng, itemsize)
    ix["blobs"][i]["parts"][k] = [len(data), dt]
    write_ccz(path, attrs, payload[:o] + data + payload[o + ln :], json.dumps(ix, sort_keys=True))
    return f"part_{op}"


def mutate_stream(path: str, rng) -> str:
    """Rewrite one stream of a ``.ccz.h5`` with bad contents and a valid CRC."""
    attrs, payload, ix = read_ccz(path)
    payload = payload[: int(attrs["index"][0])]
    if "_texts" in attrs:
        return _mutate_stream_2(path, attrs, payload, ix, rng)
    entries = [("streams", k, e) for k, e in ix["streams"].items()]
    entries += [(i, k, e) for i, b in enumerate(ix["blobs"]) for k, e in b["parts"].items()]
    where, name, e = entries[int(rng.integers(0, len(entries)))]
    off, ln, dt, count, _ = e
    data = payload[off : off + ln]
    itemsize = np.dtype(dt).itemsize
    op = str(_pick(rng, ["bytes", "bytes", "inflated", "bomb", "other_stream", "resize"]))
    if op == "inflated" and where == "streams":
        op, raw = mutate_bytes(zlib.decompress(data), rng)
        data = zlib.compress(raw)
        op = "inflated_" + op
    elif op == "bomb" and where == "streams":
        c = zlib.compressobj(9)
        zero = bytes(1 << 20)
        data = b"".join([c.compress(zero) for _ in range(int(_pick(rng, [64, 512])))] + [c.flush()])
    elif op == "other_stream":
        _, _, o = entries[int(rng.integers(0, len(entries)))]
        data = payload[o[0] : o[0] + o[1]]
    else:
        op, data = _resize_or_flip(op, data, rng, itemsize)
    if len(data) % itemsize:
        data = data[: len(data) - len(data) % itemsize]
    new = [len(payload), len(data), dt, len(data) // itemsize, zlib.crc32(data) & 0xFFFFFFFF]
    if where == "streams":
        ix["streams"][name] = new
    else:
        ix["blobs"][where]["parts"][name] = new
    write_ccz(path, attrs, payload, json.dumps(ix, sort_keys=True), extra=data)
    return f"{'model' if where == 'streams' else 'part'}_{op}"


# ------------------------------------------------------------------ running one case


def make_case(kind: str, seed: dict, case_seed: int, path: str) -> str:
    """Write the mutated file for a case at ``path``; return ``"family:op"``."""
    rng = np.random.default_rng([case_seed, KINDS.index(kind)])
    fam = str(_pick(rng, FAMILIES[kind]))
    src = seed["path"]
    if fam in ("bytes", "text"):
        data = Path(src).read_bytes()
        op, data = (mutate_bytes if fam == "bytes" else mutate_text)(data, rng)
        Path(path).write_bytes(data)
    else:
        shutil.copyfile(src, path)
        op = {"h5": lambda: mutate_h5(path, rng, kind), "index": lambda: mutate_index(path, rng),
              "stream": lambda: mutate_stream(path, rng)}[fam]()
    return f"{fam}:{op}"


def _weights(model) -> list:
    return [(lay.name, [(b.shape, b.dtype.str, b.tobytes()) for b in lay.blobs]) for lay in model.layers]


def _same_weights(a, b) -> bool:
    if len(a) != len(b):
        return False
    for (na, ba), (nb, bb) in zip(a, b):
        if len(ba) != len(bb) or any(x != y for x, y in zip(ba, bb)):
            return False
    return True


def run_entry(kind: str, path: str, seed: dict, original, rng) -> None:
    """Call the library entry point for ``kind`` on ``path``; raise ``_Silent`` on other weights."""
    import caffecompress as cc
    from caffecompress.caffe import read_binaryproto, read_prototxt

    if kind in ("v0", "v1", "v2", "h5"):
        proto = seed.get("prototxt") if rng.random() < 0.3 else None
        m = cc.read_caffemodel(path, prototxt=proto)
        if rng.random() < 0.2:
            cc.caffemodel_bytes(m)
    elif kind == "prototxt":
        read_prototxt(path)
    elif kind == "binaryproto":
        read_binaryproto(path)
    else:
        r = rng.random()
        if r < 0.1:
            from caffecompress import container

            container.file_info(path)
            return
        m = cc.decompress(path)
        if not _same_weights(_weights(m), original):
            raise _Silent("restored weights differ from the original's")
        if r < 0.4:
            cc.caffemodel_bytes(m)


class _Silent(Exception):
    pass


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def classify(kind, seed, case_seed, path, original, rss_limit_mb) -> tuple:
    """Run one case in this process: ``(family:op, outcome, detail, peak MiB)``."""
    from caffecompress.errors import CaffeCompressError

    try:
        label = make_case(kind, seed, case_seed, path)
    except Exception as exc:  # a mutation the generator could not apply: not a reader case
        return "skip", "skip", f"{type(exc).__name__}: {exc}"[:200], 0.0
    rng = np.random.default_rng([case_seed, 99])
    _reset_peak()
    base = _status_kb("VmRSS")
    outcome, detail = "ok", ""
    try:
        run_entry(kind, path, seed, original, rng)
    except _Silent as exc:
        outcome, detail = "silent", str(exc)
    except MemoryError as exc:
        outcome, detail = "blowup", f"MemoryError: {exc}"[:300]
    except CaffeCompressError as exc:
        outcome = "error" if path in str(exc) else "unnamed"
        detail = f"{type(exc).__name__}: {exc}"[:300]
    except RecursionError as exc:
        outcome, detail = "untyped", f"RecursionError: {exc}"[:300]
    except Exception as exc:  # noqa: BLE001  (the point: anything else is a finding)
        tb = traceback.extract_tb(exc.__traceback__)
        where = next((f"{Path(t.filename).name}:{t.lineno}" for t in reversed(tb)
                      if "caffecompress" in t.filename), "?")
        outcome, detail = "untyped", f"{type(exc).__name__} at {where}: {exc}"[:300]
    if outcome == "ok" and label in _FOREIGN and kind == "h5":
        outcome, detail = "wrong", "weights accepted from a link or external storage"
    peak = max(0, _status_kb("VmHWM") - base) / 1024
    if outcome in ("ok", "error") and peak > rss_limit_mb:
        outcome, detail = "blowup", f"peak RSS +{peak:.0f} MiB"
    return label, outcome, detail, peak


# ------------------------------------------------------------------ worker processes


def _worker(conn, seed_dir, seeds, rss_limit_mb, as_limit_mb, inject=None):
    import caffecompress as cc

    originals = {}
    for i, s in enumerate(seeds["ccz"]):
        originals[i] = _weights(cc.decompress(s["path"]))
    # warm every entry point once (numba, protobuf) before limits apply
    for kind in KINDS:
        for s in seeds[kind]:
            try:
                run_entry(kind, s["path"], s, originals.get(0), np.random.default_rng(0))
            except Exception:  # noqa: BLE001
                pass
    vm = _status_kb("VmSize") // 1024
    if as_limit_mb:
        lim = (vm + as_limit_mb) << 20
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    work = tempfile.mkdtemp(prefix="fuzzcase-", dir=seed_dir)
    conn.send("ready")
    while True:
        msg = conn.recv()
        if msg is None:
            break
        kind, si, cs = msg
        if inject == "hang" and cs % 7 == 3:  # self-test of the harness: a case that never returns
            time.sleep(3600)
        if inject == "crash" and cs % 7 == 5:  # ... and one that kills its worker
            os.kill(os.getpid(), 11)
        ext = {"prototxt": ".prototxt", "binaryproto": ".binaryproto", "h5": ".caffemodel.h5",
               "ccz": ".ccz.h5"}.get(kind, ".caffemodel")
        path = os.path.join(work, f"case-{cs}{ext}")
        res = classify(kind, seeds[kind][si], cs, path, originals.get(si), rss_limit_mb)
        try:
            os.unlink(path)
        except OSError:
            pass
        conn.send(res)
    shutil.rmtree(work, ignore_errors=True)


@dataclass
class Report:
    """Counts of a campaign: per kind and outcome, per family:op and outcome, and the findings."""

    counts: Counter = field(default_factory=Counter)
    ops: Counter = field(default_factory=Counter)
    findings: list = field(default_factory=list)
    peak_mb: float = 0.0
    seconds: float = 0.0

    @property
    def bad(self) -> int:
        return sum(v for (k, o), v in self.counts.items() if o in BAD)

    def table(self) -> str:
        outs = ["ok", "error", *BAD, "skip"]
        w = max(len(k) for k in KINDS)
        lines = [f"{'kind':<{w}} " + " ".join(f"{o:>8}" for o in outs) + f" {'total':>8}"]
        for k in KINDS:
            row = [self.counts[(k, o)] for o in outs]
            lines.append(f"{k:<{w}} " + " ".join(f"{v:>8}" for v in row) + f" {sum(row):>8}")
        tot = [sum(self.counts[(k, o)] for k in KINDS) for o in outs]
        lines.append(f"{'all':<{w}} " + " ".join(f"{v:>8}" for v in tot) + f" {sum(tot):>8}")
        return "\n".join(lines)


def campaign(n_cases: int, *, seed: int = 0, workers: int = 2, timeout: float = 10.0, rss_limit_mb: float = 256,
             as_limit_mb: int = 2048, kinds=KINDS, folder=None, progress=None, inject=None) -> Report:
    """Run ``n_cases`` cases spread evenly over ``kinds`` in ``workers`` processes.

    Each worker applies an address-space limit (``as_limit_mb`` above its
    warmed-up size, so a runaway allocation fails there instead of on the
    host) and measures each case's peak RSS rise (``VmHWM`` reset per case);
    a case with no answer in ``timeout`` seconds is a hang (the worker is
    killed and replaced), a worker that dies is a crash. ``inject``
    (``"hang"`` or ``"crash"``) makes some cases misbehave on purpose, to
    test the harness itself.
    """
    own = folder is None
    folder = Path(tempfile.mkdtemp(prefix="fuzzseeds-")) if own else Path(folder)
    seeds = build_seeds(folder)
    cases = []
    for i in range(n_cases):
        kind = kinds[i % len(kinds)]
        cases.append((kind, (i // len(kinds)) % len(seeds[kind]), seed * 10_000_000 + i))
    ctx = mp.get_context("spawn")
    rep = Report()
    t0 = time.perf_counter()

    def start():
        a, b = ctx.Pipe()
        p = ctx.Process(target=_worker, args=(b, str(folder), seeds, rss_limit_mb, as_limit_mb, inject),
                        daemon=True)
        p.start()
        b.close()
        if not a.poll(300):
            raise RuntimeError("fuzz worker did not start")
        a.recv()
        return {"proc": p, "conn": a, "case": None, "t": 0.0}

    pool = [start() for _ in range(max(1, workers))]
    todo = list(reversed(cases))
    done = 0
    try:
        while todo or any(w["case"] for w in pool):
            for w in pool:
                if w["case"] is None and todo:
                    w["case"] = todo.pop()
                    w["t"] = time.monotonic()
                    w["conn"].send(w["case"])
            ready = mp_wait([w["conn"] for w in pool if w["case"]], timeout=0.5)
            for k, w in enumerate(pool):
                if w["case"] is None:
                    continue
                kind, _, cs = w["case"]
                res = None
                if w["conn"] in ready:
                    try:
                        res = w["conn"].recv()
                    except (EOFError, OSError):
                        w["proc"].join(5)
                        res = ("?", "crash", f"worker died (exit {w['proc'].exitcode})", 0.0)
                elif time.monotonic() - w["t"] > timeout:
                    w["proc"].kill()
                    w["proc"].join(5)
                    res = ("?", "hang", f"no answer in {timeout:.0f} s", 0.0)
                if res is None:
                    continue
                label, outcome, detail, peak = res
                rep.counts[(kind, outcome)] += 1
                rep.ops[(kind, label, outcome)] += 1
                rep.peak_mb = max(rep.peak_mb, peak)
                if outcome in BAD:
                    rep.findings.append((kind, w["case"][1], cs, label, outcome, detail))
                w["case"] = None
                done += 1
                if progress and done % 1000 == 0:
                    progress(done, rep)
                if outcome in ("crash", "hang"):
                    try:
                        w["conn"].close()
                    except OSError:
                        pass
                    pool[k] = start()
    finally:
        for w in pool:
            try:
                w["conn"].send(None)
            except (OSError, BrokenPipeError):
                pass
            w["proc"].join(5)
            if w["proc"].is_alive():
                w["proc"].kill()
        if own:
            shutil.rmtree(folder, ignore_errors=True)
    rep.seconds = time.perf_counter() - t0
    return rep


def replay(kind: str, seed_index: int, case_seed: int, folder=None):
    """Rebuild one case in this process and run it: ``(label, outcome, detail, peak)``."""
    import caffecompress as cc

    folder = Path(tempfile.mkdtemp(prefix="fuzzreplay-")) if folder is None else Path(folder)
    seeds = build_seeds(folder)
    s = seeds[kind][seed_index]
    orig = _weights(cc.decompress(s["path"])) if kind == "ccz" else None
    ext = {"prototxt": ".prototxt", "binaryproto": ".binaryproto", "h5": ".caffemodel.h5",
           "ccz": ".ccz.h5"}.get(kind, ".caffemodel")
    return classify(kind, s, case_seed, str(folder / f"case{ext}"), orig, 1 << 20)
