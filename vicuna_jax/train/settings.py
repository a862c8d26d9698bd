"""The settings a workdir's run was started with, recorded once and compared on every start.

`workdir/train_config.json` holds the config the run started with (as given, every key). It is written when
a run starts from scratch (the workdir holds no checkpoint) and left alone while the run resumes. A start in
a workdir that holds a run compares its settings with the record before anything is prepared, restored or
moved; a difference in a setting that changes the model, the data order or the optimizer state is one error
line listing the keys (old -> new) and the ways out. The settings in `MAY_CHANGE_ON_RESUME` may differ.
"""

from __future__ import annotations

import json
import os
from typing import Any

from vicuna_jax.checkpoint import latest_step_dir
from vicuna_jax.cli import UserError
from vicuna_jax.fileio import atomic_write_json
from vicuna_jax.train.checkpointing import DAMAGED_DIR
from vicuna_jax.train.config import BUNDLED_DATA, TrainConfig, base_config

SETTINGS_FILE = "train_config.json"

# None of these changes the model, the data order or the optimizer state's structure: how long to train (the
# learning-rate schedule follows the new length), how often to log, evaluate and save, what to export, how
# the same computation is laid out or run, and the learning-rate schedule's scalars.
MAY_CHANGE_ON_RESUME = (
    "total_steps", "num_epochs", "checkpoint_every", "keep_checkpoints", "log_every", "eval_every",
    "eval_batches", "export_hf_at_end", "export_dtype", "distributed", "peak_flops_per_device",
    "mesh.data", "mesh.fsdp", "mesh.tensor", "grad_accum_steps", "dtype", "remat_policy", "attention",
    "loss_chunk_size", "optimizer.learning_rate", "optimizer.warmup_ratio", "optimizer.final_lr_ratio",
    "optimizer.weight_decay",
)
# Compared by their own records, by content rather than by name: the chat format (`chat_format.json`:
# template text and tokenizer fingerprint) and LoRA's settings and base (each LoRA checkpoint's record).
_OWN_RECORD = ("data.template", "tokenizer")
_PATHS = ("data.path", "init_from_hf", "init_from")


class SettingsChangedError(UserError):
    """The run's settings differ from the ones the workdir's run was started with."""


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def holds_run(workdir: str) -> bool:
    """Whether `workdir` holds a run to resume: a complete checkpoint, or checkpoints moved aside as
    damaged (a run whose every checkpoint was damaged must not silently start again from step 0)."""
    damaged = os.path.join(workdir, DAMAGED_DIR)
    return (latest_step_dir(os.path.join(workdir, "checkpoints")) is not None
            or (os.path.isdir(damaged) and bool(os.listdir(damaged))))


def check_and_record(cfg: TrainConfig, workdir: str, write: bool = True) -> None:
    """Refuses `cfg` if the workdir holds a run started with settings that may not change; records `cfg`
    when the run starts from scratch (`write`: process 0)."""
    if not cfg.source:
        return
    path = os.path.join(workdir, SETTINGS_FILE)
    if holds_run(workdir) and os.path.lexists(path):
        try:
            with open(path, encoding="utf-8") as f:
                recorded = json.load(f)
            if not isinstance(recorded, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            raise SettingsChangedError(f"--workdir: {path} is unreadable ({e}); it records the settings of "
                                       "the run in this workdir: restore it, or use a new workdir") from None
        changed = differences(recorded, cfg.source)
        if changed:
            raise SettingsChangedError(_message(workdir, changed))
        return
    if write:
        atomic_write_json(path, cfg.source, indent=2, default=str)


def differences(recorded: dict[str, Any], given: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, recorded, given) of every setting that differs and may not change on resume."""
    defaults = flatten(base_config().to_dict())
    old = {**defaults, **flatten(recorded)}  # a key added since the record was written: its default
    new = flatten(json.loads(json.dumps(given, default=str)))
    lora = any(_lora_on(flatten_) for flatten_ in (old, new))
    out = []
    for key in sorted(new):
        if (key in MAY_CHANGE_ON_RESUME or key in _OWN_RECORD or key.startswith("lora.")
                or (lora and key == "init_from_hf")):
            continue  # LoRA compares its base by fingerprint (`lora.base.check_workdir`)
        a, b = old.get(key), new[key]
        if key in _PATHS:
            a, b = _path(a), _path(b)
        numbers = isinstance(a, (int, float)) and isinstance(b, (int, float))
        if a != b and not (numbers and float(a) == float(b)):
            out.append((key, old.get(key), new[key]))
    return out


def _lora_on(flat: dict[str, Any]) -> bool:
    return bool(flat.get("lora.rank")) or bool(flat.get("lora.init_adapter"))


def _path(value: Any) -> Any:
    if isinstance(value, str) and value and value != BUNDLED_DATA:
        return os.path.normpath(os.path.abspath(value))
    return value


def _message(workdir: str, changed: list[tuple[str, Any, Any]]) -> str:
    listed = ", ".join(f"config.{key}: {old!r} -> {new!r}" if isinstance(old, str) or isinstance(new, str)
                       else f"config.{key}: {old} -> {new}" for key, old, new in changed)
    return (f"--workdir: {workdir} holds a run started with other settings ({listed}); nothing was changed. "
            f"Rerun with the settings recorded in {os.path.join(workdir, SETTINGS_FILE)} to resume it, or "
            f"start a new run in a new workdir (add --config.init_from={workdir} to start from its latest "
            "checkpoint's weights)")
