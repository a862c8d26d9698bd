"""CPU demo: a ~5M-parameter LLaMA trained from scratch on the bundled sample conversations.

    python -m vicuna_jax.train --config=configs/tiny.py --workdir=/tmp/vicuna_tiny

It learns the chat format, not language: what it says afterwards is gibberish, by design. Coherent replies
need a pretrained base (--config.init_from_hf; see the README's first section for sizes and times).
"""

from vicuna_jax.train.config import base_config


def get_config():
    c = base_config()
    c.model = "tiny"
    c.data.path = "bundled"
    c.data.validation_fraction = 0.05
    c.seq_len = 512
    c.batch_size = 8
    c.total_steps = 150
    c.optimizer.learning_rate = 2e-3  # from scratch; fine-tuning uses FastChat's 2e-5
    c.optimizer.warmup_ratio = 0.05
    c.optimizer.weight_decay = 0.01
    c.dtype = "float32"  # CPUs have no fast bf16 matmul
    c.remat_policy = "none"
    c.scan_layers = False  # on CPU a Python loop over 4 layers runs ~10% faster than lax.scan
    c.loss_chunk_size = 128  # the fused loss skips LM-head work on chunks without targets
    c.checkpoint_every = 50
    c.eval_every = 50
    c.log_every = 10
    c.export_dtype = "float32"
    return c
