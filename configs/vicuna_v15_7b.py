"""Vicuna-7B v1.5: LLaMA-2 7B base, 4K context, FastChat's hyperparameters.

    python -m vicuna_jax.train --config=configs/vicuna_v15_7b.py --workdir=DIR \
        --config.init_from_hf=/path/to/Llama-2-7b-hf --config.data.path=/path/to/sharegpt.json

Rows are 4096 tokens, so 16 packed rows hold about as many conversations as vicuna_7b.py's 32 x 2048.
"""

from vicuna_jax.train_config import base_config


def get_config():
    c = base_config()
    c.model = "llama2_7b"
    c.data.template = "vicuna_v1.1"
    c.seq_len = 4096
    c.batch_size = 16
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
