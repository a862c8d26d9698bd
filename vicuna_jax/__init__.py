"""vicuna_jax: Vicuna-style chat fine-tuning of LLaMA in JAX/Flax NNX."""

__version__ = "0.1.0"
