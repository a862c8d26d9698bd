"""Export LoRA adapters: as a PEFT adapter directory, or merged into the base as a Hugging Face model.

    python -m vicuna_jax.lora --adapter=WORKDIR --out=DIR                 # PEFT adapter directory
    python -m vicuna_jax.lora --adapter=WORKDIR --out=DIR --merge         # merged HF model
        [--base=DIR] [--dtype=...] [--tokenizer=PATH] [--template=vicuna_v1.1] [--max_shard_gb=2]
        [--overwrite]

`--adapter`: a LoRA training workdir, one of its `checkpoints/<step>`, or a PEFT adapter directory (any PEFT
LoRA on the attention/MLP projections; for example to merge it, or to convert it to bfloat16). `--base`:
the base model (HF directory or vicuna_jax checkpoint); by default the one the adapter records. An adapter
that records its base's fingerprint refuses any other base. The merge is W + scale A B in fp32 per layer,
into the base as stored (for QLoRA: the unquantized base, as PEFT's merge_and_unload onto a bf16 base does).
"""

from __future__ import annotations

import os
from typing import Any

from vicuna_jax.cli import UserError


def load_base(path: str) -> tuple[Any, dict[str, Any], str | None]:
    """(config, host params, tokenizer.model or None) of an HF directory or a vicuna_jax checkpoint."""
    import jax
    import numpy as np

    from vicuna_jax import checkpoint
    from vicuna_jax.convert import load_hf
    from vicuna_jax.model.load import is_hf_dir

    if not os.path.isdir(path):
        raise UserError(f"--base: no such directory: {path}")
    if is_hf_dir(path):
        cfg, params = load_hf(path)
        tok = os.path.join(path, "tokenizer.model")
        return cfg, params, tok if os.path.isfile(tok) else None
    cfg, params = checkpoint.load_params(path)
    tok = checkpoint.find_tokenizer(checkpoint.resolve_checkpoint_dir(path))
    return cfg, jax.tree.map(np.asarray, params), tok


def main(argv: list[str]) -> None:
    from absl import flags, logging

    from vicuna_jax.convert import save_hf
    from vicuna_jax.lora.inference import read_checked_adapter, recorded_base
    from vicuna_jax.lora.peft import merged_params, save_peft

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
    cfg, params, base_tok = load_base(base_path)
    lora, adapters, record, adapter_tok = read_checked_adapter(cfg, params, f.adapter, base_path)
    tokenizer = f.tokenizer or adapter_tok or base_tok
    if f.merge:
        out = save_hf(merged_params(params, adapters, lora), cfg, f.out, dtype=f.dtype or "bfloat16",
                      tokenizer=tokenizer, template=f.template, max_shard_bytes=int(f.max_shard_gb * 1024**3),
                      overwrite=f.overwrite)
        logging.info("wrote the merged model %s (base %s + adapter %s)", out, base_path, f.adapter)
    else:
        out = save_peft(adapters, lora, cfg, f.out, base_model=base_path, record=record,
                        dtype=f.dtype or "float32", tokenizer=tokenizer, template=f.template,
                        overwrite=f.overwrite)
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
    flags.DEFINE_string("dtype", None, "Stored dtype: float32 (adapter default), bfloat16 (merged default), "
                        "float16.")
    flags.DEFINE_string("tokenizer", None, "tokenizer.model to include (default: the adapter's or the "
                        "base's).")
    flags.DEFINE_string("template", "vicuna_v1.1", "Chat template written into tokenizer_config.json.")
    flags.DEFINE_float("max_shard_gb", 2.0, "Largest safetensors shard of a merged export, in GiB.")
    flags.DEFINE_bool("overwrite", False, "Replace an existing output directory.")


if __name__ == "__main__":
    from vicuna_jax.cli import run

    run(main, _define_flags)
