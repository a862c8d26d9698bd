"""Chat data pipeline: ShareGPT cleaning, splitting, templates, exact encoding, packing, storage, loading.

Tokenizer, templates and encoding import eagerly (generation and serving need only them); the storage and
loader names import tensorflow-datasets and grain on first use.
"""

from vicuna_jax.data.encode import encode_conversation, encode_parts, encode_prompt
from vicuna_jax.data.template import Template, get_template, normalize_turns, template_names
from vicuna_jax.data.tokenizer import Tokenizer, bundled_tokenizer_path, load_tokenizer

_LAZY = {
    "make_train_iterator": "vicuna_jax.data.loader",
    "make_eval_batches": "vicuna_jax.data.loader",
    "ChatBatchIterator": "vicuna_jax.data.loader",
    "batch_stats": "vicuna_jax.data.pack",
    "prepare_dataset": "vicuna_jax.data.prepare",
    "bundled_sample_path": "vicuna_jax.data.prepare",
    "PreparedDataset": "vicuna_jax.data.store",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vicuna_jax.data' has no attribute {name!r}")


__all__ = [
    "ChatBatchIterator",
    "PreparedDataset",
    "Template",
    "Tokenizer",
    "batch_stats",
    "bundled_sample_path",
    "bundled_tokenizer_path",
    "encode_conversation",
    "encode_parts",
    "encode_prompt",
    "get_template",
    "load_tokenizer",
    "make_eval_batches",
    "make_train_iterator",
    "normalize_turns",
    "prepare_dataset",
    "template_names",
]
