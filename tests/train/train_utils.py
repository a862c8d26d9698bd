"""Shared pieces of the training tests: a very small config on the bundled data, and run helpers."""

from __future__ import annotations

import subprocess

from tiny_run import REPO, tiny_config, train_cli_args
from tiny_run import cpu_env as env
from tiny_run import logged_losses as losses

__all__ = ["REPO", "SMALL", "cli_args", "config", "env", "losses", "run_cli"]

# ~0.6M parameters, 128-token rows: a step takes milliseconds, compiling dominates.
SMALL = {
    "model": "tiny",
    "model_overrides.hidden_size": 64,
    "model_overrides.intermediate_size": 128,
    "model_overrides.num_layers": 2,
    "model_overrides.num_heads": 4,
    "model_overrides.num_kv_heads": 2,
    "seq_len": 128,
    "batch_size": 8,
    "total_steps": 6,
    "checkpoint_every": 3,
    "eval_every": 0,
    "log_every": 1,
    "export_hf_at_end": False,
    "optimizer.learning_rate": 3e-3,
    "optimizer.warmup_ratio": 0.0,
    "dtype": "float32",
    "remat_policy": "none",
    "loss_chunk_size": 0,
}


def config(prepared: str, **overrides):
    """configs/tiny.py with SMALL and `overrides` applied (keys with dots address nested fields)."""
    return tiny_config({**SMALL, "data.path": prepared, **overrides})


def cli_args(prepared: str, workdir: str, **overrides) -> list[str]:
    return train_cli_args(workdir, {**SMALL, "data.path": prepared, **overrides})


def run_cli(prepared: str, workdir: str, devices: int = 1, timeout: int = 300, **overrides):
    return subprocess.run(cli_args(prepared, workdir, **overrides), capture_output=True, text=True,
                          env=env(devices), timeout=timeout, check=False)
