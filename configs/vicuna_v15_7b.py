"""Vicuna-7B v1.5: LLaMA-2 7B base, 4K context, FastChat's hyperparameters.

    python -m vicuna_jax.train --config=configs/vicuna_v15_7b.py --workdir=DIR \
        --config.init_from_hf=/path/to/Llama-2-7b-hf --config.data.path=/path/to/sharegpt.json

Rows are 4096 tokens: 32 packed rows hold about as many conversations as vicuna_7b.py's 56 x 2048 (14% more
tokens), and divide evenly over 8 or 16 devices.
"""

from vicuna_jax.train.config import vicuna_recipe


def get_config():
    c = vicuna_recipe("llama2_7b", seq_len=4096, batch_size=32)
    c.mesh.data = 1
    c.mesh.fsdp = -1  # FSDP over every device; set mesh.data / mesh.tensor for larger pods
    c.mesh.tensor = 1
    return c
