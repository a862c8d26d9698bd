"""Loading a model for inference: from a Hugging Face directory or any vicuna_jax checkpoint directory.

generate, chat, serve and eval/answers all load their model here; `convert` holds the HF format itself.
"""

from __future__ import annotations

import json
import os
from typing import Any


def is_hf_dir(path: str) -> bool:
    """An HF model directory: a config.json that describes a model (not, say, a training config)."""
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return False
    try:
        with open(config) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError):
        return True  # let load_hf report the broken file
    return isinstance(data, dict) and ("model_type" in data or "architectures" in data)


def load_model(path: str, *, tokenizer: str | None = None, adapter: str | None = None, **options: Any):
    """Loads a model from an HF directory or any vicuna_jax checkpoint directory.

    `adapter`: a LoRA adapter (PEFT directory or vicuna_jax LoRA checkpoint) merged into the weights; a LoRA
    training workdir given as `path` loads onto its recorded base (see `vicuna_jax.lora.inference`).
    Returns (model, config, tokenizer_path or None). `options` go to the model (dtype, scan_layers, ...).
    """
    from vicuna_jax import checkpoint
    from vicuna_jax.convert import load_hf
    from vicuna_jax.lora import inference as lora_inference
    from vicuna_jax.model.llama import model_from_params

    path, adapter = lora_inference.resolve(os.path.abspath(os.fspath(path)), adapter)
    if is_hf_dir(path):
        from vicuna_jax.data.tokenizer import find_tokenizer_in

        cfg, params = load_hf(path)
        found = find_tokenizer_in(path)
    else:
        cfg, params = checkpoint.load_params(path)
        found = checkpoint.find_tokenizer(checkpoint.resolve_checkpoint_dir(path))
    if adapter is not None:
        params, adapter_tokenizer = lora_inference.apply_adapter(cfg, params, adapter, path)
        found = found or adapter_tokenizer
    model = model_from_params(cfg, params, **options)
    return model, cfg, tokenizer or found
