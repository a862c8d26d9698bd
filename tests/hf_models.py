"""Tiny random Hugging Face models (LLaMA-1/2, Llama-3.x, Mistral, Qwen2, Qwen3) built locally for parity
tests (no downloads)."""

from __future__ import annotations

import os

import numpy as np

# One entry per architecture feature the parity tests must cover.
HF_VARIANTS = {
    "mha": dict(num_attention_heads=4, num_key_value_heads=4),
    "gqa": dict(num_attention_heads=4, num_key_value_heads=2),
    "rope_theta": dict(num_attention_heads=4, num_key_value_heads=1, rope_theta=500000.0),
    "linear_scaling": dict(num_attention_heads=4, num_key_value_heads=2,
                           rope_scaling={"type": "linear", "factor": 4.0}),
}


# The families: (transformers config class, model class, what makes the tiny model exercise the family).
HF_FAMILIES = {
    # Llama-3.x: llama3 RoPE scaling (a small original context, so all three frequency bands occur at
    # head_dim 16), tied embeddings (3.2 1B/3B), GQA, several EOS ids.
    "llama3": ("LlamaConfig", "LlamaForCausalLM", dict(
        num_attention_heads=4, num_key_value_heads=2, rope_theta=500000.0, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64},
        bos_token_id=1, eos_token_id=[2, 3])),
    # Mistral: a sliding window shorter than the test sequences.
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(
        num_attention_heads=4, num_key_value_heads=2, sliding_window=16, rope_theta=1e6)),
    # Qwen2/2.5: q/k/v biases (made non-zero below).
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(
        num_attention_heads=4, num_key_value_heads=2, rope_theta=1e6, bos_token_id=None, eos_token_id=2)),
    # Qwen3: per-head q/k RMSNorm, head_dim (24) unrelated to hidden_size / heads (16).
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(
        num_attention_heads=4, num_key_value_heads=2, head_dim=24, rope_theta=1e6, bos_token_id=None,
        eos_token_id=2)),
}


def make_hf_llama(variant: str = "gqa", seed: int = 0, **overrides):
    """A random LlamaForCausalLM (fp32, eval mode) with a tiny config."""
    return make_hf_family("llama", seed, **{**HF_VARIANTS[variant], **overrides})


def make_hf_family(family: str, seed: int = 0, **overrides):
    """A random model of `family` ("llama" or a key of HF_FAMILIES), fp32, eval mode, tiny."""
    import torch
    import transformers

    config_name, model_name, family_kwargs = HF_FAMILIES.get(family, ("LlamaConfig", "LlamaForCausalLM", {}))
    kwargs = dict(vocab_size=211, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  max_position_embeddings=128, rms_norm_eps=1e-5, tie_word_embeddings=False,
                  attn_implementation="eager")
    kwargs.update(family_kwargs)
    kwargs.update(overrides)
    torch.manual_seed(seed)
    config = getattr(transformers, config_name)(**kwargs)
    model = getattr(transformers, model_name)(config).eval()
    # Non-trivial norms and biases, so a mix-up of them would show in the logits.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return model


def save_hf_llama(model, directory: str, **kwargs) -> str:
    os.makedirs(directory, exist_ok=True)
    model.save_pretrained(directory, **kwargs)
    return directory


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.float().numpy()
