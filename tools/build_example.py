"""Build the project's example model: caffecompress/data/example.{prototxt,caffemodel}.

A small classic CIFAR-style conv net (three conv + ReLU + pooling stages,
two fully connected layers, Softmax; 56,778 parameters, 228 KB) whose
weights are trained-like (resampled from the zoo's statistics by
``tools/synthetic.py``, fixed seed) and written through our own
``caffecompress.write_caffemodel``. The result is committed as package data:
the README quick start and the container golden files use it, so the build
is deterministic (same bytes on every run) and needs no zoo.

Usage::

    python tools/build_example.py [--out-dir caffecompress/data] [--check]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tools"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import synthetic  # noqa: E402

SEED = 20261128
OUT_DIR = ROOT / "caffecompress" / "data"

PROTOTXT = """\
name: "example_cifar_net"
# caffecompress example model: a CIFAR-10-style classifier, 3x32x32 input,
# 10 classes. Weights are synthetic but trained-like (tools/build_example.py).
layer {
  name: "data"
  type: "Input"
  top: "data"
  input_param { shape { dim: 1 dim: 3 dim: 32 dim: 32 } }
}
layer {
  name: "conv1"
  type: "Convolution"
  bottom: "data"
  top: "conv1"
  convolution_param { num_output: 16 kernel_size: 5 pad: 2 stride: 1 }
}
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer {
  name: "pool1"
  type: "Pooling"
  bottom: "conv1"
  top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 }
}
layer {
  name: "conv2"
  type: "Convolution"
  bottom: "pool1"
  top: "conv2"
  convolution_param { num_output: 32 kernel_size: 5 pad: 2 stride: 1 }
}
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer {
  name: "pool2"
  type: "Pooling"
  bottom: "conv2"
  top: "pool2"
  pooling_param { pool: AVE kernel_size: 3 stride: 2 }
}
layer {
  name: "conv3"
  type: "Convolution"
  bottom: "pool2"
  top: "conv3"
  convolution_param { num_output: 32 kernel_size: 3 pad: 1 stride: 1 }
}
layer { name: "relu3" type: "ReLU" bottom: "conv3" top: "conv3" }
layer {
  name: "pool3"
  type: "Pooling"
  bottom: "conv3"
  top: "pool3"
  pooling_param { pool: AVE kernel_size: 3 stride: 2 }
}
layer {
  name: "ip1"
  type: "InnerProduct"
  bottom: "pool3"
  top: "ip1"
  inner_product_param { num_output: 64 }
}
layer { name: "relu4" type: "ReLU" bottom: "ip1" top: "ip1" }
layer {
  name: "ip2"
  type: "InnerProduct"
  bottom: "ip1"
  top: "ip2"
  inner_product_param { num_output: 10 }
}
layer { name: "prob" type: "Softmax" bottom: "ip2" top: "prob" }
"""


def build(out_dir: Path = OUT_DIR, seed: int = SEED):
    """Write ``example.prototxt`` and ``example.caffemodel`` into ``out_dir``.

    Returns
    -------
    (pathlib.Path, pathlib.Path, Model)
        The two paths and the model written.
    """
    from caffecompress.caffe import write_caffemodel

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    proto = out_dir / "example.prototxt"
    weights = out_dir / "example.caffemodel"
    proto.write_text(PROTOTXT)
    model = synthetic.model_from_prototxt(proto, seed)
    model.name = "example_cifar_net"
    write_caffemodel(model, weights)
    return proto, weights, model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="build the example model")
    ap.add_argument("--out-dir", type=Path, default=OUT_DIR)
    ap.add_argument("--seed", type=int, default=SEED)
    a = ap.parse_args(argv)
    proto, weights, model = build(a.out_dir, a.seed)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    print(f"{weights}: {model.num_params} parameters, {weights.stat().st_size} bytes, sha256 {digest}")
    for lay in model.layers:
        if lay.blobs:
            print(f"  {lay.name:<6} {lay.type:<13} {[tuple(b.shape) for b in lay.blobs]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
