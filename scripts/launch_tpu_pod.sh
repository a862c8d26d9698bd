#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: the same command runs on every host; jax.distributed.initialize()
# discovers the pod by itself, each host reads only its rows of every global batch, process 0 logs.
#
#   TPU_NAME=vicuna-v4-64 ZONE=us-central2-b WORKDIR=/mnt/gcs/runs/vicuna7b \
#   DATA=/mnt/gcs/sharegpt_prepared HF_BASE=/mnt/gcs/llama-7b-hf bash scripts/launch_tpu_pod.sh
#
# WORKDIR, DATA and HF_BASE are POSIX paths every host sees (e.g. a gcsfuse mount of one bucket at
# /mnt/gcs on each host): checkpoints then outlive the VMs, and rerunning the script after a preemption
# resumes from the latest complete checkpoint.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR}" "${DATA:?set DATA}"
CONFIG=${CONFIG:-configs/vicuna_7b.py}
REPO=${REPO:-https://github.com/your-org/vicuna_jax.git}
HF_BASE=${HF_BASE:-}

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  set -e
  [ -d vicuna_jax ] || git clone $REPO vicuna_jax
  cd vicuna_jax && git pull --ff-only
  python3 -m pip install -q -e '.[tpu]'
  python3 -m vicuna_jax.train --config=$CONFIG --workdir=$WORKDIR \
      --config.data.path=$DATA ${HF_BASE:+--config.init_from_hf=$HF_BASE} \
      --config.attention=pallas --config.distributed=on
"
