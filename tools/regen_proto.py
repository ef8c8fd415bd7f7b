#!/usr/bin/env python3
"""Compile ``proto/caffe.proto`` into the committed descriptor set.

The Python classes are not generated code: ``caffecompress/caffe/proto.py``
builds them at import from the serialized ``FileDescriptorSet`` written here,
so one file works on every protobuf runtime from 3.20 to 7.x (generated code
from a recent protoc refuses older runtimes).

Usage::

    .venv/bin/python tools/regen_proto.py            # rewrite the committed file
    .venv/bin/python tools/regen_proto.py --out X    # write elsewhere (tests)
    .venv/bin/python tools/regen_proto.py --check    # exit 1 if stale

Needs ``grpcio-tools`` (it bundles protoc).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO = ROOT / "proto" / "caffe.proto"
OUT = ROOT / "caffecompress" / "caffe" / "caffe_descriptor.bin"
# The name the file gets inside the descriptor (and so inside any pool it is
# added to). Unique on purpose: pycaffe and old OpenCV register "caffe.proto".
FILE_NAME = "caffecompress/caffe.proto"


def compile_descriptor(proto: Path = PROTO) -> bytes:
    """Return the serialized FileDescriptorSet of *proto*, deterministically.

    Source info is left out (it would embed comments and line numbers), and the
    file is renamed to :data:`FILE_NAME`.
    """
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.bin"
        rc = protoc.main(
            [
                "protoc",
                f"-I{proto.parent}",
                f"--descriptor_set_out={out}",
                str(proto),
            ]
        )
        if rc != 0:
            raise RuntimeError(f"protoc failed on {proto} (exit {rc})")
        fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    if len(fds.file) != 1:
        raise RuntimeError(f"expected one file in the descriptor set, got {len(fds.file)}")
    fds.file[0].name = FILE_NAME
    return fds.SerializeToString(deterministic=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT, help="where to write (default: %(default)s)")
    ap.add_argument("--check", action="store_true", help="only compare with the committed file")
    args = ap.parse_args(argv)
    data = compile_descriptor()
    if args.check:
        same = args.out.exists() and args.out.read_bytes() == data
        print(f"{args.out}: {'up to date' if same else 'STALE - run tools/regen_proto.py'}")
        return 0 if same else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    print(f"wrote {args.out} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
