"""Training: `python -m vicuna_jax.train --config=configs/<name>.py --workdir=DIR [--config.key=value ...]`.

    config.py         the ConfigDict that configs/*.py start from; validation into a frozen TrainConfig
    setup.py          `build`: shardings, optimizer, jitted train/eval steps (the one place they are made)
    step.py           TrainState, the train step (gradient accumulation, NaN safety) and the eval step
    loss.py           the loss, re-exported from `vicuna_jax.model.loss` (token-weighted masked
                      cross-entropy over the global batch; LoRA uses it too, so it lives below both)
    optimizer.py      AdamW + warmup/cosine schedule + clipping
    data.py           tokenizer choice, data preparation into the workdir, loaders
    checkpointing.py  orbax checkpoints of the run (exact resume; sealed, damaged ones moved aside)
    settings.py       the settings a workdir's run started with (train_config.json), compared on start
    workdir.py        the workdir: created, checked, locked; no writes through planted links
    metrics.py        metrics.jsonl / TensorBoard, FLOPs per token, MFU
    loop.py           `train()`: the run, its loop and periodic actions
    planner.py        `python -m vicuna_jax.train.planner`: per-device memory of a config before renting

`train` and `TrainingError` are imported lazily, so `python -m vicuna_jax.train.planner` can set the
simulated device count before JAX starts.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TrainingError", "train"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from vicuna_jax.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'vicuna_jax.train' has no attribute {name!r}")
