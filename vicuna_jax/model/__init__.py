"""The LLaMA model, its attention backends, and the training loss fused with its LM head."""

from vicuna_jax.model.llama import KVCache, Llama, abstract_model, build_model

__all__ = ["KVCache", "Llama", "abstract_model", "build_model"]
