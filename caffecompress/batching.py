"""Batch conversion: many models, on this machine or on a Dask cluster.

:func:`batch` finds the models, skips outputs that are newer than their
inputs (so a rerun resumes), and compresses the rest one job per model:
in this process (``jobs=1``), in a process pool (``jobs > 1``), or as
tasks on an existing Dask distributed cluster (``client=`` or
``scheduler=``). One model's failure never stops the others; each gets a
result dict.

On a cluster the workers read the inputs and write the outputs themselves,
so both must sit on a filesystem the workers share (as Dask tools assume);
every connected worker is asked first and the error names the worker and
the path it cannot see. A worker that dies mid-job is retried by Dask's
scheduler (``distributed.scheduler.allowed-failures`` times), then the model
is reported failed. Every output is written under a temporary name and
renamed, so a dead job leaves no half-written file under the final name; its
temporary file is removed when the batch ends.

``dask`` is imported here only, and only when a cluster is used.

Named ``batching`` rather than ``batch`` so that importing this module does
not shadow the :func:`caffecompress.batch` function on the package.
"""

from __future__ import annotations

import glob
import math
import os
import time
import uuid
from pathlib import Path

from .errors import CaffeCompressError, MissingDependencyError, UnreachablePathError

__all__ = ["batch", "find_models", "plan", "prototxt_beside", "summarize", "BatchInputError"]

_MODEL_SUFFIXES = (".caffemodel", ".caffemodel.h5")
# compression options that name files: made absolute before they travel to a
# worker (whose working directory is its own) and probed on every worker
_PATH_OPTIONS = ("config", "calib")


class BatchInputError(CaffeCompressError, ValueError):
    """An input spec matched no file, no model was found, or the output folder is a file."""


# ------------------------------------------------------------------ planning


def find_models(inputs) -> list[Path]:
    """Models named by folders (searched recursively), files or globs, in order, once each.

    Raises
    ------
    BatchInputError
        A spec that is no file, folder or matching glob.
    """
    found: list[Path] = []
    for spec in inputs:
        p = Path(spec)
        if p.is_dir():
            cands = sorted(q for q in p.rglob("*") if q.is_file() and q.name.endswith(_MODEL_SUFFIXES))
        elif p.is_file():
            cands = [p]
        else:
            cands = sorted(Path(g) for g in glob.glob(str(spec), recursive=True) if Path(g).is_file())
            if not cands:
                raise BatchInputError(f"{spec}: no such file, folder or matching glob")
        for c in cands:
            if c not in found:
                found.append(c)
    return found


def prototxt_beside(model) -> Path | None:
    """``dir/name.prototxt`` for ``dir/name.caffemodel(.h5)`` when that file exists."""
    model = Path(model)
    name = model.name
    for suf in (".caffemodel.h5", ".caffemodel"):
        if name.endswith(suf):
            name = name[: -len(suf)]
            break
    cand = model.with_name(name + ".prototxt")
    return cand if cand.is_file() else None


def plan(models, out_dir, *, force=False) -> tuple[list[dict], list[tuple]]:
    """Outputs for ``models`` under ``out_dir``: (up-to-date results, jobs to run).

    A name seen twice (the same file name in two folders) is prefixed with
    its folder's name. An output at least as new as its model and prototxt
    is up to date unless ``force``. Each job is ``(index, model, output,
    prototxt)``; indices keep the models' order.
    """
    from .cli import default_output  # noqa: PLC0415  (one naming rule for compress and batch)

    out_dir = Path(out_dir)
    names: set[str] = set()
    skipped, jobs = [], []
    for i, m in enumerate(models):
        m = Path(m)
        stem = default_output(m).name
        if stem in names:
            stem = f"{m.parent.name}-{stem}"
        names.add(stem)
        out = out_dir / stem
        proto = prototxt_beside(m)
        newest = max(m.stat().st_mtime, proto.stat().st_mtime if proto else 0)
        if out.exists() and not force and out.stat().st_mtime >= newest:
            skipped.append({"index": i, "input": str(m), "output": str(out), "status": "up-to-date"})
        else:
            jobs.append((i, m.resolve(), out.resolve(), None if proto is None else proto.resolve()))
    return skipped, jobs


# ------------------------------------------------------------------ one job


def _worker_address() -> str | None:
    try:
        from distributed import get_worker  # noqa: PLC0415

        return get_worker().address
    except (ImportError, ValueError):  # not inside a Dask worker
        return None


def _run_job(job, options: dict, on_cluster: bool = False) -> dict:
    """Compress one model; never raises (a failure is a result).

    The planner already decided that this output is (re)written, so the job
    overwrites: a Dask retry after a first attempt that wrote the file but
    died before reporting must not fail on its own output.
    """
    from .cli import _one_line, compress_file  # noqa: PLC0415  (the CLI's compress, all its flags)

    i, src, out, proto = job
    t0 = time.perf_counter()
    worker = _worker_address() if on_cluster else None
    res = {"index": i, "input": str(src), "output": str(out)}
    if worker is not None:
        res["worker"] = worker
    try:
        if on_cluster:
            for p in (src, proto, out.parent, *(options.get(k) for k in _PATH_OPTIONS)):
                if isinstance(p, (str, os.PathLike)) and not os.path.exists(p):
                    raise UnreachablePathError(worker, p)
        rep = compress_file(src, out, prototxt=proto, **dict(options, force=True))
        t = rep["totals"]
        res.update(status="ok", ratio=t.get("ratio"), input_bytes=t.get("input_bytes"),
                   file_bytes=t.get("file_bytes"), seconds=t.get("seconds"), warnings=rep["warnings"])
    except Exception as exc:  # noqa: BLE001  (one bad model must not stop the batch)
        res.update(status="failed", error=_one_line(exc))
    res["task_seconds"] = time.perf_counter() - t0
    return res


def _dead_result(job, why: str) -> dict:
    i, src, out, _ = job
    return {"index": i, "input": str(src), "output": str(out), "status": "failed", "error": why}


def _remove_leftovers(outs) -> int:
    """Delete the temporaries that dead writers of ``outs`` left (on this host); count them.

    :func:`~caffecompress.fileio.remove_stale` keeps those whose writer
    process is still running here, so a concurrent run is never disturbed.
    """
    from .fileio import remove_stale  # noqa: PLC0415

    return sum(len(remove_stale(o)) for o in outs)


# ------------------------------------------------------------------ runners


def _run_local(jobs, options, nproc, emit) -> list[dict]:
    if nproc <= 1 or len(jobs) <= 1:
        return [emit(_run_job(j, options)) for j in jobs]
    from concurrent.futures import ProcessPoolExecutor, as_completed  # noqa: PLC0415
    from concurrent.futures.process import BrokenProcessPool  # noqa: PLC0415

    results = []
    with ProcessPoolExecutor(max_workers=min(nproc, len(jobs))) as pool:
        futs = {pool.submit(_run_job, j, options): j for j in jobs}
        for f in as_completed(futs):
            try:
                r = f.result()
            except BrokenProcessPool:  # a worker process died (killed, out of memory)
                r = _dead_result(futs[f], "a worker process died while compressing this model")
            results.append(emit(r))
    return results


def _connect(scheduler, timeout: float):
    try:
        from distributed import Client  # noqa: PLC0415
    except ImportError:
        raise MissingDependencyError(
            "batch on a cluster needs Dask: pip install 'caffecompress[dask]'") from None
    sched = str(scheduler)
    try:
        if sched.endswith(".json") and Path(sched).is_file():  # a Dask scheduler file
            return Client(scheduler_file=sched, timeout=timeout, set_as_default=False)
        return Client(sched, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise CaffeCompressError(f"cannot reach the Dask scheduler {sched}: {exc}") from None


def _probe(paths, out_dir):
    """On a worker: the first path it cannot see (out_dir must be writable), or None."""
    if not (os.path.isdir(out_dir) and os.access(out_dir, os.W_OK | os.X_OK)):
        return out_dir
    for p in paths:
        if not os.path.exists(p):
            return p
    return None


def check_reachable(client, paths, out_dir) -> None:
    """Ask every connected worker whether it sees ``paths`` and can write ``out_dir``.

    Raises
    ------
    UnreachablePathError
        Naming the first worker (by address) and the first path it lacks.
    """
    missing = client.run(_probe, [str(p) for p in paths], str(out_dir))
    for worker, path in sorted(missing.items()):
        if path is not None:
            raise UnreachablePathError(worker, path)


def _run_cluster(client, jobs, options, out_dir, emit) -> list[dict]:
    from distributed import as_completed  # noqa: PLC0415

    paths = {p for j in jobs for p in (j[1], j[3]) if p is not None}
    paths.update(Path(options[k]) for k in _PATH_OPTIONS if isinstance(options.get(k), str))
    check_reachable(client, sorted(paths), out_dir)
    tag = uuid.uuid4().hex[:8]
    futs = {}
    for j in jobs:
        # a readable, unique key per model (the dashboard shows it); pure=False:
        # the same model compressed twice is two runs, not a cached result
        f = client.submit(_run_job, j, options, True, key=f"caffecompress-{j[2].name}-{tag}",
                          pure=False)
        futs[f] = j
    results = []
    try:
        for f in as_completed(list(futs), loop=client.loop):
            try:
                r = f.result()
            except Exception as exc:  # noqa: BLE001  (KilledWorker after the allowed retries, ...)
                why = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
                r = _dead_result(futs[f], f"the Dask worker died while compressing this model ({why})")
            results.append(emit(r))
            f.release()
    finally:
        for f in futs:
            if not f.done():
                f.cancel()
    return results


# ------------------------------------------------------------------ entry


def batch(inputs, out_dir, client=None, *, scheduler=None, jobs: int = 1, force: bool = False,
          on_result=None, timeout: float = 30.0, **options) -> list[dict]:
    """Compress every model under ``inputs`` into ``out_dir``; return one result per model.

    Parameters
    ----------
    inputs : iterable of path or str
        Folders (searched recursively for ``.caffemodel`` and
        ``.caffemodel.h5``), files or globs. A ``NAME.prototxt`` beside a
        ``NAME.caffemodel`` is used and stored.
    out_dir : path
        Created when missing; outputs are ``NAME.ccz.h5``.
    client : distributed.Client, optional
        Run the jobs on this Dask cluster (left open).
    scheduler : str, optional
        Address (``tcp://host:port``) or scheduler file (``.json``) of a
        Dask scheduler to connect to for this call, when no ``client``.
    jobs : int
        Local processes when neither ``client`` nor ``scheduler`` is given.
    force : bool
        Recompress outputs that are up to date.
    on_result : callable, optional
        Called with each result as it arrives (up-to-date ones first).
    timeout : float
        Seconds to wait for the scheduler to answer.
    **options
        Compression options, as for ``caffecompress`` (``preset``,
        ``config``, ``bits``, ``conv_bits``, ``fc_bits``, ``prune``,
        ``layers``, ``backend``, ...).

    Returns
    -------
    list of dict
        In the models' order. Each has ``input``, ``output`` and ``status``
        (``ok``, ``failed`` or ``up-to-date``); ``ok`` adds ``ratio``,
        ``input_bytes``, ``file_bytes``, ``seconds``, ``warnings``;
        ``failed`` adds ``error`` (one line); a model that ran adds
        ``task_seconds`` (its job's wall time where it ran); on a cluster
        ``worker`` names the worker that ran it.

    Raises
    ------
    BatchInputError
        An input spec matches nothing, no model is found, or ``out_dir`` is a file.
    UnreachablePathError
        A worker cannot see an input or cannot write ``out_dir``.
    MissingDependencyError
        A cluster was asked for and Dask is not installed.
    """
    if jobs < 1:
        raise BatchInputError(f"jobs must be >= 1, got {jobs}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BatchInputError(f"{out_dir}: exists and is not a folder")
    for k in _PATH_OPTIONS:  # (a config may also be a dict, calibration inputs arrays)
        if isinstance(options.get(k), (str, os.PathLike)):
            options[k] = str(Path(options[k]).resolve())
    if isinstance(options.get("config"), str):
        from .config import load_toml  # noqa: PLC0415

        load_toml(options["config"])  # fail once, here, on a bad config
    models = find_models(inputs)
    if not models:
        raise BatchInputError("no .caffemodel files found in the inputs")
    out_dir.mkdir(parents=True, exist_ok=True)
    skipped, todo = plan(models, out_dir, force=force)

    def emit(r):
        if on_result is not None:
            on_result(r)
        return r

    for r in skipped:
        emit(r)
    own = None
    try:
        if todo and client is None and scheduler is not None:
            client = own = _connect(scheduler, timeout)
        if todo and client is not None:
            done = _run_cluster(client, todo, options, out_dir.resolve(), emit)
        else:
            done = _run_local(todo, options, jobs, emit)
    finally:
        outs = [str(j[2]) for j in todo]
        if todo and client is not None:
            # a killed worker's temporary carries its pid: only its own host can tell
            # that the process is gone, so every worker sweeps as well as this host
            try:
                client.run(_remove_leftovers, outs)
            except Exception:  # noqa: BLE001  (best effort; the next write of a name sweeps too)
                pass
        _remove_leftovers(outs)
        if own is not None:
            own.close()
    results = sorted(skipped + done, key=lambda r: r["index"])
    given = {i: (str(m), str(out)) for i, m, out in _given_names(models, out_dir, skipped, todo)}
    for r in results:
        r["input"], r["output"] = given[r.pop("index")]  # as the caller spelled them
    return results


def _given_names(models, out_dir, skipped, todo):
    """(index, model as given, output under out_dir as given) for every planned model."""
    for r in skipped:
        yield r["index"], models[r["index"]], Path(r["output"])
    for i, _, out, _ in todo:
        yield i, models[i], out_dir / out.name


def summarize(results) -> dict:
    """Counts, geometric-mean ratio and bytes in/out of :func:`batch`'s results."""
    ok = [r for r in results if r["status"] == "ok"]
    ratios = [r["ratio"] for r in ok if r.get("ratio")]
    return {
        "models": len(results),
        "ok": len(ok),
        "failed": sum(r["status"] == "failed" for r in results),
        "skipped": sum(r["status"] == "up-to-date" for r in results),
        "geomean_ratio": math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else None,
        "input_bytes": sum(r["input_bytes"] for r in ok),
        "output_bytes": sum(r["file_bytes"] for r in ok),
    }
