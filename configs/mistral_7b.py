"""The Vicuna recipe on Mistral-7B-v0.1 (sliding-window attention, window 4096) in Mistral's [INST] format.

    python -m vicuna_jax.train --config=configs/mistral_7b.py --workdir=/runs/vicuna-mistral-7b \
        --config.init_from_hf=/path/to/Mistral-7B-v0.1 --config.data.path=/path/to/sharegpt.json

Rows of 4096 tokens equal the window, so attention is plain causal and every fused backend runs; longer
rows (--config.seq_len=8192) use the window in the xla, cuDNN and TPU splash backends (the Pallas GPU kernel
has none: `attention=auto` then uses cuDNN or xla, with a warning). Hyperparameters as configs/llama3_8b.py.
"""

from vicuna_jax.train.config import vicuna_recipe


def get_config():
    c = vicuna_recipe("mistral_7b", seq_len=4096, batch_size=32)
    c.data.template = "mistral"
    c.mesh.fsdp = -1
    return c
