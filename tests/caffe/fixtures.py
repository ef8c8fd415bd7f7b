"""Helpers for Caffe I/O tests: zoo pairs, OpenCV oracles, fixtures built at test time.

Nothing here writes into the repository; fixtures go to pytest's tmp dirs.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from zoofiles import ZOO, zoo_manifest  # noqa: F401  (tests/ is on sys.path via its conftest)

# The retrained-MTCNN det2/det3 prototxts are swapped upstream (MANIFEST notes).
_SWAPPED = {"mtcnn-retrained/det2.caffemodel": "det3.prototxt", "mtcnn-retrained/det3.caffemodel": "det2.prototxt"}


def zoo_models() -> list[str]:
    """Relative paths of every caffemodel in the zoo manifest."""
    return [r["path"] for r in zoo_manifest() if r["path"].endswith(".caffemodel")]


def zoo_v2_models() -> list[str]:
    return [r["path"] for r in zoo_manifest() if r["path"].endswith(".caffemodel") and r["format"].startswith("V2")]


def zoo_prototxts() -> list[str]:
    return [r["path"] for r in zoo_manifest() if r["path"].endswith(".prototxt")]


def zoo_pair(rel: str) -> Path:
    """The deploy prototxt that goes with the zoo caffemodel ``rel``."""
    model = ZOO / rel
    if rel in _SWAPPED:
        return model.parent / _SWAPPED[rel]
    same = model.with_suffix(".prototxt")
    if same.exists():
        return same
    protos = sorted(model.parent.glob("*.prototxt"))
    assert len(protos) == 1, f"no unique prototxt beside {rel}"
    return protos[0]


def zoo_input_shape(rel: str) -> tuple:
    """Input shape OpenCV was run with, from the manifest notes ("in 1x3x12x12")."""
    for r in zoo_manifest():
        if r["path"] == rel:
            m = re.search(r"forward: in (\d+(?:x\d+)+)", r["notes"])
            assert m, rel
            return tuple(int(d) for d in m.group(1).split("x"))
    raise KeyError(rel)


def fixed_input(shape, seed=0) -> np.ndarray:
    """A deterministic, image-like input blob."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, size=shape).astype(np.float32)


def opencv_blobs(net) -> dict:
    """``{layer name: [blobs]}`` for every layer OpenCV holds blobs for."""
    out = {}
    for name in net.getLayerNames():
        blobs = net.getLayer(name).blobs
        if blobs:
            out[name] = list(blobs)
    return out


def opencv_forward(net, x) -> list:
    """Outputs of every unconnected output layer for input ``x``."""
    net.setPreferableBackend(0)  # DNN_BACKEND_DEFAULT / OpenCV, CPU
    net.setInput(x)
    return [np.array(o, copy=True) for o in net.forward(net.getUnconnectedOutLayersNames())]


def bits(a) -> np.ndarray:
    """Float32 values as their uint32 bit patterns (NaN payloads compare too)."""
    return np.ascontiguousarray(a, dtype=np.float32).ravel().view(np.uint32)


def blob_fields(buf: bytes) -> set:
    """Every (path, field) used by the blobs of a V2 NetParameter, at the wire level."""
    from caffecompress.caffe import wire

    used = set()
    for f in wire.iter_fields(buf, 0, len(buf)):
        used.add(("net", f.number, f.wtype))
        if f.number != 100:
            continue
        for g in wire.iter_fields(buf, f.a, f.b):
            if g.number != 7:
                continue
            for h in wire.iter_fields(buf, g.a, g.b):
                used.add(("blob", h.number, h.wtype))
                if h.number == 7:
                    for k in wire.iter_fields(buf, h.a, h.b):
                        used.add(("shape", k.number, k.wtype))
    return used


def make_net(layers, name="synthetic", version="V2"):
    """A pb.NetParameter with V2 ``layer`` records from ``[(name, type, [arrays], kwargs)]``."""
    from caffecompress.caffe.proto import pb

    net = pb.NetParameter(name=name)
    for lname, ltype, arrays, kw in layers:
        lp = net.layer.add(name=lname, type=ltype)
        for k, v in kw.items():
            if isinstance(v, dict):
                getattr(lp, k).MergeFrom(type(getattr(lp, k))(**v))
            elif isinstance(v, list):
                getattr(lp, k).extend(v)
            else:
                setattr(lp, k, v)
        for a in arrays:
            b = lp.blobs.add()
            b.shape.dim.extend(a.shape)
            b.data.extend(np.asarray(a, np.float32).ravel().tolist())
    return net

