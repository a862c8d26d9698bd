"""Hugging Face interop: Llama/Mistral/Qwen2/Qwen3ForCausalLM directories <-> vicuna_jax params, checkpoints.

    python -m vicuna_jax.convert --from_hf=DIR --to_checkpoint=DIR [--dtype=auto]
    python -m vicuna_jax.convert --from_checkpoint=DIR --to_hf=DIR [--dtype=bfloat16] [--tokenizer=PATH]

Import reads `config.json` and `model*.safetensors` (sharded with an index, or one file) with safetensors'
numpy reader, tensor by tensor into preallocated stacked arrays, so peak host memory stays near one copy of
the weights; no torch needed. `pytorch_model*.bin` is read with `torch.load(weights_only=True)` when torch
is installed. Export writes sharded safetensors + index, config.json, generation_config.json and, with a
tokenizer, its files (tokenizer.model, or tokenizer.json) + tokenizer_config.json whose chat_template is the
template the model was trained with; every end-of-turn id of that template is an EOS id of the export.
Outputs are written to a temporary directory and renamed into place, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from typing import Any

import ml_dtypes
import numpy as np

from vicuna_jax import checkpoint
from vicuna_jax.cli import UserError, check_name
from vicuna_jax.data import chat_format
from vicuna_jax.data.chat_format import ChatFormat
from vicuna_jax.data.template import known_template_names
from vicuna_jax.data.tokenizer import find_tokenizer_in
from vicuna_jax.fileio import current_umask, resolve_output_dir, writing_dir
from vicuna_jax.model.config import ConfigError, LlamaConfig

# Our parameter path -> (HF name with {i} for the layer, transpose?). Layer entries are stacked on axis 0.
_LAYER_MAP: dict[tuple[str, ...], tuple[str, bool]] = {
    ("input_layernorm", "scale"): ("model.layers.{i}.input_layernorm.weight", False),
    ("post_attention_layernorm", "scale"): ("model.layers.{i}.post_attention_layernorm.weight", False),
    ("self_attn", "q_proj", "kernel"): ("model.layers.{i}.self_attn.q_proj.weight", True),
    ("self_attn", "k_proj", "kernel"): ("model.layers.{i}.self_attn.k_proj.weight", True),
    ("self_attn", "v_proj", "kernel"): ("model.layers.{i}.self_attn.v_proj.weight", True),
    ("self_attn", "o_proj", "kernel"): ("model.layers.{i}.self_attn.o_proj.weight", True),
    ("mlp", "gate_proj", "kernel"): ("model.layers.{i}.mlp.gate_proj.weight", True),
    ("mlp", "up_proj", "kernel"): ("model.layers.{i}.mlp.up_proj.weight", True),
    ("mlp", "down_proj", "kernel"): ("model.layers.{i}.mlp.down_proj.weight", True),
    # Present only when the architecture has them (LlamaConfig.qkv_bias / qk_norm).
    ("self_attn", "q_proj", "bias"): ("model.layers.{i}.self_attn.q_proj.bias", False),
    ("self_attn", "k_proj", "bias"): ("model.layers.{i}.self_attn.k_proj.bias", False),
    ("self_attn", "v_proj", "bias"): ("model.layers.{i}.self_attn.v_proj.bias", False),
    ("self_attn", "q_norm", "scale"): ("model.layers.{i}.self_attn.q_norm.weight", False),
    ("self_attn", "k_norm", "scale"): ("model.layers.{i}.self_attn.k_norm.weight", False),
}
_TOP_MAP: dict[tuple[str, ...], tuple[str, bool]] = {
    ("embed_tokens",): ("model.embed_tokens.weight", False),
    ("norm", "scale"): ("model.norm.weight", False),
    ("lm_head", "kernel"): ("lm_head.weight", True),
}
# Buffers some older checkpoints carry that are recomputed, not learned.
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


class ConvertError(UserError):
    """Bad or inconsistent Hugging Face input or output; the message names the file and key."""

_CHECK_ELEMENTS = 1 << 22  # elements per finiteness check: the temporary mask stays at 4 MiB


def nonfinite(arr: Any) -> tuple[int, list[int]]:
    """(how many NaN/Inf entries `arr` holds, the index of the first); (0, []) for integers. One pass over
    blocks of rows, so the temporary mask stays small whatever the tensor's size."""
    arr = np.asarray(arr)
    rows = arr.reshape(1, -1) if arr.ndim == 0 else arr
    if arr.dtype.kind in "biu" or arr.size == 0:
        return 0, []
    step = max(1, _CHECK_ELEMENTS // max(1, rows[0].size))
    if all(np.isfinite(rows[i:i + step]).all() for i in range(0, len(rows), step)):
        return 0, []
    bad = ~np.isfinite(arr)  # only for a damaged tensor: the whole mask, to count and locate
    return int(bad.sum()), [int(i) for i in np.unravel_index(int(np.argmax(bad)), arr.shape)]


def nonfinite_message(arr: Any, name: str, beyond: str = "") -> str | None:
    """None when `arr` is finite; else "tensor NAME holds N NaN/Inf values (first at [i, j])" (with
    `beyond`, a dtype name: "N values beyond the range of DTYPE", for a cast that overflowed)."""
    count, first = nonfinite(arr)
    if not count:
        return None
    what = f"beyond the range of {beyond}" if beyond else "NaN/Inf"
    return f"tensor {name!r} holds {count} {what} value{'s' if count > 1 else ''} (first at {first})"


def _param_shapes(cfg: LlamaConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Per-tensor HF shapes ([out, in] for linear weights) keyed by our path."""
    e, f, v, hd = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.dim_per_head
    shapes = {
        ("input_layernorm", "scale"): (e,),
        ("post_attention_layernorm", "scale"): (e,),
        ("self_attn", "q_proj", "kernel"): (cfg.num_heads * hd, e),
        ("self_attn", "k_proj", "kernel"): (cfg.num_kv_heads * hd, e),
        ("self_attn", "v_proj", "kernel"): (cfg.num_kv_heads * hd, e),
        ("self_attn", "o_proj", "kernel"): (e, cfg.num_heads * hd),
        ("mlp", "gate_proj", "kernel"): (f, e),
        ("mlp", "up_proj", "kernel"): (f, e),
        ("mlp", "down_proj", "kernel"): (e, f),
        ("embed_tokens",): (v, e),
        ("norm", "scale"): (e,),
    }
    if not cfg.tie_word_embeddings:
        shapes[("lm_head", "kernel")] = (v, e)
    if cfg.qkv_bias:
        shapes[("self_attn", "q_proj", "bias")] = (cfg.num_heads * hd,)
        shapes[("self_attn", "k_proj", "bias")] = (cfg.num_kv_heads * hd,)
        shapes[("self_attn", "v_proj", "bias")] = (cfg.num_kv_heads * hd,)
    if cfg.qk_norm:
        shapes[("self_attn", "q_norm", "scale")] = (hd,)
        shapes[("self_attn", "k_norm", "scale")] = (hd,)
    return shapes


def hf_names(cfg: LlamaConfig) -> dict[str, tuple[tuple[str, ...], int | None, bool]]:
    """HF tensor name -> (our path, layer index or None, transpose)."""
    out: dict[str, tuple[tuple[str, ...], int | None, bool]] = {}
    shapes = _param_shapes(cfg)
    for path, (name, transpose) in _TOP_MAP.items():
        if path in shapes:
            out[name] = (path, None, transpose)
    for path, (name, transpose) in _LAYER_MAP.items():
        if path not in shapes:
            continue
        for i in range(cfg.num_layers):
            out[name.format(i=i)] = (path, i, transpose)
    return out


# ---------------------------------------------------------------- reading HF weights


def _safetensors_files(hf_dir: str) -> list[str] | None:
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ConvertError(f"{index}: not a valid safetensors index ({e})") from None
        files = sorted(set(weight_map.values()))
        for name in files:
            if not os.path.isfile(os.path.join(hf_dir, name)):
                keys = [k for k, v in weight_map.items() if v == name]
                raise ConvertError(f"missing shard {os.path.join(hf_dir, name)} (listed in {index} for "
                                   f"{len(keys)} tensors, e.g. {keys[0]!r})")
        return [os.path.join(hf_dir, n) for n in files]
    single = os.path.join(hf_dir, "model.safetensors")
    if os.path.isfile(single):
        return [single]
    shards = sorted(glob.glob(os.path.join(hf_dir, "model-*.safetensors")))
    if shards:
        raise ConvertError(f"{hf_dir} has sharded safetensors files but no model.safetensors.index.json")
    return None


def _iter_safetensors(files: list[str]) -> Iterator[tuple[str, str, np.ndarray]]:
    from safetensors import safe_open

    for path in files:
        try:
            handle = safe_open(path, framework="numpy")
        except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
            raise ConvertError(f"cannot read {path}: {e} (truncated or corrupt shard?)") from None
        with handle as f:
            for key in f.keys():
                try:
                    tensor = f.get_tensor(key)
                except Exception as e:
                    raise ConvertError(f"cannot read tensor {key!r} from {path}: {e}") from None
                yield path, key, tensor


def _iter_torch_bin(hf_dir: str) -> Iterator[tuple[str, str, np.ndarray]]:
    files = sorted(glob.glob(os.path.join(hf_dir, "pytorch_model*.bin")))
    try:
        import torch
    except ImportError:
        raise ConvertError(f"{hf_dir} has only pytorch_model*.bin weights; reading them needs torch "
                           "(pip install torch), or convert them to safetensors first") from None
    for path in files:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:
            raise ConvertError(f"cannot read {path}: {e}") from None
        if not isinstance(state, dict):
            raise ConvertError(f"{path}: holds a {type(state).__name__}, not a state dict of named tensors")
        for key in list(state):
            t = state.pop(key)
            if not isinstance(key, str) or not isinstance(t, torch.Tensor):
                raise ConvertError(f"{path}: entry {key!r} is a {type(t).__name__}, not a tensor (expected a "
                                   "state dict of named tensors)")
            try:
                if t.dtype == torch.bfloat16:
                    arr = t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
                else:
                    arr = t.numpy()
            except (TypeError, RuntimeError) as e:
                raise ConvertError(f"{path}: tensor {key!r} cannot be read ({e})") from None
            yield path, key, arr
        del state


def iter_hf_tensors(hf_dir: str) -> Iterator[tuple[str, str, np.ndarray]]:
    """Yields (file, tensor name, array) for every tensor of an HF checkpoint directory."""
    files = _safetensors_files(hf_dir)
    if files is not None:
        yield from _iter_safetensors(files)
    elif glob.glob(os.path.join(hf_dir, "pytorch_model*.bin")):
        yield from _iter_torch_bin(hf_dir)
    else:
        raise ConvertError(f"{hf_dir}: no model.safetensors, model-*.safetensors (+ index) or "
                           "pytorch_model*.bin weights found")


def is_hf_dir(path: str) -> bool:
    """An HF model directory: a config.json that describes a model (not, say, a training config)."""
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return False
    try:
        with open(config) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError):
        return True  # let load_hf report the broken file
    return isinstance(data, dict) and ("model_type" in data or "architectures" in data)


def stored_chat_format(path: str) -> tuple[dict[str, Any] | None, str]:
    """(the chat format record stored with a model, where it was read; (None, "") when none): an HF
    directory's chat_format.json, or a vicuna_jax checkpoint's (`checkpoint.read_chat_format`)."""
    if is_hf_dir(path):
        record = chat_format.read_record(path)
        return record, os.path.join(path, chat_format.FORMAT_FILE) if record is not None else ""
    return checkpoint.read_chat_format(path)


def load_hf(hf_dir: str, dtype: str = "auto") -> tuple[LlamaConfig, dict[str, Any]]:
    """Reads an HF LLaMA directory into (config, nested numpy params with stacked layers).

    dtype: "auto" keeps each tensor's stored dtype; otherwise one of DTYPES.
    """
    hf_dir = os.path.abspath(hf_dir)
    if not os.path.isdir(hf_dir):
        raise ConvertError(f"{hf_dir} is not a directory")
    try:
        cfg = LlamaConfig.from_hf_config(hf_dir)
    except ConfigError as e:
        raise ConvertError(str(e)) from None
    if dtype != "auto" and dtype not in DTYPES:
        raise ConvertError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {dtype!r}")
    names = hf_names(cfg)
    shapes = _param_shapes(cfg)
    buffers: dict[tuple[str, ...], np.ndarray] = {}
    seen: set[str] = set()
    tied_head: tuple[str, np.ndarray] | None = None
    for path, key, tensor in iter_hf_tensors(hf_dir):
        if key not in names:
            if key.endswith(_IGNORED_SUFFIXES):
                continue
            if key == "lm_head.weight" and cfg.tie_word_embeddings:
                tied_head = (path, tensor)  # some tied checkpoints store it too; it must equal the embedding
                continue
            tied = ", tied embeddings" if cfg.tie_word_embeddings else ""
            arch = cfg.to_hf_config()["architectures"][0]
            raise ConvertError(f"{path}: unexpected tensor {key!r} (not part of a {arch} with "
                               f"{cfg.num_layers} layers{tied})")
        if key in seen:
            raise ConvertError(f"{path}: tensor {key!r} appears twice")
        our_path, layer, transpose = names[key]
        want = shapes[our_path]
        if tuple(tensor.shape) != want:
            raise ConvertError(f"{path}: tensor {key!r} has shape {tuple(tensor.shape)}, config.json implies "
                               f"{want}")
        if damaged := nonfinite_message(tensor, key):
            raise ConvertError(f"{path}: {damaged}; the file is damaged, or the model diverged before saving")
        target_dtype = tensor.dtype if dtype == "auto" else DTYPES[dtype]
        value = tensor.T if transpose else tensor
        if our_path not in buffers:
            stacked_shape = value.shape if layer is None else (cfg.num_layers, *value.shape)
            buffers[our_path] = np.empty(stacked_shape, dtype=target_dtype)
        stored = buffers[our_path] if layer is None else buffers[our_path][layer]
        with np.errstate(over="ignore"):
            stored[...] = value
        if stored.dtype != tensor.dtype and stored.itemsize <= tensor.itemsize:  # the cast may overflow
            if overflow := nonfinite_message(stored.T if transpose else stored, key, stored.dtype.name):
                raise ConvertError(f"{path}: {overflow}; import with --dtype=auto, bfloat16 or float32")
        seen.add(key)
        del tensor, value, stored
    missing = [k for k in names if k not in seen]
    if missing:
        raise ConvertError(f"{hf_dir}: {len(missing)} tensors missing from the checkpoint, "
                           f"e.g. {missing[:3]}")
    if tied_head is not None and not np.array_equal(np.asarray(tied_head[1], np.float32),
                                                    np.asarray(buffers[("embed_tokens",)], np.float32)):
        raise ConvertError(f"{tied_head[0]}: 'lm_head.weight' differs from 'model.embed_tokens.weight' but "
                           "config.json sets tie_word_embeddings=true")
    return cfg, _nest(buffers)


def _nest(flat: dict[tuple[str, ...], Any]) -> dict[str, Any]:
    """{("layers"?, a, b): x} -> nested dicts in the model's layout (layer params under "layers")."""
    out: dict[str, Any] = {}
    for path, value in flat.items():
        full = path if path in _TOP_MAP else ("layers", *path)
        node = out
        for part in full[:-1]:
            node = node.setdefault(part, {})
        node[full[-1]] = value
    return out


def _flat_params(params: dict[str, Any], cfg: LlamaConfig) -> dict[tuple[str, ...], Any]:
    out = {}
    shapes = _param_shapes(cfg)
    for path in _TOP_MAP:
        node: Any = params
        try:
            for part in path:
                node = node[part]
        except KeyError:
            continue
        out[path] = node
    for path in _LAYER_MAP:
        if path not in shapes:
            continue
        node = params["layers"]
        for part in path:
            node = node[part]
        out[path] = node
    return out


# ---------------------------------------------------------------- writing HF directories


def _hf_specs(cfg: LlamaConfig) -> list[tuple[str, tuple[str, ...], int | None, bool, tuple[int, ...]]]:
    """(HF name, our path, layer, transpose, HF shape) in the order HF writes them."""
    shapes = _param_shapes(cfg)
    specs = [(name, path, None, t, shapes[path]) for path, (name, t) in _TOP_MAP.items() if path in shapes]
    for i in range(cfg.num_layers):
        specs += [(name.format(i=i), path, i, t, shapes[path]) for path, (name, t) in _LAYER_MAP.items()
                  if path in shapes]
    return specs


def _host_tensor(flat: dict[tuple[str, ...], Any], path: tuple[str, ...], layer: int | None,
                 transpose: bool, dtype: Any, name: str) -> np.ndarray:
    """One HF tensor on the host; a layer slice is gathered from the devices on its own. Refused when it
    holds NaN/Inf, or values the export dtype cannot hold."""
    source = np.asarray(flat[path] if layer is None else flat[path][layer])
    with np.errstate(over="ignore"):
        arr = np.asarray(source.T if transpose else source, dtype=dtype, order="C")
    if bad := nonfinite_message(arr, name):
        if not nonfinite(source)[0]:
            bad = nonfinite_message(arr, name, np.dtype(dtype).name) + "; export as bfloat16 or float32"
        raise ConvertError(f"cannot export: {bad}")
    return arr


def save_hf(params: dict[str, Any], cfg: LlamaConfig, out_dir: str, *, dtype: str = "bfloat16",
            chat_format: ChatFormat | None = None, max_shard_bytes: int = 2 * 1024**3,
            overwrite: bool = False) -> str:
    """Writes an HF LlamaForCausalLM directory that transformers loads with `from_pretrained`.

    With a `chat_format`: its tokenizer files, the chat template it was trained in (tokenizer_config.json),
    every end-of-turn id as an EOS id (config.json, generation_config.json) and `chat_format.json`.
    Host memory peaks at about one shard (`max_shard_bytes`), whatever the model size.
    """
    from safetensors.numpy import save_file

    if dtype not in DTYPES:
        raise ConvertError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    out_dir = resolve_output_dir(out_dir)
    if os.path.exists(out_dir) and not overwrite:
        raise ConvertError(f"{out_dir} already exists (use --overwrite to replace it)")
    if chat_format is not None:
        extra = tuple(i for i in chat_format.eos_token_ids if i not in cfg.eos_token_ids)
        cfg = cfg.replace(extra_eos_token_ids=cfg.extra_eos_token_ids + extra)
    np_dtype = DTYPES[dtype]
    itemsize = np.dtype(np_dtype).itemsize
    flat = _flat_params(params, cfg)

    plan: list[list[tuple]] = [[]]
    shard_bytes = 0
    for spec in _hf_specs(cfg):
        nbytes = int(np.prod(spec[4])) * itemsize
        if plan[-1] and shard_bytes + nbytes > max_shard_bytes:
            plan.append([])
            shard_bytes = 0
        plan[-1].append(spec)
        shard_bytes += nbytes

    with writing_dir(out_dir) as tmp:
        weight_map: dict[str, str] = {}
        total_size = 0
        for k, shard in enumerate(plan):
            fname = f"model-{k + 1:05d}-of-{len(plan):05d}.safetensors"
            tensors = {name: _host_tensor(flat, path, layer, t, np_dtype, name)
                       for name, path, layer, t, _ in shard}
            save_file(tensors, os.path.join(tmp, fname), metadata={"format": "pt"})
            os.chmod(os.path.join(tmp, fname), 0o666 & ~current_umask())  # safetensors creates files 0600
            total_size += sum(a.nbytes for a in tensors.values())
            weight_map.update({name: fname for name in tensors})
            del tensors
        with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
            index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
            json.dump(index, f, indent=2)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(cfg.to_hf_config(torch_dtype=dtype), f, indent=2)
        with open(os.path.join(tmp, "generation_config.json"), "w") as f:
            json.dump(_generation_config(cfg), f, indent=2)
        if chat_format is not None:
            chat_format.write_hf_files(tmp, model_max_length=cfg.max_position_embeddings)
    return out_dir


def _generation_config(cfg: LlamaConfig) -> dict[str, Any]:
    return {
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": list(cfg.eos_token_ids) if cfg.extra_eos_token_ids else cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id if cfg.pad_token_id is not None else 0,
        "max_length": cfg.max_position_embeddings,
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 1.0,
    }


# ---------------------------------------------------------------- whole models and the CLI


def main(argv: list[str]) -> None:
    from absl import flags, logging

    f = flags.FLAGS
    if len(argv) > 1:
        raise flags.Error(f"unexpected arguments: {argv[1:]}")
    if bool(f.from_hf) == bool(f.from_checkpoint):
        raise flags.Error("give exactly one of --from_hf or --from_checkpoint")
    if f.from_hf:
        if not f.to_checkpoint:
            raise flags.Error("--from_hf needs --to_checkpoint")
        cfg, params = load_hf(f.from_hf, dtype=f.dtype or "auto")
        source = os.path.abspath(f.from_hf)
        tok = f.tokenizer or find_tokenizer_in(source)
        fmt = _format(tok, f.template, *stored_chat_format(source))
        out = checkpoint.save_model(f.to_checkpoint, params, cfg, overwrite=f.overwrite, tokenizer_path=tok,
                                    fmt=fmt)
        logging.info("wrote checkpoint %s (%.1fM parameters)", out, cfg.num_params() / 1e6)
    else:
        if not f.to_hf:
            raise flags.Error("--from_checkpoint needs --to_hf")
        cfg, params = checkpoint.load_params(f.from_checkpoint)
        tok = f.tokenizer or checkpoint.find_tokenizer(checkpoint.resolve_checkpoint_dir(f.from_checkpoint))
        fmt = _format(tok, f.template, *stored_chat_format(f.from_checkpoint))
        out = save_hf(params, cfg, f.to_hf, dtype=f.dtype or "bfloat16", chat_format=fmt,
                      max_shard_bytes=int(f.max_shard_gb * 1024**3), overwrite=f.overwrite)
        logging.info("wrote Hugging Face directory %s%s", out, f" (chat format {fmt.describe()})" if fmt else
                     " (no tokenizer given)")


def _format(tokenizer: str | None, template: str, recorded: dict | None, where: str) -> ChatFormat | None:
    """The chat format an export/import carries: the one rule (`data.chat_format`); an explicit --template
    that contradicts the record is refused (it would ship weights with a format they were not trained in)."""
    if tokenizer is None:
        if template not in ("", chat_format.AUTO):
            raise UserError(f"--template={template} needs a tokenizer: none is stored with the model; pass "
                            "--tokenizer")
        return None
    return chat_format.resolve(tokenizer, template, recorded=recorded, recorded_in=where, on_conflict="error")


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("from_hf", None, "Hugging Face LlamaForCausalLM directory to import.")
    flags.DEFINE_string("to_checkpoint", None, "Output orbax checkpoint directory (with --from_hf).")
    flags.DEFINE_string("from_checkpoint", None,
                        "vicuna_jax checkpoint: a converted model, a step dir, or a training workdir.")
    flags.DEFINE_string("to_hf", None, "Output Hugging Face directory (with --from_checkpoint).")
    flags.DEFINE_enum("dtype", None, ["auto", *DTYPES], "Stored dtype: auto (import default), bfloat16 "
                      "(export default), float16, float32.")
    flags.DEFINE_string("tokenizer", None, "tokenizer.model, tokenizer.json or a directory with one.")
    flags.DEFINE_string("template", "auto", "Chat template written with the model. auto: the one the model "
                        "records, else the tokenizer's own, else vicuna_v1.1; or a named template / hf (the "
                        "tokenizer's own), which must agree with a recorded one.")
    flags.DEFINE_float("max_shard_gb", 2.0, "Largest safetensors shard, in GiB.")
    flags.DEFINE_bool("overwrite", False, "Replace an existing output directory.")
    check_name("template", known_template_names(), "chat template")


if __name__ == "__main__":
    from vicuna_jax.cli import run

    run(main, _define_flags)
