"""Export LoRA adapters: as a PEFT adapter directory, or merged into the base as a Hugging Face model.

    python -m vicuna_jax.lora --adapter=WORKDIR --out=DIR                 # PEFT adapter directory
    python -m vicuna_jax.lora --adapter=WORKDIR --out=DIR --merge         # merged HF model
        [--base=DIR] [--dtype=...] [--tokenizer=PATH] [--template=auto] [--max_shard_gb=2]
        [--overwrite]

`--adapter`: a LoRA training workdir, one of its `checkpoints/<step>`, or a PEFT adapter directory (any PEFT
LoRA on the attention/MLP projections; for example to merge it, or to convert it to bfloat16). `--base`:
the base model (HF directory or vicuna_jax checkpoint); by default the one the adapter records. An adapter
that records its base's fingerprint refuses any other base. The merge is W + scale A B in fp32 per layer,
into the base as stored (for QLoRA: the unquantized base, as PEFT's merge_and_unload onto a bf16 base does).
Either output carries the tokenizer (tokenizer.model or tokenizer.json) and the chat format the adapter was
trained in (its record, else the base's, else the tokenizer's own template, else vicuna_v1.1).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from vicuna_jax import checkpoint
from vicuna_jax.cli import UserError, check_name
from vicuna_jax.convert import is_hf_dir, load_hf, save_hf, stored_chat_format
from vicuna_jax.data import chat_format
from vicuna_jax.data.template import known_template_names
from vicuna_jax.data.tokenizer import find_tokenizer_in
from vicuna_jax.lora.inference import adapter_chat_format, read_checked_adapter, recorded_base
from vicuna_jax.lora.peft import DTYPES, merged_params, save_peft


def load_base(path: str) -> tuple[Any, dict[str, Any], str | None, dict[str, Any] | None, str]:
    """(config, host params, its tokenizer or None, its chat format record or None, where that was read) of
    an HF directory or a vicuna_jax checkpoint."""
    if not os.path.isdir(path):
        raise UserError(f"--base: no such directory: {path}")
    if is_hf_dir(path):
        cfg, params = load_hf(path)
        return cfg, params, find_tokenizer_in(path), *stored_chat_format(path)
    cfg, params = checkpoint.load_params(path)
    tok = checkpoint.find_tokenizer(checkpoint.resolve_checkpoint_dir(path))
    return cfg, jax.tree.map(np.asarray, params), tok, *stored_chat_format(path)


def main(argv: list[str]) -> None:
    from absl import flags, logging

    f = flags.FLAGS
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {argv[1:]}")
    if not os.path.isdir(f.adapter):
        raise UserError(f"--adapter: no such directory: {f.adapter}")
    base_path = f.base or recorded_base(f.adapter)
    if base_path is None:
        raise UserError(f"--base: {f.adapter} names no base model directory that exists here; "
                        "pass --base=DIR")
    base_path = os.path.abspath(base_path)
    cfg, params, base_tok, format_record, format_where = load_base(base_path)
    lora, adapters, record, adapter_tok = read_checked_adapter(cfg, params, f.adapter, base_path)
    format_record, format_where = adapter_chat_format(f.adapter, (format_record, format_where))
    tokenizer = f.tokenizer or adapter_tok or base_tok
    fmt = None
    if tokenizer is not None:
        fmt = chat_format.resolve(tokenizer, f.template, recorded=format_record, recorded_in=format_where,
                                  on_conflict="error")
    elif f.template != chat_format.AUTO:
        raise UserError(f"--template={f.template} needs a tokenizer: none is stored with the adapter or the "
                        "base; pass --tokenizer")
    if f.merge:
        out = save_hf(merged_params(params, adapters, lora), cfg, f.out, dtype=f.dtype or "bfloat16",
                      chat_format=fmt, max_shard_bytes=int(f.max_shard_gb * 1024**3), overwrite=f.overwrite)
        logging.info("wrote the merged model %s (base %s + adapter %s)", out, base_path, f.adapter)
    else:
        out = save_peft(adapters, lora, cfg, f.out, base_model=base_path, record=record,
                        dtype=f.dtype or "float32", chat_format=fmt, overwrite=f.overwrite)
        logging.info("wrote the PEFT adapter %s (rank %d, %s)", out, lora.rank, ",".join(lora.target_modules))
    print(out)


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("adapter", None, "LoRA training workdir / checkpoint, or a PEFT adapter directory.",
                        required=True)
    flags.DEFINE_string("out", None, "Output directory.", required=True)
    flags.DEFINE_bool("merge", False, "Write base + adapter merged as a Hugging Face model (default: the "
                      "adapter alone, as a PEFT directory).")
    flags.DEFINE_string("base", None, "Base model (HF dir or vicuna_jax checkpoint); default: the recorded "
                        "one.")
    flags.DEFINE_enum("dtype", None, list(DTYPES), "Stored dtype: float32 (adapter default), bfloat16 "
                      "(merged default), float16.")
    flags.DEFINE_string("tokenizer", None, "tokenizer.model / tokenizer.json to include (default: the "
                        "adapter's or the base's).")
    flags.DEFINE_string("template", "auto", "Chat template written with the output. auto: the one the "
                        "adapter (else the base) records, else the tokenizer's own, else vicuna_v1.1; a "
                        "named one must agree with a recorded one.")
    flags.DEFINE_float("max_shard_gb", 2.0, "Largest safetensors shard of a merged export, in GiB.")
    flags.DEFINE_bool("overwrite", False, "Replace an existing output directory.")
    check_name("template", known_template_names(), "chat template")


if __name__ == "__main__":
    from vicuna_jax.cli import run

    run(main, _define_flags)
