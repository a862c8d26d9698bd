"""orbax checkpoints: model-only checkpoints (convert, generate) and the training manager's layout.

Every checkpoint directory this project writes is an orbax Composite with at least two items:
`params` (the model's parameters as a nested dict, stacked layers) and `model_config` (LlamaConfig as JSON).
Training checkpoints (`workdir/checkpoints/<step>/`, written by `vicuna_jax.train.checkpointing`) add
`opt_state`, `train_state` and `data_state`. So any of these
directories can be given to `--model` / `--from_checkpoint`:
  - a model checkpoint written by `convert --to_checkpoint`,
  - one training step `workdir/checkpoints/<step>`,
  - a training workdir or its `checkpoints/` folder (the latest complete step is used).
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp

from vicuna_jax.cli import UserError
from vicuna_jax.data import chat_format
from vicuna_jax.data.tokenizer import TOKENIZER_DIR, copy_tokenizer, find_tokenizer_in
from vicuna_jax.fileio import replace_dir, resolve_output_dir
from vicuna_jax.model.config import LlamaConfig

PARAMS_ITEM = "params"
CONFIG_ITEM = "model_config"
OPT_ITEM = "opt_state"
TRAIN_ITEM = "train_state"  # the step counter, as an array
DATA_ITEM = "data_state"  # the loader's JSON position
LORA_ITEM = "lora"  # LoRA runs: adapter settings and the base model's record (then `params` = the adapters)
CHAT_FORMAT_ITEM = "chat_format"  # the chat format record (`data.chat_format`) the weights were made in
TOKENIZER_FILE = "tokenizer.model"


class CheckpointError(UserError):
    """A checkpoint directory is missing, incomplete or does not match the model."""


def item_handlers() -> dict[str, ocp.CheckpointHandler]:
    return {
        PARAMS_ITEM: ocp.StandardCheckpointHandler(),
        OPT_ITEM: ocp.StandardCheckpointHandler(),
        TRAIN_ITEM: ocp.StandardCheckpointHandler(),
        DATA_ITEM: ocp.JsonCheckpointHandler(),
        CONFIG_ITEM: ocp.JsonCheckpointHandler(),
        LORA_ITEM: ocp.JsonCheckpointHandler(),
        CHAT_FORMAT_ITEM: ocp.JsonCheckpointHandler(),
    }


def _checkpointer() -> ocp.Checkpointer:
    """A synchronous Composite checkpointer that knows every item we write (so reading a model out of a
    training checkpoint restores just the params and config, quietly)."""
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler(**item_handlers()))


def _is_complete_step_dir(path: str) -> bool:
    # orbax writes commit_success.txt (or renames a tmp dir) only once a save has fully finished.
    return (os.path.isdir(os.path.join(path, PARAMS_ITEM))
            and os.path.isdir(os.path.join(path, CONFIG_ITEM))
            and ".orbax-checkpoint-tmp" not in os.path.basename(path))


def latest_step_dir(root: str) -> str | None:
    """The highest-numbered complete step directory under `root`, or None."""
    if not os.path.isdir(root):
        return None
    steps = [int(n) for n in os.listdir(root) if re.fullmatch(r"\d+", n)]
    for step in sorted(steps, reverse=True):
        candidate = os.path.join(root, str(step))
        if _is_complete_step_dir(candidate):
            return candidate
    return None


def resolve_checkpoint_dir(path: str) -> str:
    """Finds the model checkpoint directory meant by `path` (see the module docstring)."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    if _is_complete_step_dir(path):
        return path
    for root in (os.path.join(path, "checkpoints"), path):
        step_dir = latest_step_dir(root)
        if step_dir is not None:
            return step_dir
    raise CheckpointError(
        f"{path} holds no complete vicuna_jax checkpoint (expected '{PARAMS_ITEM}/' and '{CONFIG_ITEM}/' "
        "items, numbered step directories, or a workdir with checkpoints/)")


def find_tokenizer(checkpoint_dir: str) -> str | None:
    """A tokenizer (tokenizer.model, or an HF tokenizer in `tokenizer/`) stored with the checkpoint, next to
    it, or in the training workdir above it."""
    here = os.path.abspath(checkpoint_dir)
    for _ in range(4):
        stored = (os.path.join(here, TOKENIZER_DIR), os.path.join(here, TOKENIZER_FILE))
        if os.path.isdir(stored[0]) or os.path.isfile(stored[1]):
            return find_tokenizer_in(here)
        here = os.path.dirname(here)
    return None


def read_chat_format(checkpoint_dir: str) -> tuple[dict[str, Any] | None, str]:
    """(the chat format record the checkpoint was made in, where it was read) — the checkpoint's own
    `chat_format` item, else a `chat_format.json` next to it or in the training workdir above it; (None, "")
    for a checkpoint from before formats were recorded."""
    step_dir = resolve_checkpoint_dir(checkpoint_dir)
    if os.path.isdir(os.path.join(step_dir, CHAT_FORMAT_ITEM)):
        try:
            args = ocp.args.Composite(**{CHAT_FORMAT_ITEM: ocp.args.JsonRestore()})
            record = _checkpointer().restore(step_dir, args)[CHAT_FORMAT_ITEM]
        except Exception as e:  # noqa: BLE001 - orbax raises assorted errors for unreadable items
            raise CheckpointError(f"{step_dir}/{CHAT_FORMAT_ITEM}: unreadable chat format record ({e})"
                                  ) from None
        return record, f"{step_dir}/{CHAT_FORMAT_ITEM}"
    here = step_dir
    for _ in range(4):
        record = chat_format.read_record(here)
        if record is not None:
            return record, os.path.join(here, chat_format.FORMAT_FILE)
        here = os.path.dirname(here)
    return None, ""


def save_model(directory: str, params: Any, cfg: LlamaConfig, *, tokenizer_path: str | None = None,
               fmt: chat_format.ChatFormat | None = None, overwrite: bool = False) -> str:
    """Writes a model-only checkpoint (params + config [+ chat format] [+ tokenizer]); atomic: tmp dir, then
    rename. `fmt`'s tokenizer is stored when `tokenizer_path` is not given."""
    directory = resolve_output_dir(directory)
    if os.path.exists(directory) and not overwrite:
        raise CheckpointError(f"{directory} already exists (pass overwrite=True / --overwrite to replace it)")
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = directory + ".tmp-writing"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    checkpointer = _checkpointer()
    items = {PARAMS_ITEM: ocp.args.StandardSave(params), CONFIG_ITEM: ocp.args.JsonSave(cfg.to_dict())}
    if fmt is not None:
        items[CHAT_FORMAT_ITEM] = ocp.args.JsonSave(fmt.record())
    checkpointer.save(tmp, ocp.args.Composite(**items))
    tokenizer_path = tokenizer_path or (fmt.tokenizer_path if fmt is not None else None)
    if tokenizer_path:
        copy_tokenizer(tokenizer_path, tmp, fmt.chat_template if fmt is not None else None)
    replace_dir(tmp, directory)
    return directory


def load_model_config(checkpoint_dir: str) -> LlamaConfig:
    step_dir = resolve_checkpoint_dir(checkpoint_dir)
    checkpointer = _checkpointer()
    restored = checkpointer.restore(step_dir, ocp.args.Composite(**{CONFIG_ITEM: ocp.args.JsonRestore()}))
    return LlamaConfig.from_dict(restored[CONFIG_ITEM])


def load_params(checkpoint_dir: str, abstract_params: Any = None) -> tuple[LlamaConfig, Any]:
    """Restores (config, params). `abstract_params` (ShapeDtypeStructs, optionally with shardings) sets
    the dtype and placement of the result; without it arrays come back as stored, on the default device."""
    step_dir = resolve_checkpoint_dir(checkpoint_dir)
    if os.path.isdir(os.path.join(step_dir, LORA_ITEM)):
        raise CheckpointError(f"{step_dir} holds LoRA adapters, not a whole model: use it with its base "
                              f"(--model=BASE --adapter={checkpoint_dir}) or export it with "
                              "`python -m vicuna_jax.lora`")
    cfg = load_model_config(step_dir)
    checkpointer = _checkpointer()
    if abstract_params is None:
        meta = checkpointer.metadata(step_dir).item_metadata[PARAMS_ITEM]
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        abstract_params = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device), meta.tree)
    else:
        check_shapes(step_dir, checkpointer, abstract_params)
    restored = checkpointer.restore(
        step_dir, ocp.args.Composite(**{PARAMS_ITEM: ocp.args.StandardRestore(abstract_params)}))
    return cfg, restored[PARAMS_ITEM]


def check_shapes(step_dir: str, checkpointer: ocp.Checkpointer, abstract_params: Any) -> None:
    """A CheckpointError naming the first parameter whose name or shape differs from `abstract_params`."""
    stored = checkpointer.metadata(step_dir).item_metadata[PARAMS_ITEM].tree
    flat_stored = dict(_flatten(stored))
    flat_wanted = dict(_flatten(abstract_params))
    missing = sorted(set(flat_wanted) - set(flat_stored))
    unexpected = sorted(set(flat_stored) - set(flat_wanted))
    if missing or unexpected:
        raise CheckpointError(f"{step_dir}: parameter names differ from the model: "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    for key, want in flat_wanted.items():
        if tuple(flat_stored[key].shape) != tuple(want.shape):
            raise CheckpointError(f"{step_dir}: parameter {key} has shape {tuple(flat_stored[key].shape)}, "
                                  f"the model expects {tuple(want.shape)}")


def _flatten(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(tree, dict):
        out = []
        for k, v in tree.items():
            out.extend(_flatten(v, f"{prefix}{k}."))
        return out
    return [(prefix[:-1], tree)]
