"""Tiny Qwen3 model trained from scratch on CPU, offline, in the Vicuna recipe's shape (packed rows,
assistant-only loss in the family's own chat template, FSDP over every device), on the bundled sample
conversations with the bundled Qwen3 tokenizer (vicuna_jax/assets/tokenizers/qwen3/: a 2048-id BPE trained
on that sample with the family's real special tokens <|im_start|>, <|im_end|>, <|endoftext|>, <think>, ...
and Qwen3's chat template).

    python -m vicuna_jax.train --config=configs/tiny_qwen3.py --workdir=/tmp/tiny_qwen3

About a minute of CPU for a ~5M-parameter model: it shows the format end to end (masks, export that
transformers loads, chat), and its replies are gibberish. To fine-tune a real (or tiny HF) Qwen3 model
instead add `--config.init_from_hf=DIR`: DIR's config.json and DIR's own tokenizer replace these.
"""

from vicuna_jax.data.tokenizer import bundled_family_tokenizer_path
from vicuna_jax.train.config import tiny_hf_recipe


def get_config():
    c = tiny_hf_recipe("tiny_qwen3", template="hf")
    c.tokenizer = bundled_family_tokenizer_path("qwen3")  # with init_from_hf: DIR's own instead
    return c
