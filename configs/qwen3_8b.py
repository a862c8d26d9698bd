"""The Vicuna recipe on Qwen3-8B: multi-turn SFT on ShareGPT, loss on assistant turns only, in the model's own
chat template (ChatML; the final reply of a conversation carries Qwen3's empty `<think>` block).

    python -m vicuna_jax.train --config=configs/qwen3_8b.py --workdir=/runs/vicuna-qwen3-8b \
        --config.init_from_hf=/path/to/Qwen3-8B --config.data.path=/path/to/sharegpt.json

`hf` renders the tokenizer's own Jinja template exactly as transformers does (check it first with
`python -m vicuna_jax.data.check_template --tokenizer=/path/to/Qwen3-8B`); a checkpoint without a template
can use --config.data.template=chatml. Same hyperparameters and batch as configs/llama3_8b.py. Other sizes:
--config.model=qwen3_4b (or qwen3_0_6b, qwen3_14b) with the matching init_from_hf.
"""

from vicuna_jax.train.config import vicuna_recipe


def get_config():
    c = vicuna_recipe("qwen3_8b", seq_len=4096, batch_size=32)
    c.data.template = "hf"
    c.mesh.fsdp = -1
    return c
