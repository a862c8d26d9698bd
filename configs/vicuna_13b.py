"""Vicuna-13B (v1.1 recipe): LLaMA-1 13B, FastChat's hyperparameters (see vicuna_7b.py for batching).

    python -m vicuna_jax.train --config=configs/vicuna_13b.py --workdir=DIR \
        --config.init_from_hf=/path/to/llama-13b-hf --config.data.path=/path/to/sharegpt.json

On 8 x 80 GB GPUs: fp32 params + AdamW moments are 12 bytes/param = 156 GB (20 GB per device under FSDP),
fp32 gradients 6.5 GB more per device, leaving room for the bf16 activations of 7 rows x 2048 tokens per
device with full remat; if not, raise grad_accum_steps. Check before renting anything with
`python -m vicuna_jax.train.planner --config=configs/vicuna_13b.py`.
"""

from vicuna_jax.train.config import vicuna_recipe


def get_config():
    c = vicuna_recipe("llama1_13b", seq_len=2048, batch_size=56)
    c.mesh.data = 1
    c.mesh.fsdp = -1  # FSDP over every device; set mesh.data / mesh.tensor for larger pods
    c.mesh.tensor = 1
    return c
