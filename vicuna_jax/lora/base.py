"""The base model of a LoRA run: where it comes from, its fingerprint, and the record every LoRA checkpoint
and exported adapter keeps of it, so adapters are never resumed or served on a different base.

The fingerprint is a SHA-256 over every base tensor cast to bfloat16, in our stacked layout: the same model
gives the same fingerprint whether it was read from an HF directory (any dtype) or a vicuna_jax checkpoint,
and any changed weight gives another. Quantization is not part of it (the record keeps that separately).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any

import ml_dtypes
import numpy as np
from absl import logging

from vicuna_jax.cli import UserError
from vicuna_jax.data.chat_format import ChatFormat
from vicuna_jax.lora.config import LoRAConfig

BASE_DIR = "base"  # workdir/base: the base of a LoRA run started from random weights, as an HF directory
RECORD_FORMAT = 1
# Record keys that must match for adapters to apply to a base the same way.
_SETTINGS = ("rank", "alpha", "use_rslora", "target_modules", "base_quantization", "base_dtype",
             "quant_block_size")


class BaseMismatchError(UserError):
    """Adapters were trained on another base model (or with other LoRA settings) than the one given."""


def fingerprint(params: dict[str, Any]) -> str:
    """SHA-256 of the weights (model layout: nested dict, stacked layers) cast to bfloat16."""
    h = hashlib.sha256()
    for path, leaf in _flat(params):
        shape = tuple(np.shape(leaf))
        h.update(f"{'/'.join(path)}{shape}".encode())
        pieces = (leaf[i] for i in range(shape[0])) if path[0] == "layers" else (leaf,)
        for piece in pieces:  # one layer at a time: bounded host memory for device arrays and casts
            arr = np.asarray(piece)
            if arr.dtype != ml_dtypes.bfloat16:
                arr = arr.astype(ml_dtypes.bfloat16)
            h.update(np.ascontiguousarray(arr).view(np.uint16).data)
    return h.hexdigest()


@dataclasses.dataclass
class BaseModel:
    """A LoRA run's base weights on the host (model layout), the directory they come from, and their
    fingerprint."""

    params: dict[str, Any]
    source: str
    fingerprint: str

    def record(self, lora: LoRAConfig) -> dict[str, Any]:
        """What a checkpoint or exported adapter keeps about its base and LoRA settings."""
        return {"format": RECORD_FORMAT, **settings(lora), "dropout": lora.dropout,
                "base_model": self.source, "base_fingerprint": self.fingerprint}


def settings(lora: LoRAConfig) -> dict[str, Any]:
    return {"rank": lora.rank, "alpha": lora.alpha, "use_rslora": lora.use_rslora,
            "target_modules": list(lora.target_modules), "base_quantization": lora.base_quantization,
            "base_dtype": lora.base_dtype, "quant_block_size": lora.quant_block_size}


def for_run(cfg: Any, workdir: str, fmt: ChatFormat | None) -> BaseModel:
    """The base of LoRA training config `cfg` (a TrainConfig): `init_from_hf`, else random weights from
    `cfg.seed` in the base dtype, written once to `workdir/base` (an HF directory, the adapter's base)."""
    from vicuna_jax.convert import load_hf, save_hf

    if cfg.init_from_hf:
        source = os.path.abspath(cfg.init_from_hf)
        _, params = load_hf(source)
    else:
        source = os.path.join(os.path.abspath(workdir), BASE_DIR)
        if os.path.isfile(os.path.join(source, "config.json")):
            _, params = load_hf(source)
        else:
            params = random_base(cfg)
            import jax

            if jax.process_index() == 0:
                save_hf(params, cfg.model, source, dtype=cfg.lora.base_dtype, chat_format=fmt,
                        overwrite=True)
            logging.info("LoRA base: random weights (seed %d) saved to %s", cfg.seed, source)
    base = BaseModel(params=params, source=source, fingerprint=fingerprint(params))
    logging.info("LoRA base %s, fingerprint %s", source, base.fingerprint[:16])
    return base


def random_base(cfg: Any) -> dict[str, Any]:
    """Random base weights from `cfg.seed` (HF's init), rounded to the base dtype, on the host."""
    import jax
    import jax.numpy as jnp

    from vicuna_jax.model.llama import build_model, model_params

    dtype = jnp.dtype(cfg.lora.base_dtype)
    options = {**cfg.run.model_options(), "param_dtype": jnp.float32}
    params = jax.jit(lambda: jax.tree.map(lambda a: a.astype(dtype),
                                          model_params(build_model(cfg.model, seed=cfg.seed, **options))))()
    return jax.tree.map(np.asarray, params)


def check_record(record: dict[str, Any], lora: LoRAConfig | None, base: BaseModel | None, where: str) -> None:
    """Refuses adapters recorded in `where` for a base or LoRA settings other than `base` and `lora`.
    `lora` None checks only the base."""
    if lora is not None:
        mine = settings(lora)
        quantized = "none" not in (record.get("base_quantization"), lora.base_quantization)
        for key in _SETTINGS:
            if key == "quant_block_size" and not quantized:
                continue
            if key in record and _norm(record[key]) != _norm(mine[key]):
                raise BaseMismatchError(
                    f"config.lora.{key}: {where} was trained with {key}={record[key]!r}, the config says "
                    f"{mine[key]!r}; use the same LoRA settings to resume, or a new workdir")
    if base is not None and record.get("base_fingerprint") and record["base_fingerprint"] != base.fingerprint:
        raise BaseMismatchError(
            f"{where} holds adapters for another base model: trained on {record.get('base_model')!r} "
            f"(fingerprint {record['base_fingerprint'][:16]}), but the base given is {base.source!r} "
            f"(fingerprint {base.fingerprint[:16]}); pass the base the adapters were trained on")


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def check_workdir(checkpoint_root: str, lora: LoRAConfig, base: BaseModel | None) -> None:
    """Before restoring anything: the newest checkpoint in `checkpoint_root` must be of the same kind as
    this run (LoRA or full fine-tuning) and, for LoRA, of the same settings and base. (A mismatch would
    otherwise fail to restore, and restore treats that as a damaged checkpoint.)"""
    from vicuna_jax.checkpoint import LORA_ITEM, latest_step_dir

    step_dir = latest_step_dir(checkpoint_root)
    if step_dir is None:
        return
    record = read_record(step_dir)
    if record is None and lora.enabled:
        raise UserError(f"config.lora.rank: {step_dir} is a full fine-tuning checkpoint; a LoRA run cannot "
                        "resume it (use a new workdir, or set config.lora.rank=0)")
    if record is not None and not lora.enabled:
        raise UserError(f"config.lora.rank: {step_dir} holds LoRA adapters ({LORA_ITEM}: rank "
                        f"{record.get('rank')}); resume it with the same config.lora settings, or use a new "
                        "workdir for full fine-tuning")
    if record is not None:
        check_record(record, lora, base, step_dir)


def read_record(step_dir: str) -> dict[str, Any] | None:
    """The LoRA record of a checkpoint step directory, or None for a full-model checkpoint."""
    import orbax.checkpoint as ocp

    from vicuna_jax.checkpoint import LORA_ITEM, CheckpointError, _checkpointer

    if not os.path.isdir(os.path.join(step_dir, LORA_ITEM)):
        return None
    try:
        args = ocp.args.Composite(**{LORA_ITEM: ocp.args.JsonRestore()})
        restored = _checkpointer().restore(step_dir, args)
    except Exception as e:  # noqa: BLE001 - orbax raises assorted errors for unreadable items
        raise CheckpointError(f"{step_dir}/{LORA_ITEM}: unreadable LoRA record ({e})") from None
    record = restored[LORA_ITEM]
    if not isinstance(record, dict) or "rank" not in record:
        raise CheckpointError(f"{step_dir}/{LORA_ITEM}: not a LoRA record")
    return record


def _flat(tree: Any, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    if isinstance(tree, dict):
        return [item for k in sorted(tree) for item in _flat(tree[k], (*prefix, k))]
    return [(prefix, tree)]
