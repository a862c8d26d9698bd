"""Vicuna-7B (v1.1 recipe): LLaMA-1 7B fine-tuned on ShareGPT with FastChat's hyperparameters.

    python -m vicuna_jax.train --config=configs/vicuna_7b.py --workdir=gs://.../vicuna7b \
        --config.init_from_hf=/path/to/llama-7b-hf --config.data.path=/path/to/sharegpt_clean_split.json

FastChat trains 128 padded conversations per step (lr 2e-5, 3 epochs, warmup 3%, cosine, no weight decay,
grad clip 1.0, AdamW (0.9, 0.999, 1e-8), bf16, context 2048, gradient checkpointing, FSDP on 8 GPUs).
We pack conversations instead of padding them: 32 packed rows of 2048 tokens hold about as many
conversations as FastChat's 128 padded rows at ShareGPT's length distribution (most conversations
are far shorter than 2048 tokens), with ~4x fewer wasted slots. For FastChat's exact batching use
--config.data.packing=False --config.batch_size=128.
"""

from vicuna_jax.train_config import base_config


def get_config():
    c = base_config()
    c.model = "llama1_7b"  # replaced by init_from_hf's config.json when that is set
    c.data.template = "vicuna_v1.1"
    c.seq_len = 2048
    c.batch_size = 32
    c.grad_accum_steps = 1
    c.total_steps = -1
    c.num_epochs = 3.0
    c.optimizer.learning_rate = 2e-5
    c.optimizer.warmup_ratio = 0.03
    c.optimizer.weight_decay = 0.0
    c.dtype = "bfloat16"
    c.param_dtype = "float32"
    c.remat_policy = "nothing_saveable"
    c.scan_layers = True
    c.attention = "auto"
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.tensor = 1
    c.checkpoint_every = 200
    c.eval_every = 200
    c.export_dtype = "bfloat16"
    return c
