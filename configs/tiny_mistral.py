"""Tiny Mistral model trained from scratch on CPU, offline, in the Vicuna recipe's shape (packed rows,
assistant-only loss in the family's own chat template, FSDP over every device), on the bundled sample
conversations with the bundled Mistral tokenizer (vicuna_jax/assets/tokenizers/mistral/: a 2048-id BPE trained
on that sample with the family's real special tokens <s>, </s>, [INST], [/INST], ...
and Mistral-7B-Instruct-v0.3's chat template).

    python -m vicuna_jax.train --config=configs/tiny_mistral.py --workdir=/tmp/tiny_mistral

About a minute of CPU for a ~5M-parameter model: it shows the format end to end (masks, export that
transformers loads, chat), and its replies are gibberish. To fine-tune a real (or tiny HF) Mistral model
instead add `--config.init_from_hf=DIR`: DIR's config.json and DIR's own tokenizer replace these.
"""

from vicuna_jax.data.tokenizer import bundled_family_tokenizer_path
from vicuna_jax.train.config import tiny_hf_recipe


def get_config():
    c = tiny_hf_recipe("tiny_mistral", template="hf")
    c.tokenizer = bundled_family_tokenizer_path("mistral")  # with init_from_hf: DIR's own instead
    return c
