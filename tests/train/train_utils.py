"""Shared pieces of the training tests: a very small config on the bundled data, and run helpers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny_cfg", os.path.join(REPO, "configs", "tiny.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    for key, value in {**SMALL, "data.path": prepared, **overrides}.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def cli_args(prepared: str, workdir: str, **overrides) -> list[str]:
    args = [sys.executable, "-m", "vicuna_jax.train", f"--config={os.path.join(REPO, 'configs', 'tiny.py')}",
            f"--workdir={workdir}"]
    for key, value in {**SMALL, "data.path": prepared, **overrides}.items():
        args.append(f"--config.{key}={value}")
    return args


def env(devices: int = 1, **extra: str) -> dict[str, str]:
    e = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    e.update(extra)
    return e


def run_cli(prepared: str, workdir: str, devices: int = 1, timeout: int = 300, **overrides):
    return subprocess.run(cli_args(prepared, workdir, **overrides), capture_output=True, text=True,
                          env=env(devices), timeout=timeout, check=False)


def losses(workdir: str) -> dict[int, float]:
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if "loss" in row:
                out[row["step"]] = row["loss"]
    return out
