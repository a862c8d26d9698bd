"""Vicuna-13B (v1.1 recipe): LLaMA-1 13B, FastChat's hyperparameters (see vicuna_7b.py for batching).

    python -m vicuna_jax.train --config=configs/vicuna_13b.py --workdir=DIR \
        --config.init_from_hf=/path/to/llama-13b-hf --config.data.path=/path/to/sharegpt.json

On 8 x 80 GB GPUs: params + AdamW state in fp32 are 16 bytes/param = 208 GB, 26 GB per device under FSDP,
leaving room for bf16 activations of 4 x 2048-token rows per device with full remat; check with
`python -m vicuna_jax.plan --config=configs/vicuna_13b.py`.
"""

from vicuna_jax.train_config import base_config


def get_config():
    c = base_config()
    c.model = "llama1_13b"
    c.data.template = "vicuna_v1.1"
    c.seq_len = 2048
    c.batch_size = 32
    c.total_steps = -1
    c.num_epochs = 3.0
    c.optimizer.learning_rate = 2e-5
    c.optimizer.warmup_ratio = 0.03
    c.optimizer.weight_decay = 0.0
    c.dtype = "bfloat16"
    c.remat_policy = "nothing_saveable"
    c.scan_layers = True
    c.checkpoint_every = 200
    c.eval_every = 200
    return c
