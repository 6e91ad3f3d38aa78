#!/usr/bin/env bash
# What a lent GPU should run for lottalora, in parts that each fit one 10-minute device call.
# The device image has torch, Triton and every dependency; run from the repository root:
#   bash benchmarks/gpu_session.sh all     # THE command of a lent session (under 9 minutes, below)
#   bash benchmarks/gpu_session.sh tests   # tests/kernels/test_gpu.py: Gluon paths bit-exact, every regime vs float64 (~4 min)
#   bash benchmarks/gpu_session.sh kernels # the kernel test files on the GPU (~5 min)
#   bash benchmarks/gpu_session.sh bench   # benchmarks.speed (regimes vs cuBLAS + LoRA, graphs, generation rates)
#   bash benchmarks/gpu_session.sh memory  # benchmarks.memory on the GPU
#   bash benchmarks/gpu_session.sh profile # benchmarks.profile (kernel and host time, decode and M = 8192),
#                                          # then benchmarks.decode_tuning (decode warps x splits sweep)
#   bash benchmarks/gpu_session.sh suite   # the whole test suite on the GPU (slow: compiles every kernel)
#   bash benchmarks/gpu_session.sh generate # benchmarks.generate, the 8B shape: seeded vs stored bf16 vs int4,
#                                          # batch 1 and 16, eager then reduce-overhead (~3 min, capped)
#   bash benchmarks/gpu_session.sh train   # benchmarks.train, the 1.26B config, a few steps a variant (~3 min, capped)
# Results and logs go to $OUT when set (the device tool's output folder), else benchmarks/results.
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
case "${1:-}" in
  all|tests|kernels|bench|memory|profile|suite|generate|train) ;;
  *) echo "usage: bash benchmarks/gpu_session.sh all|tests|kernels|bench|memory|profile|suite|generate|train" >&2
     exit 2 ;;
esac
out=${OUT:-benchmarks/results}
mkdir -p "$out"
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv;
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } \
  > "$out/gpu_environment.txt" 2>&1
case "${1:-}" in
  all)
    # A lent session has 15 device-minutes, the machine's start included: this runs in under 9,
    # each part in its own time box, each writing its results to $out as it goes. First the
    # bits of what no GPU has run yet (the one-pass kernels, alone and as whole layers with the
    # switch on; the eager plans' replays, which the default dispatch runs), then the speed
    # table at the shapes with both baselines, then the end-to-end benchmarks.
    timeout 210 python3 -m pytest -q -rs tests/kernels/test_gpu.py -k "one_pass or eager_plans" 2>&1 \
      | tee "$out/pytest_gpu_one_pass.log"
    timeout 150 python3 -m benchmarks.speed --out "$out" 2>&1 | tee "$out/speed.log"
    timeout 100 bash "$0" generate
    timeout 60 bash "$0" train
    date -u >> "$out/gpu_environment.txt" ;;
  tests)
    # The large-index test runs in its own process: an illegal memory access poisons the CUDA
    # context, and every later test in that process fails with it (seen on the first H100 run).
    python3 -m pytest -q -rs tests/kernels/test_gpu.py -k "not large_index" 2>&1 | tee "$out/pytest_gpu.log"
    python3 -m pytest -q -rs tests/kernels/test_gpu.py -k large_index 2>&1 | tee -a "$out/pytest_gpu.log" ;;
  kernels)
    python3 -m pytest -q -rs tests/kernels/test_decode.py tests/kernels/test_two_phase.py \
      tests/kernels/test_backbone_gen.py tests/ops/test_autograd.py 2>&1 | tee "$out/pytest_kernels.log" ;;
  bench)
    python3 -m benchmarks.speed --out "$out" 2>&1 | tee "$out/speed.log" ;;
  memory)
    python3 -m benchmarks.memory --device cuda --out "$out" 2>&1 | tee "$out/memory.log" ;;
  profile)
    python3 -m benchmarks.profile --m 8192 --nk 4096 > "$out/profile_m8192.txt" 2>&1
    python3 -m benchmarks.profile --m 1 --nk 4096 --no-backward > "$out/profile_m1_decode.txt" 2>&1
    python3 -m benchmarks.profile --m 16 --nk 4096 --no-backward > "$out/profile_m16_decode.txt" 2>&1
    python3 -m benchmarks.decode_tuning --out "$out" 2>&1 | tee "$out/decode_tuning.log" ;;
  suite)
    python3 -m pytest -q -rs tests/ 2>&1 | tee "$out/pytest_suite_gpu.log" ;;
  generate)
    # First the decode step replayed in a CUDA graph (a tiny model: seconds once its kernels
    # compile), then the 8B shape. Rows are written as they are measured (eager rows first, then
    # compiled ones, whose compile takes most of a minute each), so a cap, this one or the time
    # box of "all", keeps what was measured; 32 new tokens and one timed generate a row keep the
    # eager rows inside the first 40 s or so.
    python3 -m pytest -q -rs tests/model/test_gpu_graphs.py 2>&1 | tee "$out/pytest_gpu_graphs.log"
    timeout 170 python3 -m benchmarks.generate --shapes 8B --new 32 --repeats 1 --out "$out" 2>&1 \
      | tee "$out/generate.log" ;;
  train)
    # Eager rows of the three recipes first (each a build and five steps), then compiled ones.
    timeout 175 python3 -m benchmarks.train --steps 3 --warmup 2 --out "$out" 2>&1 | tee "$out/train.log" ;;
esac
