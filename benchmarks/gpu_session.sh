#!/usr/bin/env bash
# What a lent GPU should run for lottalora, in two parts that each fit one 10-minute device call.
# The device image has torch, Triton and every dependency; run from the repository root:
#   bash benchmarks/gpu_session.sh tests   # the whole suite on the GPU (compiled kernels, gpu tests)
#   bash benchmarks/gpu_session.sh bench   # benchmarks.speed and benchmarks.memory on the GPU
# Results and logs go to $OUT when set (the device tool's output folder), else benchmarks/results.
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
out=${OUT:-benchmarks/results}
mkdir -p "$out"
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv;
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } \
  > "$out/gpu_environment.txt" 2>&1
case "${1:-}" in
  tests)
    python3 -m pytest -q -rs tests/ 2>&1 | tee "$out/pytest_gpu.log" ;;
  bench)
    python3 -m benchmarks.speed --out "$out" 2>&1 | tee "$out/speed.log"
    python3 -m benchmarks.memory --device cuda --out "$out" 2>&1 | tee "$out/memory.log" ;;
  *)
    echo "usage: bash benchmarks/gpu_session.sh tests|bench" >&2; exit 2 ;;
esac
