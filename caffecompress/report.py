"""Rows -> text tables and JSON for the CLI (no I/O, no heavy imports)."""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "layer_rows",
    "model_rows",
    "totals",
    "format_table",
    "format_bytes",
    "json_safe",
]


def format_bytes(n: float) -> str:
    """Human-readable byte count (1024-based, as file managers show)."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _shape(s) -> str:
    return "x".join(str(int(d)) for d in s) if len(s) else "scalar"


def _sqnr(v: float) -> str:
    if v is None:
        return "-"
    if math.isinf(v) and v > 0:
        return "exact"
    return f"{v:.1f}"


def layer_rows(cm, stored=None) -> list[dict]:
    """One row per layer with blobs, from a :class:`~caffecompress.pipeline.CompressedModel`.

    Parameters
    ----------
    stored : list of int, optional
        Stored bytes per record (when the records' parts were not loaded).

    The shape, sparsity, bits and SQNR columns describe the layer's first
    (weight) blob; params, bytes and ratio cover all its blobs.
    """
    by_layer: dict[int, list] = {}
    for i, rec in enumerate(cm.records):
        by_layer.setdefault(rec.layer, []).append((i, rec))
    rows = []
    for li, recs in sorted(by_layer.items()):
        name, typ, _ = cm.layers[li]
        w = recs[0][1]
        nbytes = sum(stored[i] if stored is not None else r.nbytes for i, r in recs)
        orig = sum(r.orig_nbytes for _, r in recs)
        lossless = w.method in ("lossless", "ref")
        rows.append({
            "layer": name,
            "type": typ,
            "shape": list(w.shape),
            "params": int(sum(r.size for _, r in recs)),
            "sparsity": float(w.sparsity),
            "bits": None if lossless else int(w.bits),
            "method": w.method,
            "bytes": int(nbytes),
            "orig_bytes": int(orig),
            "ratio": (orig / nbytes) if nbytes else math.inf,
            "sqnr_db": None if lossless else float(w.sqnr),
            "shared": w.method == "ref",
        })
    return rows


def model_rows(model) -> list[dict]:
    """One row per layer with blobs of a dense :class:`~caffecompress.model.Model`."""
    rows = []
    for lay in model.layers:
        if not lay.blobs:
            continue
        w = np.asarray(lay.blobs[0])
        rows.append({
            "layer": lay.name,
            "type": lay.type,
            "shape": list(w.shape),
            "blobs": [list(np.shape(b)) for b in lay.blobs],
            "params": int(sum(np.size(b) for b in lay.blobs)),
            "sparsity": float(np.count_nonzero(w == 0) / w.size) if w.size else 0.0,
            "bytes": int(sum(np.asarray(b).nbytes for b in lay.blobs)),
        })
    return rows


def totals(rows: list[dict], *, file_bytes=None, input_bytes=None) -> dict:
    """Summed params and bytes; ratios against the weights and the input file."""
    params = sum(r["params"] for r in rows)
    stored = sum(r["bytes"] for r in rows)
    orig = sum(r.get("orig_bytes", r["bytes"]) for r in rows)
    out = {
        "layers": len(rows),
        "params": params,
        "weights_bytes": orig,
        "payload_bytes": stored,
        "weights_ratio": orig / stored if stored else math.inf,
    }
    if file_bytes is not None:
        out["file_bytes"] = int(file_bytes)
    if input_bytes is not None:
        out["input_bytes"] = int(input_bytes)
        if file_bytes:
            out["ratio"] = input_bytes / file_bytes
    return out


def format_table(rows: list[dict], tot: dict | None = None, *, compressed=True) -> str:
    """A fixed-width text table; ``compressed=False`` for a plain caffemodel's rows."""
    lines = []
    if compressed:
        head = (f"{'layer':<28} {'shape':<18} {'params':>10} {'sparsity':>8} {'bits':>4} "
                f"{'bytes':>10} {'ratio':>7} {'SQNR dB':>8}")
        lines += [head, "-" * len(head)]
        for r in rows:
            bits = "-" if r["bits"] is None else str(r["bits"])
            ratio = "shared" if r["shared"] else (f"{r['ratio']:.2f}" if math.isfinite(r["ratio"]) else "inf")
            lines.append(
                f"{r['layer'][:28]:<28} {_shape(r['shape'])[:18]:<18} {r['params']:>10,} "
                f"{r['sparsity']:>8.1%} {bits:>4} {r['bytes']:>10,} {ratio:>7} {_sqnr(r['sqnr_db']):>8}"
            )
    else:
        head = f"{'layer':<28} {'type':<20} {'shape':<20} {'params':>10} {'sparsity':>8} {'bytes':>12}"
        lines += [head, "-" * len(head)]
        for r in rows:
            lines.append(
                f"{r['layer'][:28]:<28} {str(r['type'])[:20]:<20} {_shape(r['shape'])[:20]:<20} "
                f"{r['params']:>10,} {r['sparsity']:>8.1%} {r['bytes']:>12,}"
            )
    if tot:
        lines.append("-" * len(lines[0]))
        parts = [f"{tot['layers']} layers", f"{tot['params']:,} params"]
        if compressed:
            parts.append(f"weights {format_bytes(tot['weights_bytes'])} -> payload "
                         f"{format_bytes(tot['payload_bytes'])} ({tot['weights_ratio']:.2f}x)")
            if "file_bytes" in tot and "input_bytes" in tot:
                parts.append(f"file {format_bytes(tot['input_bytes'])} -> "
                             f"{format_bytes(tot['file_bytes'])} ({tot['ratio']:.2f}x)")
        else:
            parts.append(f"weights {format_bytes(tot['weights_bytes'])}")
        lines.append("total: " + ", ".join(parts))
    return "\n".join(lines)


def json_safe(obj):
    """Replace non-finite floats with strings so ``json.dumps`` emits strict JSON."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return "inf" if obj > 0 else ("-inf" if obj < 0 else "nan")
    return obj
