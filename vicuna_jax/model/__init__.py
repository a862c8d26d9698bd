"""The LLaMA model and its attention backends."""

from vicuna_jax.model.llama import KVCache, Llama, abstract_model, build_model

__all__ = ["KVCache", "Llama", "abstract_model", "build_model"]
