#!/usr/bin/env bash
# Issue 3's GPU checks in one run, for a session lent a device machine:
#   run(command="bash benchmarks/gpu_check.sh", timeout_s=540)
# The device image has cupy, numpy, h5py, protobuf, pytest, hypothesis and
# numba (device/KINDS.md); the zoo does not travel, so zoo tests skip there.
# Logs go to $OUT (the device tool brings them back) or /tmp/gpu_out.
set -o pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
out=${OUT:-/tmp/gpu_out}
mkdir -p "$out"
nvidia-smi -L 2>&1 | tee "$out/device.txt"
python3 -c "import cupy, numpy, numba, google.protobuf as pb; print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'numba', numba.__version__, 'protobuf', pb.__version__)" 2>&1 | tee -a "$out/device.txt"
# 1. CPU/GPU identity tests (derandomised, few examples)
timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$out/pytest_gpu.txt"
rc_tests=$?
# 2. VGG-16-sized share+code time, engine time, decode GB/s, identity
timeout 240 python3 benchmarks/bench_gpu.py --repeat 3 --json "$out/bench_gpu.json" 2>&1 | tee "$out/bench_gpu.txt"
rc_bench=$?
echo "pytest -m gpu rc=$rc_tests, bench_gpu rc=$rc_bench" | tee -a "$out/device.txt"
exit $((rc_tests || rc_bench))
