"""The LoRA parts of a training run (`vicuna_jax.train.loop` calls these when `config.lora` is on): the base
model and its record, the first state (fresh or imported adapters), and the exports at the end.

A LoRA workdir holds, besides the usual `checkpoints/` (adapters + their AdamW state + a `lora` record of
the settings and base fingerprint, tens of MB for a 7B model), `adapter/` (the PEFT adapter directory),
`hf/` (the merged model, with `export_hf_at_end`) and, when the base was random, `base/` (that base).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from absl import logging

from vicuna_jax import parallel
from vicuna_jax.checkpoint import LORA_ITEM
from vicuna_jax.data.chat_format import ChatFormat
from vicuna_jax.lora import base as base_lib
from vicuna_jax.lora.base import BaseModel

ADAPTER_DIR = "adapter"  # workdir/adapter: the PEFT adapter written when training finishes


def prepare(cfg: Any, workdir: str, fmt: ChatFormat | None) -> BaseModel:
    """The run's base model (loaded, fingerprinted; saved to workdir/base when random)."""
    base = base_lib.for_run(cfg, workdir, fmt)
    lora = cfg.lora
    trainable = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(_abstract_adapter_shapes(cfg)))
    logging.info("LoRA: rank %d, alpha %g (scale %.3g), dropout %g on %s; %.2fM trainable parameters (%.3f%% "
                 "of %.1fM); base %s%s", lora.rank, lora.alpha, lora.scale, lora.dropout,
                 ",".join(lora.target_modules), trainable / 1e6, 100 * trainable / cfg.model.num_params(),
                 cfg.model.num_params() / 1e6, lora.base_dtype,
                 "" if lora.base_quantization == "none" else f", kernels {lora.base_quantization}")
    return base


def _abstract_adapter_shapes(cfg: Any) -> Any:
    from vicuna_jax.lora.model import abstract_lora_model, adapters

    return adapters(abstract_lora_model(cfg.model, cfg.lora, training=False, **cfg.run.model_options()))


def records(cfg: Any, base: BaseModel | None) -> dict[str, Any] | None:
    """The JSON items every checkpoint of the run carries besides the state."""
    return None if base is None else {LORA_ITEM: base.record(cfg.lora)}


def initial_state(setup: Any, base: BaseModel) -> Any:
    """Step 0: the base frozen on the devices; adapters from `config.lora.init_adapter` or freshly made."""
    host_adapters = None
    lora = setup.cfg.lora
    if lora.init_adapter:
        from vicuna_jax.lora.peft import load_peft

        _, host_adapters, record = load_peft(lora.init_adapter, setup.cfg.model)
        if record is not None:
            base_lib.check_record(record, None, base, lora.init_adapter)
        logging.info("LoRA: adapters initialised from %s", lora.init_adapter)
    return setup.init_state(base.params, host_adapters)


def adapter_exported(workdir: str) -> bool:
    from vicuna_jax.lora.peft import ADAPTER_CONFIG

    return os.path.isfile(os.path.join(workdir, ADAPTER_DIR, ADAPTER_CONFIG))


def export(state: Any, base: BaseModel, cfg: Any, workdir: str, fmt: ChatFormat | None,
           merged: bool) -> tuple[str, str | None]:
    """Writes workdir/adapter (PEFT) and, if `merged`, workdir/hf (base + adapters merged, HF format).
    Returns their paths (hf None when not written)."""
    from vicuna_jax.convert import load_hf, save_hf
    from vicuna_jax.lora.peft import merged_params, save_peft

    adapters = jax.tree.map(np.asarray, parallel.gather_to_host(state.params))
    adapter_dir = os.path.join(workdir, ADAPTER_DIR)
    hf_dir = os.path.join(workdir, "hf") if merged else None
    if jax.process_index() == 0:
        save_peft(adapters, cfg.lora, cfg.model, adapter_dir, base_model=base.source,
                  record=base.record(cfg.lora), chat_format=fmt, overwrite=True)
        logging.info("exported the PEFT adapter to %s", adapter_dir)
        if merged:
            # Merged into the base as stored (not its quantized copy): what PEFT's merge_and_unload does.
            _, base_params = load_hf(base.source)
            save_hf(merged_params(base_params, adapters, cfg.lora), cfg.model, hf_dir, dtype=cfg.export_dtype,
                    chat_format=fmt, overwrite=True)
            logging.info("exported the merged Hugging Face model to %s", hf_dir)
    parallel.sync_processes("lora_export")
    return adapter_dir, hf_dir
