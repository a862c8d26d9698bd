#!/usr/bin/env bash
#SBATCH --job-name=vicuna-jax
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:TERM@120
# Multi-node GPU training: one process per node drives its 8 GPUs; jax.distributed.initialize() reads
# the SLURM environment (coordinator = first node). `--requeue` plus `--signal=TERM@120` give spot-style
# safety: SIGTERM two minutes before the end makes the trainer save and exit 0, and the requeued job
# resumes from that checkpoint with the same command.
#
#   WORKDIR=/shared/runs/vicuna13b DATA=/shared/sharegpt_prepared HF_BASE=/shared/llama-13b-hf \
#       sbatch scripts/launch_slurm.sh
set -euo pipefail
: "${WORKDIR:?set WORKDIR}" "${DATA:?set DATA}"
CONFIG=${CONFIG:-configs/vicuna_13b.py}
HF_BASE=${HF_BASE:-}
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}

srun --kill-on-bad-exit=1 python -m vicuna_jax.train --config="$CONFIG" --workdir="$WORKDIR" \
    --config.data.path="$DATA" ${HF_BASE:+--config.init_from_hf="$HF_BASE"} \
    --config.distributed=on --config.attention=auto &
wait $!
