"""Tiny random Hugging Face LLaMA models built locally for parity tests (no downloads)."""

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


def make_hf_llama(variant: str = "gqa", seed: int = 0, **overrides):
    """A random LlamaForCausalLM (fp32, eval mode) with a tiny config."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    kwargs = dict(vocab_size=211, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  max_position_embeddings=128, rms_norm_eps=1e-5, tie_word_embeddings=False,
                  attn_implementation="eager")
    kwargs.update(HF_VARIANTS[variant])
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**kwargs)).eval()
    # Non-trivial norms, so a mix-up of norm weights would show in the logits.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    return model


def save_hf_llama(model, directory: str, **kwargs) -> str:
    os.makedirs(directory, exist_ok=True)
    model.save_pretrained(directory, **kwargs)
    return directory


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.float().numpy()
