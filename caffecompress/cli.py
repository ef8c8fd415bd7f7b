"""Command line: argparse only; every action is a library call.

Usage::

    caffecompress MODEL.caffemodel [--prototxt P] [-o OUT.h5] [--preset ...] ...
    caffecompress decompress IN.h5 -o OUT.caffemodel|OUT.caffemodel.h5|OUT.npz
    caffecompress info FILE
    caffecompress verify ORIGINAL.caffemodel COMPRESSED.h5 [--prototxt P] ...
    caffecompress batch INPUTS... -o OUTDIR [--jobs N | --scheduler ADDRESS] [compress options]
    caffecompress report FILE.ccz.h5 [-o REPORT.html|SUMMARY.png] [--original MODEL.caffemodel]

Exit codes: 0 ok, 1 input or processing failure (one line on stderr, no
traceback; set CAFFECOMPRESS_DEBUG=1 for one), 2 usage error, 3 verify
beyond tolerance. ``batch`` exits 1 when any model failed (the others are
still written).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from . import __version__
from .config import PRESETS

__all__ = ["main", "EXIT_OK", "EXIT_FAIL", "EXIT_USAGE", "EXIT_VERIFY"]

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_VERIFY = 0, 1, 2, 3
COMMANDS = ("compress", "decompress", "info", "verify", "batch", "report")
SUFFIX = ".ccz.h5"


class UsageError(Exception):
    """Bad command line (exit 2)."""


# ------------------------------------------------------------------ parsers


def _bits(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {s!r}") from None
    if not 1 <= v <= 12:
        raise argparse.ArgumentTypeError(f"bits must be 1..12, got {v}")
    return v


def _fraction(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1), got {v}")
    return v


def _override(s: str):
    """``NAME_OR_GLOB=BITS`` or ``NAME_OR_GLOB=lossless``."""
    if "=" not in s:
        raise argparse.ArgumentTypeError(f"expected NAME=BITS or NAME=lossless, got {s!r}")
    pat, val = s.rsplit("=", 1)
    if val == "lossless":
        return pat, {"lossless": True}
    return pat, {"bits": _bits(val)}


def _compress_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("compression")
    g.add_argument("--preset", choices=PRESETS, default=None,
                   help="lossless | default (fidelity-targeted with OpenCV 4.x, else data-free) | "
                        "deep-compression")
    g.add_argument("--max-error", type=float, metavar="E",
                   help="largest relative L2 error of any compared output on the calibration inputs "
                        "(default preset: 0.02 whenever OpenCV 4.x and the prototxt are there)")
    g.add_argument("--data-free", action="store_true",
                   help="the data-free rule (per-blob weight SQNR), no calibration forwards")
    g.add_argument("--calib", metavar="DIR|FILE.npy|FILE.npz",
                   help="calibration images (a folder) or input blobs (default: bundled images)")
    g.add_argument("--mean", metavar="VALUES|FILE.binaryproto",
                   help="calibration preprocessing: mean to subtract (one value, per channel, or a binaryproto)")
    g.add_argument("--scale", type=float, help="calibration preprocessing: multiplier after the mean (1/128)")
    g.add_argument("--swap-rb", action="store_true", help="calibration preprocessing: swap R and B")
    g.add_argument("--bits", type=_bits, help="codebook bits of every compressed weight blob")
    g.add_argument("--conv-bits", type=_bits, help="bits of convolution weights")
    g.add_argument("--fc-bits", type=_bits, help="bits of inner-product / embedding / recurrent weights")
    g.add_argument("--prune", type=_fraction, metavar="FRACTION", help="fraction of weights pruned")
    g.add_argument("--layer", action="append", type=_override, default=[], metavar="NAME=BITS",
                   help="per-layer override by name or glob (BITS or 'lossless'); repeatable")
    g.add_argument("--config", metavar="FILE.toml", help="TOML settings with [layers] overrides")
    g.add_argument("--backend", choices=("cpu", "gpu", "hybrid", "auto"), default=None)
    g.add_argument("--force", action="store_true", help="overwrite existing outputs")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", "-q", action="store_true", help="no table, no progress bar")
    p.add_argument("--json", action="store_true", help="machine-readable report on stdout")


def _parser(cmd: str) -> argparse.ArgumentParser:
    prog = "caffecompress" if cmd == "compress" else f"caffecompress {cmd}"
    p = argparse.ArgumentParser(prog=prog, description=_DESCRIPTIONS[cmd])
    if cmd == "compress":
        p.add_argument("model", metavar="MODEL.caffemodel")
        p.add_argument("--prototxt", metavar="P", help="deploy prototxt (kept in the output)")
        p.add_argument("-o", "--output", metavar="OUT.h5",
                       help=f"output file (default: beside the input, *{SUFFIX})")
        p.add_argument("--report", metavar="REPORT.html",
                       help="also write the visual report (.html page or .png summary; needs matplotlib)")
        _compress_options(p)
        p.add_argument("--version", action="version", version=f"caffecompress {__version__}")
    elif cmd == "decompress":
        p.add_argument("input", metavar="IN.h5")
        p.add_argument("-o", "--output", metavar="OUT",
                       help="OUT.caffemodel, OUT.caffemodel.h5 or OUT.npz (by extension)")
        p.add_argument("--force", action="store_true")
    elif cmd == "info":
        p.add_argument("file", metavar="FILE", help=".caffemodel(.h5) or compressed file")
        p.add_argument("--prototxt", metavar="P")
    elif cmd == "verify":
        p.add_argument("original", metavar="ORIGINAL.caffemodel")
        p.add_argument("compressed", metavar="COMPRESSED.h5")
        p.add_argument("--prototxt", metavar="P",
                       help="deploy prototxt (default: the one stored in COMPRESSED.h5, else "
                            "ORIGINAL.prototxt beside the original)")
        p.add_argument("--images", metavar="DIR", help="folder of images (default: bundled samples)")
        p.add_argument("--mean", metavar="VALUES|FILE.binaryproto",
                       help="mean to subtract: one value, comma-separated per channel, or a binaryproto")
        p.add_argument("--scale", type=float, help="multiplier after the mean (default 1/128)")
        p.add_argument("--swap-rb", action="store_true")
        p.add_argument("--size", metavar="WxH", help="feed this input size instead of the prototxt's")
        p.add_argument("--tolerance", type=float, default=0.05,
                       help="largest accepted relative L2 error (default 0.05; exit 3 beyond)")
    elif cmd == "batch":
        p.add_argument("inputs", nargs="+", metavar="INPUTS",
                       help="folders, globs or files of .caffemodel(.h5)")
        p.add_argument("-o", "--output", required=True, metavar="OUTDIR")
        p.add_argument("--jobs", "-j", type=int, default=None,
                       help="models compressed in parallel on this machine (default 1)")
        p.add_argument("--scheduler", metavar="ADDRESS",
                       help="run the jobs on this Dask cluster: scheduler address (tcp://host:port) or "
                            "scheduler file (.json); default $DASK_SCHEDULER_ADDRESS unless --jobs is "
                            "given. Inputs and OUTDIR must be on a filesystem the workers share")
        _compress_options(p)
    elif cmd == "report":
        p.add_argument("input", metavar="FILE.ccz.h5")
        p.add_argument("-o", "--output", metavar="REPORT.html",
                       help="REPORT.html (one page, plots embedded) or SUMMARY.png (one figure); "
                            "default: beside the input, *.report.html")
        p.add_argument("--original", metavar="MODEL.caffemodel",
                       help="histogram these weights (before compression) beside the codebooks")
        p.add_argument("--prototxt", metavar="P", help="for reading a V0/V1 --original")
        p.add_argument("--top", type=int, default=4, metavar="N",
                       help="largest compressed layers to histogram (default 4)")
        p.add_argument("--force", action="store_true", help="overwrite an existing report")
    _common(p)
    return p


_DESCRIPTIONS = {
    "compress": "Compress a trained Caffe model into one HDF5 file (default action). "
                "Other commands: decompress, info, verify, batch, report (see `caffecompress CMD -h`).",
    "decompress": "Restore a compressed file to .caffemodel, .caffemodel.h5 or .npz.",
    "info": "Describe a .caffemodel or a compressed file.",
    "verify": "Run the original and the compressed model through OpenCV 4.x and compare outputs.",
    "batch": "Compress many models; one status line each, continues past failures.",
    "report": "Plots of a compressed file (bytes and bits per layer, codebooks over the weights, "
              "size breakdown, the allocation's size/error points) in one HTML page or PNG.",
}


# ------------------------------------------------------------------ helpers


def _err(msg: str) -> None:
    print(f"caffecompress: error: {msg}", file=sys.stderr)


def _warn(msg: str, quiet=False) -> None:
    if not quiet:
        print(f"caffecompress: warning: {msg}", file=sys.stderr)


def default_output(model_path) -> Path:
    """``dir/name.caffemodel`` -> ``dir/name.ccz.h5`` (also for ``.caffemodel.h5``)."""
    p = Path(model_path)
    name = p.name
    for suf in (".caffemodel.h5", ".caffemodel", ".h5"):
        if name.lower().endswith(suf) and len(name) > len(suf):
            name = name[: -len(suf)]
            break
    return p.with_name(name + SUFFIX)


def _overrides(args) -> dict:
    kw = {}
    for k in ("bits", "conv_bits", "fc_bits", "prune", "backend"):
        v = getattr(args, k, None)
        if v is not None:
            kw[k] = v
    if args.layer:
        kw["layers"] = dict(args.layer)
    if getattr(args, "max_error", None) is not None:
        if not 0.0 < args.max_error < 1.0:
            raise UsageError(f"--max-error must be in (0, 1), got {args.max_error}")
        kw["max_error"] = args.max_error
    if getattr(args, "data_free", False):
        if getattr(args, "max_error", None) is not None:
            raise UsageError("--max-error and --data-free exclude each other")
        kw["data_free"] = True
    if getattr(args, "calib", None) is not None:
        kw["calib"] = args.calib
    if getattr(args, "mean", None) is not None:
        kw["mean"] = _parse_mean(args.mean)
    if getattr(args, "scale", None) is not None:
        kw["scale"] = args.scale
    if getattr(args, "swap_rb", False):
        kw["swap_rb"] = True
    return kw


class _Progress:
    """tqdm bar on stderr, shown only once a run has taken about a second."""

    def __init__(self, enabled: bool, desc: str):
        self.bar = None
        self.enabled = enabled and sys.stderr is not None
        self.desc = desc

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            try:
                from tqdm import tqdm  # noqa: PLC0415
            except ImportError:
                self.enabled = False
                return
            self.bar = tqdm(total=total, desc=self.desc, unit="w", unit_scale=True,
                            delay=1.0, leave=False, file=sys.stderr)
        self.bar.update(done - self.bar.n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _read_model(path, prototxt=None):
    from .caffe import read_caffemodel  # noqa: PLC0415

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if p.is_dir():
        raise IsADirectoryError(f"{path}: is a directory")
    if prototxt is not None and not Path(prototxt).is_file():
        raise FileNotFoundError(f"{prototxt}: no such file")
    return read_caffemodel(str(path), prototxt=None if prototxt is None else str(prototxt))


def compress_file(model_path, output=None, *, prototxt=None, preset=None, config=None,
                  force=False, progress=None, **overrides) -> dict:
    """Read, compress and save one model; return a report dict (used by CLI and batch)."""
    from . import container, pipeline, report  # noqa: PLC0415

    out = Path(output) if output is not None else default_output(model_path)
    inputs = [model_path] + ([prototxt] if prototxt else [])
    if container.is_compressed(model_path):
        from .errors import FormatError  # noqa: PLC0415

        raise FormatError("already a caffecompress file (restore it with `caffecompress decompress`)",
                          path=model_path)
    container.check_output_path(out, inputs=inputs, force=force)
    t0 = time.perf_counter()
    model = _read_model(model_path, prototxt)
    cm = pipeline.compress(model, preset=preset, config=config, progress=progress, release=True,
                           **overrides)
    del model
    container.save(cm, out, force=force, inputs=inputs)
    file_bytes = out.stat().st_size
    in_bytes = Path(model_path).stat().st_size
    rows = report.layer_rows(cm)
    tot = report.totals(rows, file_bytes=file_bytes, input_bytes=in_bytes)
    tot["seconds"] = round(time.perf_counter() - t0, 3)
    return {"input": str(model_path), "output": str(out), "preset": cm.settings.get("preset"),
            "warnings": cm.warnings, "unmatched": cm.unmatched, "layers": rows, "totals": tot}


def _emit(args, rep: dict, text: str) -> None:
    from .report import json_safe  # noqa: PLC0415

    if args.json:
        print(json.dumps(json_safe(rep), indent=1))
    elif not args.quiet:
        print(text)


# ------------------------------------------------------------------ commands


def cmd_compress(args) -> int:
    from .report import format_table  # noqa: PLC0415

    if args.report:  # fail before compressing: no matplotlib, bad extension, existing report
        _check_report(args.report, args.force)
    bar = _Progress(not (args.quiet or args.json), "compress")
    try:
        ov = _overrides(args)
        if not (args.quiet or args.json):
            # the fidelity stages (statistics, probes, joint forwards) take a while before any blob is coded
            ov["log"] = lambda line: print(f"caffecompress: {line}", file=sys.stderr)
        rep = compress_file(args.model, args.output, prototxt=args.prototxt, preset=args.preset,
                            config=args.config, force=args.force, progress=bar, **ov)
    finally:
        bar.close()
    for w in rep["warnings"]:
        _warn(w, args.quiet)
    if rep["unmatched"]:
        _warn(f"{len(rep['unmatched'])} weight layer(s) not in the prototxt, kept: "
              + ", ".join(rep["unmatched"][:5]) + (" ..." if len(rep["unmatched"]) > 5 else ""),
              args.quiet)
    t = rep["totals"]
    text = format_table(rep["layers"], t) + f"\nwrote {rep['output']} in {t['seconds']:.1f} s"
    if args.report:
        from .plots import write_report  # noqa: PLC0415

        write_report(rep["output"], args.report, original=args.model, prototxt=args.prototxt,
                     force=args.force)
        rep["report"] = str(args.report)
        text += f"\nwrote {args.report}"
    _emit(args, rep, text)
    return EXIT_OK


def _check_report(out, force: bool) -> None:
    from .container import check_output_path  # noqa: PLC0415
    from .plots import require_matplotlib  # noqa: PLC0415

    if Path(out).suffix.lower() not in (".html", ".htm", ".png"):
        raise UsageError(f"report {out}: extension must be .html (a page) or .png (one figure)")
    require_matplotlib()
    check_output_path(out, force=force)


def cmd_report(args) -> int:
    from .plots import write_report  # noqa: PLC0415

    inp = Path(args.input)
    if not inp.is_file():
        raise FileNotFoundError(f"{inp}: no such file")
    if args.output is None:
        name = inp.name[: -len(SUFFIX)] if inp.name.endswith(SUFFIX) else inp.stem
        out = inp.with_name(name + ".report.html")
    else:
        out = Path(args.output)
    if args.top < 0:
        raise UsageError("--top must be >= 0")
    _check_report(out, args.force)
    t0 = time.perf_counter()
    write_report(inp, out, original=args.original, prototxt=args.prototxt, top=args.top, force=args.force)
    rep = {"input": str(inp), "output": str(out), "bytes": out.stat().st_size,
           "seconds": round(time.perf_counter() - t0, 3)}
    _emit(args, rep, f"wrote {out} ({rep['bytes']:,} bytes) in {rep['seconds']:.1f} s")
    return EXIT_OK


def _output_kind(path: str) -> str:
    low = path.lower()
    if low.endswith(".caffemodel.h5"):
        return "h5"
    if low.endswith(".caffemodel"):
        return "caffemodel"
    if low.endswith(".npz"):
        return "npz"
    raise UsageError(f"output {path!r}: extension must be .caffemodel, .caffemodel.h5 or .npz")


def _save_npz(model, path) -> None:
    import numpy as np  # noqa: PLC0415

    arrays = {f"{lay.name}/{i}": b for lay in model.layers for i, b in enumerate(lay.blobs)}
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def cmd_decompress(args) -> int:
    from . import caffe, container  # noqa: PLC0415

    inp = Path(args.input)
    if args.output is None:
        name = inp.name[: -len(SUFFIX)] if inp.name.endswith(SUFFIX) else inp.stem
        out = inp.with_name(name + ".caffemodel")
    else:
        out = Path(args.output)
    kind = _output_kind(str(out))
    container.check_output_path(out, inputs=[inp], force=args.force)
    t0 = time.perf_counter()
    model = container.decompress(inp)
    writer = {"caffemodel": caffe.write_caffemodel, "h5": caffe.write_caffemodel_h5,
              "npz": _save_npz}[kind]
    container.atomic_write(out, lambda tmp: writer(model, tmp))
    rep = {"input": str(inp), "output": str(out), "format": kind,
           "bytes": out.stat().st_size, "seconds": round(time.perf_counter() - t0, 3)}
    _emit(args, rep, f"wrote {out} ({rep['bytes']:,} bytes) in {rep['seconds']:.1f} s")
    return EXIT_OK


def cmd_info(args) -> int:
    from . import container, report  # noqa: PLC0415

    path = Path(args.file)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if container.is_compressed(path):
        fi = container.file_info(path)
        cm = fi["model"]
        rows = report.layer_rows(cm, fi["stored"])
        tot = report.totals(rows, file_bytes=fi["file_bytes"])
        tot.update({k: fi[k] for k in ("payload_bytes", "index_bytes", "dataset_bytes",
                                        "overhead_bytes", "overhead")})
        opaque = _opaque(cm.skeleton)
        rep = {"file": str(path), "kind": "compressed", "format_version": fi["format_version"],
               "name": cm.name, "source_format": cm.format, "settings": cm.settings,
               "has_prototxt": cm.prototxt is not None, "layers": rows, "totals": tot,
               "opaque": opaque}
        text = "\n".join([
            f"{path}: caffecompress format {fi['format_version']}, net {cm.name!r} "
            f"(source {cm.format}), {_settings_text(cm.settings)}, "
            f"prototxt {'stored' if cm.prototxt is not None else 'absent'}",
            report.format_table(rows, tot),
            f"file {fi['file_bytes']:,} B = streams {fi['payload_bytes'] - fi['index_bytes']:,} B"
            f" + index {fi['index_bytes']:,} B"
            f"{' (with the skeleton and prototxt)' if not fi['format_version'].startswith('1.') else ''}"
            f" + HDF5 overhead "
            f"{fi['overhead_bytes']:,} B ({fi['overhead']:.1%}); dense weights "
            f"{tot['weights_bytes']:,} B ({tot['weights_bytes'] / fi['file_bytes']:.2f}x the file)",
            *_fidelity_lines(cm.settings),
            *_opaque_lines(opaque),
        ])
    else:
        model = _read_model(path, args.prototxt)
        rows = report.model_rows(model)
        tot = report.totals(rows, file_bytes=path.stat().st_size)
        opaque = _opaque(model.skeleton)
        rep = {"file": str(path), "kind": "caffemodel", "name": model.name,
               "source_format": model.format, "unmatched": model.unmatched,
               "layers": rows, "totals": tot, "opaque": opaque}
        text = "\n".join([
            f"{path}: Caffe {model.format} weights, net {model.name!r}",
            report.format_table(rows, tot, compressed=False),
            f"file {tot['file_bytes']:,} B, dense weights {tot['weights_bytes']:,} B",
            *_opaque_lines(opaque),
        ])
    _emit(args, rep, text)
    return EXIT_OK


def _opaque(skeleton) -> list:
    """Fields of the net structure kept as unknown bytes (fork fields, clashes)."""
    from .caffe.tolerant import opaque_report  # noqa: PLC0415

    return opaque_report(skeleton)


def _opaque_lines(opaque: list, show: int = 20) -> list:
    """``info``'s lines on what was kept opaque (written back byte for byte)."""
    if not opaque:
        return []
    total = sum(o["bytes"] for o in opaque)
    lines = [f"kept opaque (not in the BVLC schema or not parsing as it; written back byte for byte): "
             f"{len(opaque)} field(s), {total:,} B"]
    for o in opaque[:show]:
        where = f"layer {o['layer']!r}" if o["layer"] is not None else "net"
        if o["path"]:
            where += f" {o['path']}"
        maybe = f"; maybe {o['maybe']}" if o["maybe"] else ""
        lines.append(f"  {where}: {o['message']} field {o['number']} ({o['wire_type']}, "
                     f"{o['bytes']} B), {o['reason']}{maybe}")
    if len(opaque) > show:
        lines.append(f"  ... and {len(opaque) - show} more (--json lists all)")
    return lines


def _fidelity_lines(st: dict) -> list:
    """What a fidelity-targeted file records: target, error reached, calibration, points."""
    fid = st.get("fidelity")
    if not fid:
        return [f"mode: {st.get('mode', 'data-free')}"]
    out = [f"mode: {fid.get('mode')}"
           + (f", target {fid['max_error']:g}" if fid.get("max_error") is not None else "")
           + f", error on the calibration inputs {fid.get('calib_error', float('nan')):.4g}"
           + f" ({fid.get('forwards')} forwards, {fid.get('seconds', 0):.1f} s)",
           f"calibration: {fid.get('calibration')}; preprocessing {fid.get('preprocessing')}"]
    alloc = st.get("allocation") or {}
    pts = alloc.get("points") or []
    if pts:
        out.append("allocation points explored (bytes, predicted error, measured error):")
        wk = max(len(pt.get("kind", "")) for pt in pts)
        for i, pt in enumerate(pts):
            pred, meas = pt.get("predicted"), pt.get("measured")
            mark = "  <- chosen" if i == alloc.get("chosen") else ""
            if meas is None:
                meas = ("- (not run: predicted over the aim)" if pt.get("skipped") == "predicted"
                        else "- (not run: larger than a point that held)")
            else:
                meas = format(meas, ".4f")
            nb = ("~" if pt.get("estimated") else "") + format(pt["bytes"], ",.0f")
            out.append(f"  {pt.get('kind', ''):<{wk}} {nb:>12} B  "
                       f"{'-' if pred is None else format(pred, '.4f'):>8}  {meas}{mark}")
    return out


def _settings_text(st: dict) -> str:
    """``preset default, bits 4, prune 0.5`` from a stored settings dict."""
    parts = [f"preset {st.get('preset')}"]
    for k in ("bits", "conv_bits", "fc_bits", "prune", "init", "sqnr_target"):
        if st.get(k) is not None:
            parts.append(f"{k.replace('_', '-')} {st[k]}")
    if st.get("layers"):
        parts.append(f"{len(st['layers'])} layer override(s)")
    return ", ".join(parts)


def _parse_mean(s):
    if s is None:
        return None
    p = Path(s)
    if p.suffix == ".binaryproto" or p.is_file():
        from .caffe import read_binaryproto  # noqa: PLC0415

        return read_binaryproto(str(p))
    try:
        vals = [float(v) for v in s.replace(" ", ",").split(",") if v]
    except ValueError:
        raise UsageError(f"--mean: expected numbers or a .binaryproto file, got {s!r}") from None
    return vals[0] if len(vals) == 1 else vals


def _parse_size(s):
    if s is None:
        return None
    try:
        w, h = (int(v) for v in s.lower().split("x"))
    except ValueError:
        raise UsageError(f"--size: expected WxH, got {s!r}") from None
    return w, h


def cmd_verify(args) -> int:
    from . import container, verify  # noqa: PLC0415
    from .report import json_safe  # noqa: PLC0415

    mean, size = _parse_mean(args.mean), _parse_size(args.size)
    cm = container.open_compressed(args.compressed)
    if args.prototxt is not None:
        proto = Path(args.prototxt).read_text()
    elif cm.prototxt is not None:
        proto = cm.prototxt
    elif _prototxt_beside(Path(args.original)) is not None:
        proto = _prototxt_beside(Path(args.original)).read_text()
    else:
        raise UsageError("the compressed file holds no prototxt and none is beside the original: "
                         "pass --prototxt")
    orig = Path(args.original)
    if not orig.is_file():
        raise FileNotFoundError(f"{orig}: no such file")
    restored = container.caffemodel_bytes(cm)
    scale, swap_rb = args.scale, args.swap_rb
    stored = (cm.settings.get("fidelity") or {}).get("preprocessing") or {}
    if mean is None and scale is None and not swap_rb and stored:
        # the preprocessing the file was calibrated with, unless told otherwise
        if isinstance(stored.get("mean"), (int, float, list)):
            mean = stored["mean"]
        elif stored.get("mean") is not None:
            _warn(f"the file was calibrated with a mean {stored['mean']}: pass --mean to verify with it",
                  args.quiet)
        scale, swap_rb = stored.get("scale"), bool(stored.get("swap_rb", False))
    reps = verify.compare((proto, orig.read_bytes()), (proto, restored), images=args.images,
                          mean=mean, scale=scale, swap_rb=swap_rb, size=size)
    worst = verify.max_rel_error(reps)
    ok = worst <= args.tolerance
    rep = {"original": str(orig), "compressed": args.compressed, "tolerance": args.tolerance,
           "max_rel_l2": worst, "ok": ok, "outputs": [r.as_dict() for r in reps]}
    if args.json:
        print(json.dumps(json_safe(rep), indent=1))
    elif not args.quiet:
        print(verify.format_reports(reps))
        print(f"max relative L2 error {worst:.4g} {'<=' if ok else '>'} tolerance {args.tolerance}"
              f": {'OK' if ok else 'BEYOND TOLERANCE'}")
    return EXIT_OK if ok else EXIT_VERIFY


def _prototxt_beside(model: Path) -> Path | None:
    from .batching import prototxt_beside  # noqa: PLC0415

    return prototxt_beside(model)


def cmd_batch(args) -> int:
    from .batching import BatchInputError, batch, summarize  # noqa: PLC0415
    from .report import format_bytes, json_safe  # noqa: PLC0415

    if args.jobs is not None and args.scheduler is not None:
        raise UsageError("--jobs and --scheduler exclude each other")
    # Dask's convention: DASK_SCHEDULER_ADDRESS names the cluster to use, unless
    # this run asked for local processes
    scheduler = args.scheduler or (os.environ.get("DASK_SCHEDULER_ADDRESS") or None
                                   if args.jobs is None else None)

    def report_line(r):
        if args.quiet or args.json:
            return
        if r["status"] == "ok":
            print(f"ok       {r['input']} -> {r['output']}  {r['ratio']:.2f}x "
                  f"({format_bytes(r['input_bytes'])} -> {format_bytes(r['file_bytes'])}, "
                  f"{r['seconds']:.1f} s)", flush=True)
        elif r["status"] == "up-to-date":
            print(f"skipped  {r['input']} (up to date: {r['output']})", flush=True)
        else:
            print(f"FAILED   {r['input']}: {r['error']}", flush=True)

    try:
        results = batch(args.inputs, args.output, scheduler=scheduler, jobs=args.jobs or 1,
                        force=args.force, on_result=report_line, preset=args.preset,
                        config=args.config, **_overrides(args))
    except BatchInputError as exc:
        raise UsageError(str(exc)) from None
    summary = summarize(results)
    ok, failed, skipped = summary["ok"], summary["failed"], summary["skipped"]
    gmean = summary["geomean_ratio"]
    if args.json:
        print(json.dumps(json_safe({"results": results, "summary": summary}), indent=1))
    elif not args.quiet:
        print(_batch_table(results))
        print(f"{len(results)} model(s): {ok} compressed, {skipped} up to date, "
              f"{failed} failed" + (f"; geometric-mean ratio {gmean:.2f}x" if gmean else "")
              + (f"; {format_bytes(summary['input_bytes'])} -> {format_bytes(summary['output_bytes'])}"
                 if ok else ""))
    for r in results:
        if r["status"] == "failed":
            _err(f"{r['input']}: {r['error']}")
    return EXIT_FAIL if failed else EXIT_OK


def _batch_table(results) -> str:
    """Summary table: one row per model."""
    w = max([5, *(len(Path(r["input"]).name) for r in results)])
    head = f"{'model':<{w}} {'status':<10} {'input':>12} {'output':>12} {'ratio':>7} {'time s':>7}"
    lines = ["", head, "-" * len(head)]
    for r in results:
        ok = r["status"] == "ok"
        lines.append(
            f"{Path(r['input']).name:<{w}} {r['status']:<10} "
            f"{(format(r['input_bytes'], ',') if ok else '-'):>12} "
            f"{(format(r['file_bytes'], ',') if ok else '-'):>12} "
            f"{(format(r['ratio'], '.2f') + 'x' if ok else '-'):>7} "
            f"{(format(r['seconds'], '.1f') if ok else '-'):>7}")
    return "\n".join(lines)


_COMMANDS = {"compress": cmd_compress, "decompress": cmd_decompress, "info": cmd_info,
             "verify": cmd_verify, "batch": cmd_batch, "report": cmd_report}


# ------------------------------------------------------------------ entry


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    text = msg[0] if msg else ""
    if isinstance(exc, FileNotFoundError) and exc.filename and str(exc.filename) not in text:
        text = f"{exc.filename}: {exc.strerror or text}"
    if isinstance(exc, MemoryError):
        text = "out of memory" + (f": {text}" if text else "")
    if not text:
        text = type(exc).__name__
    return text


def main(argv=None) -> int:
    """Run the command line; return the exit code (never raises for bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        cmd, rest = argv[0], argv[1:]
    else:
        cmd, rest = "compress", argv
    parser = _parser(cmd)
    try:
        args = parser.parse_args(rest)
    except SystemExit as exc:  # argparse: usage errors exit 2, -h/--version exit 0
        return int(exc.code or 0)
    debug = bool(os.environ.get("CAFFECOMPRESS_DEBUG"))
    try:
        return _COMMANDS[cmd](args)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        _err(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except BrokenPipeError:  # `caffecompress info X | head`: the reader left, not an error
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001  (one line, no traceback; see CAFFECOMPRESS_DEBUG)
        if debug:
            raise
        _err(_one_line(exc))
        return EXIT_FAIL
