"""Serving and evaluating LoRA adapters: `--model=BASE --adapter=DIR` for generate, chat, answers and serve.

`DIR` is a PEFT adapter directory (ours or any PEFT LoRA on the attention/MLP projections) or a vicuna_jax
LoRA training workdir / checkpoint. The adapter is merged into the base weights when the model loads
(W + scale A B, in fp32), so decoding runs at the base model's speed and the decoding code does not know
LoRA exists. A LoRA training workdir given as `--model` alone loads onto the base its checkpoint records.
Adapters that record their base's fingerprint (all of ours) refuse any other base.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from vicuna_jax.checkpoint import read_chat_format
from vicuna_jax.cli import UserError
from vicuna_jax.data import chat_format
from vicuna_jax.data.tokenizer import find_tokenizer_in
from vicuna_jax.lora.config import TARGETS, LoRAConfig, projection_shape
from vicuna_jax.model.config import LlamaConfig


def lora_step_dir(path: str) -> str | None:
    """The checkpoint step directory `path` means, if it holds LoRA adapters; None otherwise."""
    from vicuna_jax.checkpoint import LORA_ITEM, CheckpointError, resolve_checkpoint_dir

    if os.path.isfile(os.path.join(path, "config.json")) or not os.path.isdir(path):
        return None
    try:
        step_dir = resolve_checkpoint_dir(path)
    except CheckpointError:
        return None
    return step_dir if os.path.isdir(os.path.join(step_dir, LORA_ITEM)) else None


def resolve(model_path: str, adapter: str | None) -> tuple[str, str | None]:
    """(base, adapter) meant by `--model` and `--adapter`: a LoRA checkpoint as `--model` brings its base."""
    from vicuna_jax.lora.base import read_record

    step_dir = lora_step_dir(model_path)
    if step_dir is None:
        return model_path, adapter
    if adapter is not None:
        raise UserError(f"--model: {model_path} holds LoRA adapters, not a base model; pass the base as "
                        f"--model and the adapters as --adapter")
    base = read_record(step_dir).get("base_model") or ""
    if not os.path.isdir(base):
        raise UserError(f"--model: {model_path} holds LoRA adapters whose base {base!r} is not there; pass "
                        f"--model=BASE --adapter={model_path}")
    return base, model_path


def read_adapter(path: str, cfg: LlamaConfig) -> tuple[LoRAConfig, dict[str, Any], dict[str, Any] | None,
                                                        str | None]:
    """(settings, stacked adapters as numpy, record or None, the tokenizer stored with it or None)."""
    from vicuna_jax.lora.peft import ADAPTER_CONFIG, load_peft

    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise UserError(f"--adapter: no such directory: {path}")
    if os.path.isfile(os.path.join(path, ADAPTER_CONFIG)):
        lora, adapters, record = load_peft(path, cfg)
        return lora, adapters, record, find_tokenizer_in(path)
    step_dir = lora_step_dir(path)
    if step_dir is None:
        raise UserError(f"--adapter: {path} is neither a PEFT adapter directory ({ADAPTER_CONFIG}) nor a "
                        "vicuna_jax LoRA checkpoint or workdir")
    return _read_checkpoint(step_dir, cfg)


def _read_checkpoint(step_dir: str, cfg: LlamaConfig):
    import jax
    import orbax.checkpoint as ocp

    from vicuna_jax.checkpoint import PARAMS_ITEM, _checkpointer, find_tokenizer
    from vicuna_jax.lora.base import read_record

    record = read_record(step_dir)
    lora = LoRAConfig(rank=record["rank"], alpha=record["alpha"], use_rslora=record["use_rslora"],
                      target_modules=tuple(record["target_modules"]))
    checkpointer = _checkpointer()
    meta = checkpointer.metadata(step_dir).item_metadata[PARAMS_ITEM]
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device),
                            meta.tree)
    args = ocp.args.Composite(**{PARAMS_ITEM: ocp.args.StandardRestore(abstract)})
    restored = checkpointer.restore(step_dir, args)
    adapters = jax.tree.map(np.asarray, restored[PARAMS_ITEM])
    check_shapes(adapters, lora, cfg, step_dir)
    return lora, adapters, record, find_tokenizer(step_dir)


def check_shapes(adapters: dict[str, Any], lora: LoRAConfig, cfg: LlamaConfig, where: str) -> None:
    """Refuses adapters of the wrong shapes, holding NaN/Inf, or whose update overflows (`check_update`)."""
    from vicuna_jax.convert import nonfinite_message
    from vicuna_jax.lora.peft import check_update

    for module in lora.target_modules:
        group, _ = TARGETS[module]
        try:
            node = adapters["layers"][group][module]
        except KeyError:
            raise UserError(f"{where}: no adapter for {module}") from None
        n_in, n_out = projection_shape(cfg, module)
        for name, want in (("lora_a", (cfg.num_layers, n_in, lora.rank)),
                           ("lora_b", (cfg.num_layers, lora.rank, n_out))):
            if tuple(np.shape(node[name])) != want:
                raise UserError(f"{where}: {module}/{name} has shape {tuple(np.shape(node[name]))}, the base "
                                f"model implies {want}")
            if damaged := nonfinite_message(node[name], f"{module}/{name}"):
                raise UserError(f"{where}: {damaged}; the checkpoint is damaged")
        check_update(node["lora_a"], node["lora_b"], lora, module, where)


def read_checked_adapter(cfg: LlamaConfig, params: dict[str, Any], adapter: str, base_path: str
                         ) -> tuple[LoRAConfig, dict[str, Any], dict[str, Any] | None, str | None]:
    """`read_adapter`, refusing an adapter whose recorded base fingerprint is not that of `params`."""
    from vicuna_jax.lora.base import BaseModel, check_record, fingerprint

    lora, adapters, record, tokenizer = read_adapter(adapter, cfg)
    if record is not None and record.get("base_fingerprint"):
        base = BaseModel(params=params, source=base_path, fingerprint=fingerprint(params))
        check_record(record, None, base, adapter)
    return lora, adapters, record, tokenizer


def adapter_chat_format(adapter: str, base: tuple[dict[str, Any] | None, str]
                        ) -> tuple[dict[str, Any] | None, str]:
    """(the chat format record an adapter was trained in, where): a PEFT directory's chat_format.json or a
    LoRA checkpoint's record; the `base` model's (record, where) when the adapter has none."""
    path = os.path.abspath(os.fspath(adapter))
    step_dir = lora_step_dir(path)
    if step_dir is not None:
        record, where = read_chat_format(step_dir)
    else:
        record, where = chat_format.read_record(path), os.path.join(path, chat_format.FORMAT_FILE)
    return (record, where) if record is not None else base


def recorded_base(adapter: str) -> str | None:
    """The base directory an adapter names (our record, else PEFT's base_model_name_or_path), if it exists
    here."""
    import json

    from vicuna_jax.lora.base import read_record
    from vicuna_jax.lora.peft import ADAPTER_CONFIG, ADAPTER_WEIGHTS, RECORD_KEY

    step_dir = lora_step_dir(os.path.abspath(adapter))
    candidates = []
    if step_dir is not None:
        candidates.append(read_record(step_dir).get("base_model"))
    else:
        weights = os.path.join(adapter, ADAPTER_WEIGHTS)
        if os.path.isfile(weights):
            from safetensors import safe_open

            with safe_open(weights, framework="numpy") as f:
                meta = f.metadata() or {}
            if RECORD_KEY in meta:
                candidates.append(json.loads(meta[RECORD_KEY]).get("base_model"))
        try:
            with open(os.path.join(adapter, ADAPTER_CONFIG)) as f:
                candidates.append(json.load(f).get("base_model_name_or_path"))
        except (OSError, ValueError):
            pass
    return next((c for c in candidates if isinstance(c, str) and os.path.isdir(c)), None)


def apply_adapter(cfg: LlamaConfig, params: dict[str, Any], adapter: str,
                  base_path: str) -> tuple[dict[str, Any], str | None]:
    """The base `params` (from `base_path`) with the adapter in `adapter` merged in (checked against the
    base's fingerprint when the adapter records one); and the tokenizer stored with the adapter, if any."""
    from absl import logging

    from vicuna_jax.lora.peft import merged_params

    lora, adapters, _, tokenizer = read_checked_adapter(cfg, params, adapter, base_path)
    logging.info("merged LoRA adapter %s (rank %d, alpha %g, %s)", adapter, lora.rank, lora.alpha,
                 ",".join(lora.target_modules))
    return merged_params(params, adapters, lora), tokenizer
