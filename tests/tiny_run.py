"""Running configs/tiny.py with overrides, in-process or as the CLI: shared by the training and LoRA tests."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(REPO, "configs", "tiny.py")


def tiny_config(settings: dict[str, Any]):
    """configs/tiny.py with `settings` applied (dotted keys address nested fields)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny_cfg", TINY_CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    for key, value in settings.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def train_cli_args(workdir: str, settings: dict[str, Any]) -> list[str]:
    """`python -m vicuna_jax.train` on configs/tiny.py with `settings` as `--config.key=value` overrides."""
    args = [sys.executable, "-m", "vicuna_jax.train", f"--config={TINY_CONFIG}", f"--workdir={workdir}"]
    return args + [f"--config.{k}={v}" for k, v in settings.items()]


def cpu_env(devices: int = 1, **extra: str) -> dict[str, str]:
    e = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    e.update(extra)
    return e


def logged_losses(workdir: str) -> dict[int, float]:
    """Step -> training loss, from the run's metrics.jsonl (the last row of a step; a line cut short by a
    kill is skipped)."""
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "loss" in row:
                out[row["step"]] = row["loss"]
    return out
