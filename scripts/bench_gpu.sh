#!/usr/bin/env bash
# GPU runbook: tokens/s and MFU of a ~1B LLaMA at seq 2048 (bf16 compute, fp32 params + AdamW) on one GPU,
# for each attention backend (xla, cudnn, pallas) x remat policy; prints a table and writes
# bench_results/bench_gpu.{md,json}. Record the table (device, date) in the README.
#
#   scripts/bench_gpu.sh                         # full grid (about 10-15 minutes on an H100)
#   scripts/bench_gpu.sh --smoke                 # tiny model, 2 steps per cell: runs on CPU too
#   scripts/bench_gpu.sh --attention=cudnn --remat=none,nothing_saveable --batch_size=16
#
# Every cell runs in its own process, so an out-of-memory cell is reported and the grid goes on.
set -euo pipefail
cd "$(dirname "$0")/.."

# One process per cell owns the GPU: let it use nearly all of it (JAX's default preallocation is 75%).
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
python -c "import jax; print('devices:', jax.devices())" >&2
exec python -m vicuna_jax.bench.gpu "$@"
