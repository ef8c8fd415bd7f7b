"""`batch` on a real Dask cluster: a `dask scheduler` and two `dask worker`
processes on 127.0.0.1, started here and always torn down.

Checks that cluster outputs restore to the same .caffemodel bytes as a local
batch's, that DASK_SCHEDULER_ADDRESS is honoured, that a worker killed in the
middle of a job leads to a retry (or, with no retries allowed, to that model
reported failed) and never to a half-written output, and that a path the
workers cannot see is named with the worker.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import caffecompress as cc
from caffecompress import batching
from caffecompress.cli import main
from zoofiles import ROOT

distributed = pytest.importorskip("distributed")
cloudpickle = pytest.importorskip("cloudpickle")
# the workers cannot import this test module: ship its helpers by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])

_START_S = 60  # bound on every wait for the cluster to come up (CI machines are shared)


def _spawn(args, log: Path, env, procs):
    fh = open(log, "wb")
    # own session: teardown signals exactly this process group (the nanny and its worker)
    p = subprocess.Popen([sys.executable, "-m", "dask", *map(str, args)], stdout=fh,
                         stderr=subprocess.STDOUT, env=env, cwd=log.parent, start_new_session=True)
    fh.close()
    procs.append(p)
    return p


def _stop(procs):
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    d = tmp_path_factory.mktemp("dask")
    sched_file = d / "scheduler.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               PYTHONWARNINGS="ignore")
    procs: list = []
    client = None
    try:
        # port 0: a free port picked by the OS; loopback only; the idle and death
        # timeouts end the processes even if this teardown never runs
        sched = _spawn(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                        "--scheduler-file", sched_file, "--idle-timeout", "300s"],
                       d / "scheduler.log", env, procs)
        deadline = time.monotonic() + _START_S
        while not sched_file.exists() or not sched_file.read_text().strip():
            if sched.poll() is not None or time.monotonic() > deadline:
                pytest.fail("dask scheduler did not start:\n" + (d / "scheduler.log").read_text())
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        for i in range(2):
            (d / f"w{i}").mkdir()
            _spawn(["worker", address, "--host", "127.0.0.1", "--nthreads", "1", "--nworkers", "1",
                    "--no-dashboard", "--memory-limit", "0", "--death-timeout", "60s",
                    "--name", f"w{i}", "--local-directory", d / f"w{i}"],
                   d / f"w{i}" / "worker.log", env, procs)
        client = distributed.Client(address, timeout=_START_S, set_as_default=False)
        client.wait_for_workers(2, timeout=_START_S)
        yield client
    finally:
        if client is not None:
            client.close()
        _stop(procs)


def _zoo_pair(zoo, tmp_path):
    if not (zoo / "mtcnn").is_dir() or not (zoo / "lenet-mnist").is_dir():
        pytest.skip("zoo folders mtcnn and lenet-mnist needed")
    return [zoo / "mtcnn", zoo / "lenet-mnist"]


def _restored(folder: Path) -> dict:
    return {p.name: cc.caffemodel_bytes(p) for p in sorted(folder.iterdir())}


def test_cluster_outputs_restore_like_a_local_batch(cluster, zoo, tmp_path, capsys):
    inputs = _zoo_pair(zoo, tmp_path)
    # deep-compression: a data-free lossy path (pruning, k-means, sparse positions,
    # Huffman) whose bytes no calibration or machine load can move
    local = batching.batch(inputs, tmp_path / "local", preset="deep-compression")
    assert [r["status"] for r in local] == ["ok"] * 5
    out = tmp_path / "cluster"
    code = main(["batch", *map(str, inputs), "-o", str(out), "--scheduler", cluster.scheduler.address,
                 "--preset", "deep-compression", "--json"])
    rep = json.loads(capsys.readouterr().out)
    assert code == 0
    assert rep["summary"]["ok"] == 5 and rep["summary"]["failed"] == 0
    workers = set(cluster.scheduler_info()["workers"])
    assert all(r["worker"] in workers for r in rep["results"])
    assert [Path(r["input"]).name for r in rep["results"]] == [Path(r["input"]).name for r in local]
    ref = _restored(tmp_path / "local")
    assert sorted(ref) == sorted(p.name for p in out.iterdir())  # nothing else left in OUTDIR
    assert _restored(out) == ref
    # a rerun resumes: every output is up to date, nothing is submitted
    code = main(["batch", *map(str, inputs), "-o", str(out), "--scheduler", cluster.scheduler.address,
                 "--preset", "deep-compression"])
    text = capsys.readouterr().out
    assert code == 0 and text.count("skipped ") == 5 and "5 up to date" in text


def test_dask_scheduler_address_is_honoured(cluster, zoo, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.scheduler.address)
    # a relative --config: the workers' working directory is their own
    monkeypatch.chdir(tmp_path)
    Path("cfg.toml").write_text('preset = "lossless"\n')
    code = main(["batch", str(zoo / "mtcnn" / "det1.caffemodel"), "-o", "out", "--config", "cfg.toml",
                 "--json"])
    rep = json.loads(capsys.readouterr().out)
    assert code == 0, rep
    assert rep["results"][0]["worker"] in cluster.scheduler_info()["workers"]
    assert cc.open_compressed(tmp_path / "out" / "det1.ccz.h5").settings["preset"] == "lossless"
    # --jobs asks for local processes: the variable does not apply
    code = main(["batch", str(zoo / "mtcnn" / "det1.caffemodel"), "-o", str(tmp_path / "j"),
                 "--preset", "lossless", "--jobs", "1", "--json"])
    rep = json.loads(capsys.readouterr().out)
    assert code == 0 and "worker" not in rep["results"][0]


@pytest.fixture(scope="module")
def kill_inputs(tmp_path_factory, zoo):
    """A 16 MB model (seconds to store losslessly: the job to kill) and MTCNN's four nets."""
    if not (zoo / "mtcnn").is_dir():
        pytest.skip("zoo folder mtcnn needed")
    d = tmp_path_factory.mktemp("kill-in")
    (d / "a").mkdir()
    rng = np.random.default_rng(11)
    blobs = [(rng.standard_normal((1024, 2048)) * 0.02).astype(np.float32) for _ in range(2)]
    cc.write_caffemodel(cc.Model(layers=[cc.Layer(f"fc{i}", "InnerProduct", [b])
                                         for i, b in enumerate(blobs)], name="slow"),
                        d / "a" / "slow.caffemodel")
    shutil.copytree(zoo / "mtcnn", d / "mtcnn")
    inputs = [d / "a", d / "mtcnn"]
    ref = d / "ref"
    assert all(r["status"] == "ok" for r in batching.batch(inputs, ref, preset="lossless"))
    return inputs, _restored(ref)


def _kill_mid_job(client, inputs, out, name="slow.ccz.h5"):
    """Run a batch in a thread; SIGKILL the worker process while it executes ``name``'s job."""
    pids = client.run(os.getpid)
    with ThreadPoolExecutor(1) as ex:
        fut = ex.submit(batching.batch, inputs, out, client=client, preset="lossless")
        deadline = time.monotonic() + _START_S
        victim = None
        while victim is None:
            assert time.monotonic() < deadline and not fut.done(), "the job never started"
            for addr, keys in client.processing().items():
                if any(str(k).startswith(f"caffecompress-{name}-") for k in keys):
                    executing = client.run(_executing, workers=[addr]).get(addr, [])
                    if any(k.startswith(f"caffecompress-{name}-") for k in executing):
                        victim = addr
            time.sleep(0.02)
        os.kill(pids[victim], signal.SIGKILL)  # the worker process; its nanny restarts it
        results = fut.result(timeout=120)
    return victim, {Path(r["output"]).name: r for r in results}


def _executing(dask_worker):
    return [str(k) for k, ts in dask_worker.state.tasks.items() if ts.state == "executing"]


def _no_leftovers(out: Path, results: dict):
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.endswith(".tmp") or n.startswith(".")], names
    assert names == sorted(n for n, r in results.items() if r["status"] == "ok")


def test_killed_worker_is_retried(cluster, kill_inputs, tmp_path):
    inputs, ref = kill_inputs
    out = tmp_path / "out"
    victim, res = _kill_mid_job(cluster, inputs, out)
    assert res["slow.ccz.h5"]["status"] == "ok", res["slow.ccz.h5"]
    assert res["slow.ccz.h5"]["worker"] != victim  # ran again after the kill
    assert all(r["status"] == "ok" for r in res.values()), res
    _no_leftovers(out, res)
    assert _restored(out) == ref
    cluster.wait_for_workers(2, timeout=_START_S)  # the nanny brought the worker back


def test_killed_worker_without_retries_reports_the_model_failed(cluster, kill_inputs, tmp_path):
    inputs, ref = kill_inputs

    def set_failures(n, dask_scheduler=None):
        old = dask_scheduler.allowed_failures
        dask_scheduler.allowed_failures = n
        return old

    cluster.wait_for_workers(2, timeout=_START_S)
    old = cluster.run_on_scheduler(set_failures, 0)
    try:
        out = tmp_path / "out"
        _, res = _kill_mid_job(cluster, inputs, out)
    finally:
        cluster.run_on_scheduler(set_failures, old)
    slow = res["slow.ccz.h5"]
    assert slow["status"] == "failed" and "worker died" in slow["error"], slow
    for r in res.values():  # tasks queued on the dead worker may fail the same way
        assert r["status"] == "ok" or "worker died" in r["error"], r
    _no_leftovers(out, res)
    restored = _restored(out)
    assert restored == {k: ref[k] for k in restored} and len(restored) >= 3
    cluster.wait_for_workers(2, timeout=_START_S)


def test_unreachable_path_names_the_worker(cluster, tmp_path):
    missing = tmp_path / "not-on-the-workers.caffemodel"
    with pytest.raises(cc.UnreachablePathError) as ei:
        batching.check_reachable(cluster, [missing], tmp_path)
    assert ei.value.worker in cluster.scheduler_info()["workers"]
    assert str(missing) in str(ei.value) and ei.value.worker in str(ei.value)
    with pytest.raises(cc.UnreachablePathError, match="no-such-dir"):
        batching.check_reachable(cluster, [], tmp_path / "no-such-dir")
