"""The visual report of a compressed file: PNG plots and one self-contained HTML page.

:func:`write_report` draws, from a ``.ccz.h5`` file (and, optionally, the
original weights):

- stored bytes and codebook bits per layer (bars);
- for the largest compressed layers, the weight histogram with the
  codebook's centroids marked;
- where the file's bytes went: labels, codebooks, sparse positions,
  lossless blobs, container;
- for a fidelity-targeted file, the size-against-error points the allocation
  explored, with the chosen one marked;

and writes them, with the per-layer table, into one HTML page (the PNGs
embedded as data URIs), or all in one summary PNG.

matplotlib is imported only here, and only when a plot is drawn. Figures
are ``matplotlib.figure.Figure`` objects on the Agg canvas, never pyplot,
so a report made inside a user's program leaves their backend and their
open figures alone.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import numpy as np

from .errors import CaffeCompressError, MissingDependencyError

__all__ = ["report_data", "figures", "summary_png", "report_html", "write_report", "ReportError",
           "NO_ALLOCATION"]

NO_ALLOCATION = "no allocation points recorded (data-free or fixed-bits file)"
_CATEGORIES = ("labels", "codebooks", "sparse positions", "lossless blobs", "container")
_COLORS = {"labels": "#4477aa", "codebooks": "#ee6677", "sparse positions": "#228833",
           "lossless blobs": "#ccbb44", "container": "#bbbbbb", "other streams": "#aa3377"}
_MAX_HIST = 1 << 22  # values per histogram at most (evenly strided beyond)


class ReportError(CaffeCompressError, ValueError):
    """The report cannot be written as asked (unknown output extension)."""


# ------------------------------------------------------------------ data


def _part_category(method: str, name: str) -> str:
    if method in ("lossless", "raw") or name == "data":
        return "lossless blobs"
    if name == "codebook":
        return "codebooks"
    if name.startswith("l_"):
        return "labels"
    if name.startswith("p_"):
        return "sparse positions"
    return "other streams"


def _allocation(settings: dict):
    """The allocation's explored points and the chosen one, or None when not recorded."""
    alloc = settings.get("allocation") if isinstance(settings, dict) else None
    if not isinstance(alloc, dict) or not alloc.get("points"):
        return None
    pts = [p for p in alloc["points"] if isinstance(p, dict) and p.get("bytes") is not None]
    if not pts:
        return None
    chosen = alloc.get("chosen")
    if isinstance(chosen, int) and 0 <= chosen < len(alloc["points"]):
        chosen = alloc["points"][chosen]
    fid = settings.get("fidelity") if isinstance(settings.get("fidelity"), dict) else {}
    target = fid.get("max_error", settings.get("max_error"))
    return {"points": pts, "chosen": chosen if isinstance(chosen, dict) else None,
            "target": target if isinstance(target, (int, float)) else None}


def report_data(path, *, original=None, prototxt=None, top: int = 4) -> dict:
    """Everything the plots and the page show, from a compressed file.

    Parameters
    ----------
    path : path
        A ``.ccz.h5`` file.
    original : path, optional
        The source ``.caffemodel``: its weights, not the restored ones, are
        histogrammed beside the codebooks.
    prototxt : path, optional
        For reading ``original`` (V1/V0 files).
    top : int
        How many of the largest compressed layers get a histogram.
    """
    from . import container, report  # noqa: PLC0415
    from .engine.blob import codebook_of  # noqa: PLC0415
    from .pipeline import decode_record  # noqa: PLC0415

    fi = container.file_info(path)
    cm = container.open_compressed(path)
    rows = report.layer_rows(cm)
    tot = report.totals(rows, file_bytes=fi["file_bytes"])
    sizes = dict.fromkeys(_CATEGORIES, 0)
    for rec in cm.records:
        for name, part in rec.parts.items():
            cat = _part_category(rec.method, name)
            sizes[cat] = sizes.get(cat, 0) + int(part.nbytes)
    streams = sum(sizes.values())
    sizes["container"] = fi["file_bytes"] - streams
    texts = fi["payload_bytes"] - fi["index_bytes"] - streams
    if fi["format_version"].startswith("1."):
        container_detail = {"index": fi["index_bytes"], "net skeleton + prototxt": texts,
                            "HDF5 metadata": fi["overhead_bytes"]}
    else:  # 2.x: one block holds the index, the skeleton and the prototxt
        container_detail = {"index, net skeleton + prototxt": fi["index_bytes"] + texts,
                            "HDF5 metadata": fi["overhead_bytes"]}
    # the largest lossy blobs that carry a codebook
    cands = [(rec.orig_nbytes, i) for i, rec in enumerate(cm.records)
             if rec.index == 0 and "codebook" in rec.parts]
    orig_model = None
    if original is not None and cands:
        from .caffe import read_caffemodel  # noqa: PLC0415

        orig_model = read_caffemodel(str(original), prototxt=None if prototxt is None else str(prototxt))
    hists = []
    for _, i in sorted(cands, reverse=True)[:top]:
        rec = cm.records[i]
        name = cm.layers[rec.layer][0]
        w, source = None, "restored"
        if orig_model is not None:
            try:
                w, source = np.asarray(orig_model.layer(name).blobs[0]), "original"
            except (KeyError, IndexError):
                w = None
        if w is None:
            w = decode_record(rec, where={"path": str(path), "layer": name})
        hists.append({"layer": name, "type": cm.layers[rec.layer][1], "values": np.asarray(w, np.float32).reshape(-1),
                      "source": source, "codebook": codebook_of(rec.meta, rec.parts),
                      "bits": int(rec.bits), "sparsity": float(rec.sparsity), "method": rec.method})
    return {"path": str(path), "name": cm.name, "settings": cm.settings, "rows": rows, "totals": tot,
            "sizes": {k: v for k, v in sizes.items() if v or k in _CATEGORIES},
            "container_detail": container_detail, "histograms": hists,
            "allocation": _allocation(cm.settings), "file_bytes": fi["file_bytes"]}


# ------------------------------------------------------------------ figures


def _mpl():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
        from matplotlib.figure import Figure  # noqa: PLC0415
    except ImportError:
        raise MissingDependencyError(
            "the report's plots need matplotlib: pip install 'caffecompress[report]'") from None
    return Figure, FigureCanvasAgg


def require_matplotlib() -> None:
    """Raise :class:`~caffecompress.errors.MissingDependencyError` (naming the extra) early."""
    _mpl()


def _png(fig) -> bytes:
    _, canvas = _mpl()
    canvas(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _kib(n) -> str:
    from .report import format_bytes  # noqa: PLC0415

    return format_bytes(n)


def _draw_layers(ax_bytes, ax_bits, rows) -> None:
    x = np.arange(len(rows))
    names = [r["layer"] for r in rows]
    ax_bytes.bar(x, [r["orig_bytes"] for r in rows], color="#dddddd", label="float32 weights")
    ax_bytes.bar(x, [max(r["bytes"], 1) for r in rows], color="#4477aa", width=0.6, label="stored")
    ax_bytes.set_yscale("log")
    ax_bytes.set_ylabel("bytes (log)")
    ax_bytes.legend(loc="upper right", fontsize=8)
    ax_bytes.set_title("bytes per layer: stored against the float32 weights")
    bits = [r["bits"] if r["bits"] is not None else 0 for r in rows]
    colors = ["#ee6677" if r["bits"] is not None else "#ccbb44" for r in rows]
    ax_bits.bar(x, bits, color=colors)
    for xi, r in zip(x, rows):
        if r["bits"] is None:
            ax_bits.text(xi, 0.2, "lossless" if not r["shared"] else "shared", rotation=90,
                         ha="center", va="bottom", fontsize=6, color="#665500")
    ax_bits.set_ylabel("codebook bits")
    ax_bits.set_ylim(0, max([*bits, 8]) + 1)
    ax_bits.set_title("bits per weight index (yellow: stored losslessly)")
    for ax in (ax_bytes, ax_bits):
        ax.set_xticks(x)
        ax.set_xlim(-0.6, len(rows) - 0.4)
        ax.grid(axis="y", alpha=0.3)
    ax_bytes.set_xticklabels([])
    ax_bits.set_xticklabels(names, rotation=90, fontsize=7)


def _draw_sizes(ax, data) -> None:
    sizes = [(k, v) for k, v in data["sizes"].items() if v > 0]
    total = data["file_bytes"]
    y = np.arange(len(sizes))[::-1]
    ax.barh(y, [v for _, v in sizes], color=[_COLORS.get(k, "#888888") for k, _ in sizes])
    for yi, (k, v) in zip(y, sizes):
        ax.text(v, yi, f"  {_kib(v)} ({v / total:.1%})", va="center", fontsize=8)
    ax.set_yticks(y)
    ax.set_yticklabels([k for k, _ in sizes])
    ax.set_xlim(0, max(v for _, v in sizes) * 1.45)
    ax.set_xlabel("bytes")
    ax.set_title(f"where the file's {_kib(total)} went")


def _draw_hist(ax, h) -> None:
    v = h["values"]
    if v.size > _MAX_HIST:
        v = v[:: math.ceil(v.size / _MAX_HIST)]
    kept = v[v != 0] if h["sparsity"] > 0 else v
    kept = kept[np.isfinite(kept)]
    if kept.size == 0:
        kept = v
    book = h["codebook"]
    lo, hi = float(min(kept.min(), book.min())), float(max(kept.max(), book.max()))
    ax.hist(kept, bins=160, range=(lo, hi) if hi > lo else None, color="#bbccee", log=True)
    ymax = ax.get_ylim()[1]
    if book.size <= 64:
        ax.vlines(book, 0.8, ymax, colors="#ee6677", linewidth=0.7, alpha=0.8)
    else:  # too many lines to read: a rug under the bars
        ax.plot(book, np.full(book.size, 0.9), "|", color="#ee6677", markersize=9)
    what = "weights" if h["source"] == "original" else "restored weights"
    pruned = f", {h['sparsity']:.0%} pruned (zeros not shown)" if h["sparsity"] > 0 else ""
    ax.set_title(f"{h['layer']} ({h.get('type') or '?'}): {what}, {book.size} centroids ({h['bits']} bits){pruned}", fontsize=9)
    ax.set_xlabel("weight value")
    ax.set_ylabel("count (log)")


def _draw_allocation(ax, alloc) -> None:
    if alloc is None:
        ax.text(0.5, 0.5, NO_ALLOCATION, ha="center", va="center", transform=ax.transAxes, fontsize=9)
        ax.set_axis_off()
        return
    pts = alloc["points"]
    kinds = sorted({str(p.get("kind", "allocation")) for p in pts})
    markers = "osD^v"
    for ki, kind in enumerate(kinds):
        sel = [p for p in pts if str(p.get("kind", "allocation")) == kind]
        b = np.array([p["bytes"] for p in sel], float) / 1024
        for key, face in (("predicted", "none"), ("measured", None)):
            e = np.array([np.nan if p.get(key) is None else p[key] for p in sel], float)
            if np.isfinite(e).any():
                ax.scatter(b, e, marker=markers[ki % len(markers)], facecolors=face,
                           edgecolors="#4477aa" if key == "predicted" else "#228833",
                           color=None if face else "#228833", s=24, label=f"{kind}: {key}")
    c = alloc["chosen"]
    if c is not None:
        e = c.get("measured") if c.get("measured") is not None else c.get("predicted")
        if e is not None:
            ax.scatter([c["bytes"] / 1024], [e], marker="*", s=220, color="#ee6677", zorder=5,
                       label="chosen")
    if alloc.get("target") is not None:
        ax.axhline(alloc["target"], color="#ee6677", linestyle="--", linewidth=0.8,
                   label=f"target {alloc['target']:g}")
    ax.set_xlabel("stored weight bytes (KiB)")
    ax.set_ylabel("output error (relative L2)")
    ax.set_title("size against error: the points the allocation explored")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def figures(data) -> dict:
    """PNG bytes per plot: ``layers``, ``sizes``, ``allocation`` and ``hist:LAYER`` for each histogram."""
    Figure, _ = _mpl()
    out = {}
    n = len(data["rows"])
    fig = Figure(figsize=(max(7.0, 0.22 * n + 2), 6.5), layout="constrained")
    a1, a2 = fig.subplots(2, 1, sharex=True)
    _draw_layers(a1, a2, data["rows"])
    out["layers"] = _png(fig)
    fig = Figure(figsize=(7, 3), layout="constrained")
    _draw_sizes(fig.subplots(), data)
    out["sizes"] = _png(fig)
    for h in data["histograms"]:
        fig = Figure(figsize=(7, 3), layout="constrained")
        _draw_hist(fig.subplots(), h)
        out[f"hist:{h['layer']}"] = _png(fig)
    fig = Figure(figsize=(7, 4), layout="constrained")
    _draw_allocation(fig.subplots(), data["allocation"])
    out["allocation"] = _png(fig)
    return out


def summary_png(data) -> bytes:
    """One figure: bytes and bits per layer, the size breakdown, the largest layer's
    histogram and the allocation's points."""
    Figure, _ = _mpl()
    n = len(data["rows"])
    fig = Figure(figsize=(max(12.0, 0.22 * n + 6), 9), layout="constrained")
    grid = fig.add_gridspec(3, 2, width_ratios=[1.6, 1])
    _draw_layers(fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[1:, 0]), data["rows"])
    _draw_sizes(fig.add_subplot(grid[0, 1]), data)
    ax = fig.add_subplot(grid[1, 1])
    if data["histograms"]:
        _draw_hist(ax, data["histograms"][0])
    else:
        ax.text(0.5, 0.5, "no compressed layer with a codebook", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
    _draw_allocation(fig.add_subplot(grid[2, 1]), data["allocation"])
    fig.suptitle(Path(data["path"]).name + (f": net {data['name']!r}" if data["name"] else ""))
    return _png(fig)


# ------------------------------------------------------------------ page


def _img(png: bytes, alt: str) -> str:
    return (f'<img alt="{html.escape(alt)}" src="data:image/png;base64,'
            f'{base64.b64encode(png).decode("ascii")}">')


def _table(rows) -> str:
    from .report import _shape, _sqnr  # noqa: PLC0415

    head = ("layer", "type", "shape", "params", "sparsity", "bits", "method", "bytes", "ratio", "SQNR dB")
    out = ["<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for r in rows:
        ratio = "shared" if r["shared"] else (f"{r['ratio']:.2f}" if math.isfinite(r["ratio"]) else "inf")
        cells = (r["layer"], r["type"], _shape(r["shape"]), f"{r['params']:,}", f"{r['sparsity']:.1%}",
                 "-" if r["bits"] is None else r["bits"], r["method"], f"{r['bytes']:,}", ratio,
                 _sqnr(r["sqnr_db"]))
        out.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return "\n".join(out + ["</table>"])


_CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
img{max-width:100%;display:block;margin:0.5em 0 1.5em}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px}
td:nth-child(n+4){text-align:right}th{background:#eee}pre{background:#f6f6f6;padding:0.5em;overflow:auto}"""


def report_html(data, pngs: dict | None = None) -> str:
    """The self-contained page: summary, plots (data URIs), per-layer table, settings."""
    from .report import json_safe  # noqa: PLC0415

    pngs = pngs if pngs is not None else figures(data)
    t, st = data["totals"], data["settings"]
    name = html.escape(Path(data["path"]).name)
    mode = st.get("mode") or ("fidelity" if data["allocation"] else "data-free")
    detail = ", ".join(f"{k} {_kib(v)}" for k, v in data["container_detail"].items())
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>caffecompress report: {name}</title>"
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{name}</h1>",
        f"<p>{'net <b>' + html.escape(str(data['name'])) + '</b>, ' if data['name'] else ''}preset {html.escape(str(st.get('preset')))}, "
        f"mode {html.escape(str(mode))}; {t['layers']} layers, {t['params']:,} parameters; float32 weights "
        f"{_kib(t['weights_bytes'])} stored in {_kib(t['payload_bytes'])} ({t['weights_ratio']:.2f}x); "
        f"file {_kib(data['file_bytes'])}.</p>",
        "<h2>Bytes and bits per layer</h2>", _img(pngs["layers"], "bytes and bits per layer"),
        "<h2>Where the bytes went</h2>", _img(pngs["sizes"], "size breakdown"),
        f"<p>container: {html.escape(detail)}.</p>",
        "<h2>Largest layers: weights and codebook</h2>",
    ]
    if data["histograms"]:
        src = data["histograms"][0]["source"]
        parts.append("<p>Histogram of the " + ("original weights" if src == "original" else
                     "restored weights (each bar sits on a centroid; pass the original .caffemodel "
                     "to see the weights before compression)") + "; red: the codebook's centroids.</p>")
        for h in data["histograms"]:
            parts.append(_img(pngs[f"hist:{h['layer']}"], f"histogram of {h['layer']}"))
    else:
        parts.append("<p>no compressed layer with a codebook (lossless file)</p>")
    parts.append("<h2>Size against error</h2>")
    if data["allocation"] is None:
        parts.append(f"<p>{NO_ALLOCATION}</p>")
    else:
        parts.append(_img(pngs["allocation"], "allocation: size against error"))
    parts += ["<h2>Per-layer table</h2>", _table(data["rows"]),
              "<h2>Settings</h2><details><summary>as stored in the file</summary><pre>"
              + html.escape(json.dumps(json_safe(st), indent=1, default=str)) + "</pre></details>",
              "</body></html>"]
    return "\n".join(parts)


def write_report(path, out, *, original=None, prototxt=None, top: int = 4, force: bool = False) -> Path:
    """Write the report of compressed file ``path`` to ``out`` (``.html`` page or ``.png`` figure).

    Raises
    ------
    ReportError
        ``out`` is neither ``.html``/``.htm`` nor ``.png``.
    MissingDependencyError
        matplotlib is not installed (the message names the ``report`` extra).
    OutputExistsError
        ``out`` exists and ``force`` is false, or ``out`` is the input.
    """
    from .container import check_output_path  # noqa: PLC0415
    from .fileio import atomic_write  # noqa: PLC0415

    out = Path(out)
    kind = out.suffix.lower()
    if kind not in (".html", ".htm", ".png"):
        raise ReportError(f"{out}: the report is .html (a page) or .png (one summary figure)")
    require_matplotlib()
    check_output_path(out, inputs=[path, original], force=force)
    data = report_data(path, original=original, prototxt=prototxt, top=top)
    if kind == ".png":
        blob = summary_png(data)
    else:
        blob = report_html(data).encode("utf-8")
    atomic_write(out, lambda tmp: Path(tmp).write_bytes(blob))
    return out
