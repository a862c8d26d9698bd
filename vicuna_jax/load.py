"""Loading a model for use — from a Hugging Face directory or any vicuna_jax checkpoint directory, with an
optional LoRA adapter — and its chat format, by the one rule of `data.chat_format`.

generate, chat, serve and eval/answers all load here. What the model records (its export's
`chat_format.json`, its checkpoint's `chat_format` item or its workdir's file; an adapter's record wins over
its base's) decides the format under `--template=auto`; an explicit `--template` that differs is used with a
warning; a `--tokenizer` whose fingerprint differs from the recorded one is refused.
"""

from __future__ import annotations

import os
from typing import Any

from vicuna_jax import checkpoint
from vicuna_jax.convert import is_hf_dir, load_hf, stored_chat_format
from vicuna_jax.data import chat_format
from vicuna_jax.data.chat_format import ChatFormat
from vicuna_jax.data.tokenizer import find_tokenizer_in
from vicuna_jax.lora import inference as lora_inference
from vicuna_jax.model.config import LlamaConfig
from vicuna_jax.model.llama import Llama, model_from_params

COMPUTE_DTYPES = ("float32", "bfloat16")  # the --dtype of generate, chat, serve and eval.answers


def load_model(path: str, *, tokenizer: str | None = None, adapter: str | None = None,
               template: str | None = chat_format.AUTO, flag: str = "--template",
               **options: Any) -> tuple[Llama, LlamaConfig, ChatFormat | None]:
    """(model, config, chat format or None when no tokenizer is found) of `path`.

    `adapter`: a LoRA adapter (PEFT directory or vicuna_jax LoRA checkpoint) merged into the weights; a LoRA
    training workdir given as `path` loads onto its recorded base (see `vicuna_jax.lora.inference`).
    `options` go to the model (dtype, scan_layers, ...). Raises ChatFormatError / CheckpointError /
    ConvertError (UserErrors) for what cannot be used.
    """
    path, adapter = lora_inference.resolve(os.path.abspath(os.fspath(path)), adapter)
    if is_hf_dir(path):
        cfg, params = load_hf(path)
        found = find_tokenizer_in(path)
    else:
        cfg, params = checkpoint.load_params(path)
        found = checkpoint.find_tokenizer(checkpoint.resolve_checkpoint_dir(path))
    recorded, where = stored_chat_format(path)
    if adapter is not None:
        params, adapter_tokenizer = lora_inference.apply_adapter(cfg, params, adapter, path)
        found = adapter_tokenizer or found
        recorded, where = lora_inference.adapter_chat_format(adapter, (recorded, where))
    model = model_from_params(cfg, params, **options)
    tok = tokenizer or found
    if tok is None:
        return model, cfg, None
    fmt = chat_format.resolve(tok, template, recorded=recorded, recorded_in=where, flag=flag,
                              on_conflict="warn")
    return model, cfg, fmt
