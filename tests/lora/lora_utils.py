"""Shared helpers of the LoRA tests (a uniquely named module: `conftest` is ambiguous across test folders)."""

from __future__ import annotations

import functools
import os

import numpy as np
from tiny_run import REPO, tiny_config, train_cli_args
from tiny_run import cpu_env as env
from tiny_run import logged_losses as losses

__all__ = ["REPO", "SMALL", "TINY", "batch", "cli_args", "env", "logits", "losses", "random_adapters",
           "random_params", "tiny_cfg", "train_config", "workdir_files"]

# Small enough that a step compiles in seconds; every size divides the quantization block of 16.
TINY = dict(vocab_size=211, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4, num_kv_heads=2,
            max_position_embeddings=128, rms_norm_eps=1e-5)


def tiny_cfg():
    from vicuna_jax.model.config import LlamaConfig

    return LlamaConfig(**TINY)


def random_params(seed: int = 0) -> dict:
    """Random base weights (HF init, with non-trivial norms) as nested numpy arrays (a fresh copy)."""
    import jax

    return jax.tree.map(np.copy, _random_params(seed))


@functools.cache
def _random_params(seed: int) -> dict:
    import jax

    from vicuna_jax.model.llama import build_model, model_params

    params = jax.tree.map(np.asarray, model_params(build_model(tiny_cfg(), seed=seed)))
    rng = np.random.RandomState(seed)
    for node in (params["layers"]["input_layernorm"], params["layers"]["post_attention_layernorm"],
                 params["norm"]):
        node["scale"] = (1 + 0.1 * rng.randn(*node["scale"].shape)).astype(np.float32)
    return params


def random_adapters(lora, seed: int = 1) -> dict:
    """Adapters with both factors nonzero (a trained adapter, not PEFT's B = 0 start)."""
    from vicuna_jax.lora.config import TARGETS, projection_shape

    cfg, rng = tiny_cfg(), np.random.RandomState(seed)
    out: dict = {"layers": {}}
    for module in lora.target_modules:
        n_in, n_out = projection_shape(cfg, module)
        out["layers"].setdefault(TARGETS[module][0], {})[module] = {
            "lora_a": (rng.randn(cfg.num_layers, n_in, lora.rank) / np.sqrt(n_in)).astype(np.float32),
            "lora_b": (0.1 * rng.randn(cfg.num_layers, lora.rank, n_out)).astype(np.float32)}
    return out


def logits(model, tokens) -> np.ndarray:
    """The model's logits, jitted (eager NNX runs op by op: seconds even for a tiny model)."""
    import jax.numpy as jnp
    from flax import nnx

    return np.asarray(nnx.jit(lambda m, t: m(t)[0])(model, jnp.asarray(tokens)))


def batch(rows: int = 8, length: int = 16, seed: int = 0, vocab: int = 211) -> dict:
    rng = np.random.RandomState(seed)
    out = {k: rng.randint(1, vocab, (rows, length)).astype(np.int32)
           for k in ("input_tokens", "target_tokens")}
    out["positions"] = np.tile(np.arange(length, dtype=np.int32), (rows, 1))
    out["segment_ids"] = np.ones((rows, length), np.int32)
    out["loss_mask"] = (rng.rand(rows, length) < 0.6).astype(np.float32)
    return out


def workdir_files(path: str) -> list[str]:
    return sorted(os.listdir(path))


# configs/tiny.py shrunk to ~0.6M parameters and 128-token rows (as tests/train does), with LoRA on.
SMALL = {
    "model_overrides.hidden_size": 64, "model_overrides.intermediate_size": 128,
    "model_overrides.num_layers": 2, "model_overrides.num_heads": 4, "model_overrides.num_kv_heads": 2,
    "seq_len": 128, "batch_size": 8, "total_steps": 4, "checkpoint_every": 2, "eval_every": 0, "log_every": 1,
    "export_hf_at_end": True, "export_dtype": "float32", "optimizer.learning_rate": 1e-2,
    "optimizer.warmup_ratio": 0.0, "dtype": "float32", "remat_policy": "none", "loss_chunk_size": 0,
    "lora.rank": 4, "lora.target_modules": "all", "lora.dropout": 0.0,
}


def train_config(prepared: str, **overrides):
    """configs/tiny.py with SMALL and `overrides` (dotted keys address nested fields)."""
    return tiny_config({**SMALL, "data.path": prepared, **overrides})


def cli_args(prepared: str, workdir: str, **overrides) -> list[str]:
    return train_cli_args(workdir, {**SMALL, "data.path": prepared, **overrides})
