"""Tiny Mistral-style fine-tune on CPU: the Vicuna recipe's shape (packed rows, assistant-only loss in
the model's own chat template, FSDP over every device) for a few steps; the family's
end-to-end test runs it.

    python -m vicuna_jax.train --config=configs/tiny_mistral.py --workdir=/tmp/tiny_mistral \
        --config.init_from_hf=/path/to/tiny-mistral-hf   # a small HF model with its tokenizer.json
"""

from vicuna_jax.train.config import tiny_hf_recipe


def get_config():
    return tiny_hf_recipe("tiny_mistral", template="hf")
