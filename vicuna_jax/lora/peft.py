"""PEFT adapter directories (`adapter_config.json` + `adapter_model.safetensors`) and merged exports.

Our adapters are stacked per projection: A `[L, in, r]`, B `[L, r, out]`. PEFT stores, per layer i and
module m, `base_model.model.model.layers.{i}.{self_attn|mlp}.{m}.lora_A.weight` `[r, in]` and `lora_B.weight`
`[out, r]` (torch's `[out, in]` Linear layout), so conversion is a transpose and a split by layer, and
`peft.PeftModel.from_pretrained(hf_base, dir)` computes the same function (tested to 1e-4 in fp32).

The exported safetensors file carries our record of the base (`vicuna_jax_lora` metadata: fingerprint,
settings); PEFT ignores it, and importing checks it when present.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_dtypes
import numpy as np

from vicuna_jax.cli import UserError
from vicuna_jax.convert import nonfinite_message
from vicuna_jax.data.chat_format import ChatFormat
from vicuna_jax.fileio import current_umask, resolve_output_dir, writing_dir
from vicuna_jax.lora.config import TARGETS, LoRAConfig, projection_shape, read_adapter_config
from vicuna_jax.model.config import ConfigError, LlamaConfig

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
RECORD_KEY = "vicuna_jax_lora"  # safetensors metadata: our JSON record of the base and settings
_PREFIX = "base_model.model.model.layers"
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
# Past this, the next RMSNorm's mean of squares overflows float32 for any input, so every output is NaN.
UPDATE_LIMIT = float(np.sqrt(np.finfo(np.float32).max))  # about 1.8e19


class AdapterError(UserError):
    """A PEFT adapter directory is unreadable, unsupported or does not fit the base model."""


def peft_name(layer: int, module: str, factor: str) -> str:
    """PEFT's tensor name of factor "A" or "B" of `module` (e.g. "q_proj") in decoder layer `layer`."""
    group = TARGETS[module][0]
    return f"{_PREFIX}.{layer}.{group}.{module}.lora_{factor}.weight"


def adapter_config(lora: LoRAConfig, base_model: str) -> dict[str, Any]:
    """adapter_config.json for PEFT (fields PEFT reads; the rest take PEFT's defaults)."""
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "revision": None,
        "r": lora.rank, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout,
        "target_modules": list(lora.target_modules), "use_rslora": lora.use_rslora, "use_dora": False,
        "bias": "none", "fan_in_fan_out": False, "modules_to_save": None, "init_lora_weights": True,
        "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {},
        "inference_mode": True,
    }


def save_peft(adapters: dict[str, Any], lora: LoRAConfig, cfg: LlamaConfig, out_dir: str, *, base_model: str,
              record: dict[str, Any] | None = None, dtype: str = "float32",
              chat_format: ChatFormat | None = None, overwrite: bool = False) -> str:
    """Writes `adapters` (nested dict, stacked; host or device arrays) as a PEFT adapter directory; with
    `chat_format`, its tokenizer files (chat template included) and `chat_format.json` beside them."""
    from safetensors.numpy import save_file

    if dtype not in DTYPES:
        raise AdapterError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    out_dir = resolve_output_dir(out_dir)
    if os.path.exists(out_dir) and not overwrite:
        raise AdapterError(f"{out_dir} already exists (use --overwrite to replace it)")
    tensors: dict[str, np.ndarray] = {}
    for module in lora.target_modules:
        group, _ = TARGETS[module]
        node = adapters["layers"][group][module]
        a_LxIxR, b_LxRxO = np.asarray(node["lora_a"]), np.asarray(node["lora_b"])
        for i in range(cfg.num_layers):
            tensors[peft_name(i, module, "A")] = np.ascontiguousarray(a_LxIxR[i].T).astype(DTYPES[dtype])
            tensors[peft_name(i, module, "B")] = np.ascontiguousarray(b_LxRxO[i].T).astype(DTYPES[dtype])
    metadata = {"format": "pt"}
    if record is not None:
        metadata[RECORD_KEY] = json.dumps(record, sort_keys=True)
    with writing_dir(out_dir) as tmp:
        save_file(dict(sorted(tensors.items())), os.path.join(tmp, ADAPTER_WEIGHTS), metadata=metadata)
        os.chmod(os.path.join(tmp, ADAPTER_WEIGHTS), 0o666 & ~current_umask())  # safetensors makes it 0600
        with open(os.path.join(tmp, ADAPTER_CONFIG), "w") as f:
            json.dump(adapter_config(lora, base_model), f, indent=2)
        if chat_format is not None:
            chat_format.write_hf_files(tmp, model_max_length=cfg.max_position_embeddings)
    return out_dir


def load_peft(directory: str, cfg: LlamaConfig) -> tuple[LoRAConfig, dict[str, Any], dict[str, Any] | None]:
    """Reads a PEFT LoRA adapter for a base of architecture `cfg`: (settings, stacked fp32 adapters in our
    layout, our record or None). Every problem is an `AdapterError` naming the file and tensor."""
    directory = os.path.abspath(directory)
    try:
        config = read_adapter_config(directory)
    except ConfigError as e:
        raise AdapterError(str(e)) from None
    lora = LoRAConfig(rank=config["r"], alpha=float(config["lora_alpha"]),
                      dropout=float(config["lora_dropout"]), target_modules=config["targets"],
                      use_rslora=config["use_rslora"], base_dtype="float32")
    path, tensors, metadata = _read_tensors(directory)
    adapters: dict[str, Any] = {"layers": {}}
    expected = set()
    r = lora.rank
    for module in lora.target_modules:
        group, _ = TARGETS[module]
        n_in, n_out = projection_shape(cfg, module)
        a = np.zeros((cfg.num_layers, n_in, r), np.float32)
        b = np.zeros((cfg.num_layers, r, n_out), np.float32)
        for i in range(cfg.num_layers):
            for factor, want, target in (("A", (r, n_in), a), ("B", (n_out, r), b)):
                name = peft_name(i, module, factor)
                expected.add(name)
                tensor = _lookup(tensors, name)
                if tensor is None:
                    raise AdapterError(f"{path}: tensor {name!r} is missing (adapter_config.json targets "
                                       f"{module} on a base with {cfg.num_layers} layers)")
                if tuple(tensor.shape) != want:
                    raise AdapterError(f"{path}: tensor {name!r} has shape {tuple(tensor.shape)}, the base "
                                       f"model and r={r} imply {want}")
                if damaged := nonfinite_message(tensor, name):
                    raise AdapterError(f"{path}: {damaged}; the adapter is damaged")
                target[i] = np.asarray(tensor, np.float32).T
        check_update(a, b, lora, module, path)
        adapters["layers"].setdefault(group, {})[module] = {"lora_a": a, "lora_b": b}
    unexpected = sorted(k for k in tensors if _canonical(k) not in expected)
    if unexpected:
        raise AdapterError(f"{path}: unexpected tensor {unexpected[0]!r} (not a LoRA factor of "
                           f"{', '.join(lora.target_modules)} in a {cfg.num_layers}-layer LLaMA)")
    record = None
    if metadata and RECORD_KEY in metadata:
        try:
            record = json.loads(metadata[RECORD_KEY])
        except json.JSONDecodeError:
            raise AdapterError(f"{path}: metadata {RECORD_KEY!r} is not JSON") from None
    return lora, adapters, record


def check_update(a_LxIxR: Any, b_LxRxO: Any, lora: LoRAConfig, module: str, where: str) -> None:
    """Refuses finite adapters whose update scale * A B reaches UPDATE_LIMIT in some layer (an adapter
    scaled by 1e30, or lora_alpha=1e30): a bound from the norms of A's rows and B's columns per layer (cheap),
    and the exact product only for a layer whose bound is past the limit."""
    for layer in range(np.shape(a_LxIxR)[0]):
        a, b = np.asarray(a_LxIxR[layer], np.float64), np.asarray(b_LxRxO[layer], np.float64)
        a_rows, b_cols = (a * a).sum(1).max(initial=0), (b * b).sum(0).max(initial=0)
        bound = abs(lora.scale) * np.sqrt(a_rows) * np.sqrt(b_cols)  # Cauchy-Schwarz per entry of A @ B
        if bound < UPDATE_LIMIT:
            continue
        peak = abs(lora.scale) * float(np.abs(a @ b).max())
        if not peak < UPDATE_LIMIT:
            raise AdapterError(
                f"{where}: the update scale*A@B of {module} in layer {layer} reaches {peak:.3g} (scale "
                f"{lora.scale:.3g} from lora_alpha {lora.alpha:g}, r {lora.rank}); past {UPDATE_LIMIT:.2g} "
                "every output overflows to NaN: the adapter is damaged or mis-scaled")


def _canonical(name: str) -> str:
    """PEFT files written with an adapter name keep it (`lora_A.default.weight`); we read both."""
    return name.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")


def _lookup(tensors: dict[str, Any], name: str) -> Any:
    if name in tensors:
        return tensors[name]
    return tensors.get(name.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default."))


def _read_tensors(directory: str) -> tuple[str, dict[str, np.ndarray], dict[str, str] | None]:
    path = os.path.join(directory, ADAPTER_WEIGHTS)
    if os.path.isfile(path):
        from safetensors import safe_open

        try:
            with safe_open(path, framework="numpy") as f:
                return path, {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise AdapterError(f"cannot read {path}: {e} (truncated or corrupt?)") from None
    path = os.path.join(directory, "adapter_model.bin")
    if not os.path.isfile(path):
        raise AdapterError(f"{directory}: no {ADAPTER_WEIGHTS} or adapter_model.bin")
    try:
        import torch
    except ImportError:
        raise AdapterError(f"{path}: reading .bin adapters needs torch (pip install torch)") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise AdapterError(f"cannot read {path}: {e}") from None
    if not isinstance(state, dict):
        raise AdapterError(f"{path}: holds a {type(state).__name__}, not a state dict of named tensors")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor) or not value.is_floating_point():
            kind = f"{value.dtype} tensor" if isinstance(value, torch.Tensor) else type(value).__name__
            raise AdapterError(f"{path}: entry {key!r} is a {kind}, not a floating-point tensor (expected a "
                               "state dict of named tensors)")
    return path, {k: v.float().numpy() for k, v in state.items()}, None


# ---------------------------------------------------------------- merging into the base


class MergedKernel:
    """W + scale * A B for a stacked kernel, computed one layer at a time on access (fp32), so a merged
    export holds one merged layer at a time; `np.asarray` gives the whole stack."""

    def __init__(self, kernel_LxIxO: Any, a_LxIxR: Any, b_LxRxO: Any, scale: float):
        self.kernel, self.scale = kernel_LxIxO, scale
        self.a, self.b = np.asarray(a_LxIxR), np.asarray(b_LxRxO)
        self.shape = tuple(np.shape(kernel_LxIxO))
        self.dtype = np.dtype(np.float32)
        self.ndim = len(self.shape)

    def __getitem__(self, layer: int) -> np.ndarray:
        w = np.asarray(self.kernel[layer], np.float32)
        return w + self.scale * (self.a[layer].astype(np.float32) @ self.b[layer].astype(np.float32))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.stack([self[i] for i in range(self.shape[0])])
        return out if dtype is None else out.astype(dtype)


def merged_params(base: dict[str, Any], adapters: dict[str, Any], lora: LoRAConfig) -> dict[str, Any]:
    """The base's parameters with every targeted kernel replaced by its `MergedKernel`."""
    out = {**base, "layers": {g: dict(v) for g, v in base["layers"].items()}}
    for module in lora.target_modules:
        group, _ = TARGETS[module]
        node = adapters["layers"][group][module]
        kernel = base["layers"][group][module]["kernel"]
        merged = MergedKernel(kernel, node["lora_a"], node["lora_b"], lora.scale)
        out["layers"][group] = {**out["layers"][group], module: {"kernel": merged}}
    return out
