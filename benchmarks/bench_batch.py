"""Batch throughput: ~200 small models three ways (issue 11).

    .venv/bin/python benchmarks/bench_batch.py [--models 200] [--repeat 3] [-- COMPRESS OPTIONS]

The zoo's small trained models (MTCNN det1-det3, HyperLPR, LeNet, CIFAR-10
quick), each with its prototxt, are copied under new names into a temporary
folder until there are ``--models`` of them, then converted by
``caffecompress batch`` in a fresh interpreter:

- ``--jobs 1`` (this process, one model after another);
- ``--jobs 2`` (a local process pool);
- ``--scheduler`` on a Dask cluster of ``dask scheduler`` and two ``dask
  worker`` processes (one thread each) on 127.0.0.1, started once before
  the timed runs and reused by every repetition, as an existing cluster is.

Per way: wall time of the whole command (interpreter start, imports, the
batch), models per second, and the scheduling overhead per model:
``(workers x wall - sum of the jobs' own times) / models``, where a job's
own time is what it measured around itself where it ran (read, compress,
write). The overhead is what each model costs beyond its own work: start-up,
pickling, task dispatch, results coming back, idle workers at the end.

Default compression options: ``--data-free`` (the data-free rule, so a
model costs a fraction of a second; the fidelity-targeted default runs the
net through OpenCV for seconds per model). Medians over ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ZOO = Path(os.environ.get("CAFFE_ZOO", ROOT.parent / "shared" / "caffe-zoo"))
PYTHON = sys.executable

# (weights, prototxt) under the zoo: the small trained models
SMALL = [
    ("mtcnn/det1.caffemodel", "mtcnn/det1.prototxt"),
    ("mtcnn/det2.caffemodel", "mtcnn/det2.prototxt"),
    ("mtcnn/det3.caffemodel", "mtcnn/det3.prototxt"),
    ("hyperlpr/HorizonalFinemapping.caffemodel", "hyperlpr/HorizonalFinemapping.prototxt"),
    ("hyperlpr/Segmentation.caffemodel", "hyperlpr/Segmentation.prototxt"),
    ("hyperlpr/CharacterRecognization.caffemodel", "hyperlpr/CharacterRecognization.prototxt"),
    ("lenet-mnist/lenet_iter_10000.caffemodel", "lenet-mnist/mnist_deploy.prototxt"),
    ("cifar10-quick/cifar10_quick_iter_5000.caffemodel", "cifar10-quick/cifar10_quick.prototxt"),
]


def make_inputs(folder: Path, n: int) -> int:
    """Copy the small models round-robin as m000-NAME.caffemodel (+ .prototxt); return total bytes."""
    folder.mkdir(parents=True)
    total = 0
    for i in range(n):
        w, p = SMALL[i % len(SMALL)]
        stem = f"m{i:03d}-{Path(w).stem}"
        shutil.copy(ZOO / w, folder / f"{stem}.caffemodel")
        shutil.copy(ZOO / p, folder / f"{stem}.prototxt")
        total += (ZOO / w).stat().st_size
    return total


class Cluster:
    """`dask scheduler` + two `dask worker` processes on 127.0.0.1 (bounded start, always stopped)."""

    def __init__(self, folder: Path, workers: int = 2):
        self.folder, self.procs = folder, []
        sched_file = folder / "scheduler.json"
        t0 = time.perf_counter()
        self._spawn(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                     "--scheduler-file", sched_file, "--idle-timeout", "900s"], "scheduler")
        deadline = time.monotonic() + 60
        while not sched_file.exists() or not sched_file.read_text().strip():
            if time.monotonic() > deadline or self.procs[0].poll() is not None:
                raise RuntimeError("dask scheduler did not start: " + (folder / "scheduler.log").read_text())
            time.sleep(0.1)
        self.address = json.loads(sched_file.read_text())["address"]
        for i in range(workers):
            self._spawn(["worker", self.address, "--host", "127.0.0.1", "--nthreads", "1",
                         "--no-dashboard", "--memory-limit", "0", "--death-timeout", "60s",
                         "--local-directory", folder / f"w{i}"], f"w{i}")
        wait = ("from distributed import Client; c = Client(%r, timeout=60); "
                "c.wait_for_workers(%d, timeout=60); c.close()" % (self.address, workers))
        subprocess.run([PYTHON, "-c", wait], check=True, timeout=120)
        self.start_s = time.perf_counter() - t0

    def _spawn(self, args, name):
        with open(self.folder / f"{name}.log", "wb") as log:
            self.procs.append(subprocess.Popen([PYTHON, "-m", "dask", *map(str, args)], stdout=log,
                                               stderr=subprocess.STDOUT, start_new_session=True))

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def run_way(inputs: Path, out: Path, way: list, options: list) -> dict:
    cmd = [PYTHON, "-m", "caffecompress", "batch", str(inputs), "-o", str(out), "--json", *way, *options]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}\n{r.stderr[-2000:]}")
    rep = json.loads(r.stdout)
    res = rep["results"]
    assert all(x["status"] == "ok" for x in res), [x for x in res if x["status"] != "ok"][:3]
    return {"wall": wall, "jobs": sum(x["task_seconds"] for x in res), "n": len(res)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("options", nargs="*", help="compress options after -- (default: --data-free)")
    args = ap.parse_args(argv)
    options = args.options or ["--data-free"]
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        tmp = Path(tmp)
        nbytes = make_inputs(tmp / "in", args.models)
        print(f"{args.models} models ({nbytes / 1e6:.1f} MB of .caffemodel), options {' '.join(options)}, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start", flush=True)
        (tmp / "dask").mkdir()
        cluster = Cluster(tmp / "dask")
        print(f"dask cluster (scheduler + 2 workers) up in {cluster.start_s:.1f} s (not in the figures)",
              flush=True)
        ways = {"--jobs 1": (["--jobs", "1"], 1), "--jobs 2": (["--jobs", "2"], 2),
                "dask, 2 workers": (["--scheduler", cluster.address], 2)}
        runs = {k: [] for k in ways}
        try:
            for rep in range(args.repeat):
                for name, (flags, _) in ways.items():
                    out = tmp / f"out-{rep}-{name.replace(' ', '').replace(',', '')}"
                    r = run_way(tmp / "in", out, flags, options)
                    runs[name].append(r)
                    shutil.rmtree(out)
                    print(f"  run {rep + 1} {name:<16} wall {r['wall']:6.2f} s, jobs' own time {r['jobs']:6.2f} s",
                          flush=True)
        finally:
            cluster.close()
    print(f"\n{'way':<16} {'wall s':>8} {'models/s':>9} {'overhead ms/model':>18} {'jobs own s':>11}")
    for name, (_, workers) in ways.items():
        wall = statistics.median(r["wall"] for r in runs[name])
        own = statistics.median(r["jobs"] for r in runs[name])
        over = statistics.median((workers * r["wall"] - r["jobs"]) / r["n"] for r in runs[name])
        print(f"{name:<16} {wall:8.2f} {args.models / wall:9.2f} {1000 * over:18.1f} {own:11.2f}")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
