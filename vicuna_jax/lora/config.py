"""LoRA settings: the `config.lora` keys of a training config, their validation, and the typed `LoRAConfig`.

`--config.lora.rank=R` (R > 0) switches a run from full fine-tuning to LoRA; `--config.lora.init_adapter=DIR`
(a PEFT adapter directory) does too, and then the adapter's own rank, alpha and target modules are used.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import ml_collections

from vicuna_jax.cli import unknown_name
from vicuna_jax.model.config import ConfigError, LlamaConfig

# PEFT/HF module name -> (group, projection) inside a decoder layer of our model, in HF's order.
TARGETS: dict[str, tuple[str, str]] = {
    "q_proj": ("self_attn", "q_proj"),
    "k_proj": ("self_attn", "k_proj"),
    "v_proj": ("self_attn", "v_proj"),
    "o_proj": ("self_attn", "o_proj"),
    "gate_proj": ("mlp", "gate_proj"),
    "up_proj": ("mlp", "up_proj"),
    "down_proj": ("mlp", "down_proj"),
}
QUANTIZATIONS = ("none", "int8", "nf4")
BASE_DTYPES = ("bfloat16", "float16", "float32")


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """LoRA on the decoder projections: W x + scale * B A x, with scale = alpha / r (alpha / sqrt(r) for
    rsLoRA), A `[in, r]` random and B `[r, out]` zero at the start (PEFT's init), only A and B trained."""

    rank: int = 0  # 0 = LoRA off (full fine-tuning)
    alpha: float = 16.0
    dropout: float = 0.05  # on the adapters' input, training only (PEFT's lora_dropout)
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")  # FastChat's train_lora default
    use_rslora: bool = False
    base_quantization: str = "none"  # none | int8 | nf4: how the frozen projection kernels are stored
    base_dtype: str = "bfloat16"  # the frozen base's other weights (and its kernels when not quantized)
    quant_block_size: int = 64  # input rows per absmax scale (bitsandbytes' NF4 block)
    init_adapter: str = ""  # a PEFT adapter directory to start from

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    def targeted(self, name: str) -> bool:
        return name in self.target_modules

    def replaced(self) -> tuple[str, ...]:
        """The projections the LoRA model computes itself: the targets, and every projection when the base
        is quantized (its kernel is then stored quantized whether or not it has an adapter)."""
        if self.base_quantization != "none":
            return tuple(TARGETS)
        return tuple(t for t in TARGETS if t in self.target_modules)


def base_config() -> ml_collections.ConfigDict:
    """The `config.lora` keys (documented in `LoRAConfig`); target_modules is a comma list of q, k, v, o,
    gate, up, down (or their HF names q_proj, ...); "all" = all seven (QLoRA's choice)."""
    d = LoRAConfig()
    return ml_collections.ConfigDict({
        "rank": d.rank, "alpha": d.alpha, "dropout": d.dropout, "target_modules": "q,v",
        "use_rslora": d.use_rslora, "base_quantization": d.base_quantization, "base_dtype": d.base_dtype,
        "quant_block_size": d.quant_block_size, "init_adapter": d.init_adapter})


# One line per `config.lora` key (the trainer's `--help` shows these; a test checks every key has one).
KEY_HELP: dict[str, str] = {
    "rank": "LoRA rank r; > 0 trains adapters on a frozen base instead of every weight (0 = off)",
    "alpha": "adapter scale numerator: scale = alpha / r (alpha / sqrt(r) with use_rslora)",
    "dropout": "dropout on the adapters' input while training",
    "target_modules": "comma list of q, k, v, o, gate, up, down (or q_proj, ...), or all",
    "use_rslora": "rank-stabilised scale alpha / sqrt(r)",
    "base_quantization": f"storage of the frozen projection kernels: {', '.join(QUANTIZATIONS)} (QLoRA: nf4)",
    "base_dtype": f"dtype of the frozen base's other weights: {', '.join(BASE_DTYPES)}",
    "quant_block_size": "input rows per absmax scale when quantized",
    "init_adapter": "a PEFT adapter directory to start from (its rank, alpha and targets are used)",
}


def _fail(key: str, message: str) -> None:
    raise ConfigError(f"config.lora.{key}: {message}")


def parse_targets(value: Any, where: str = "config.lora.target_modules") -> tuple[str, ...]:
    """'q,v' / 'q_proj,v_proj' / a list -> HF names in HF's order. PEFT's forms are read too: "all-linear"
    (every projection; the LM head is never adapted), and full module paths such as
    'model.layers.0.mlp.down_proj' (what peft writes for target_modules="all-linear"): the last component
    names the projection (PEFT matches a name by its suffix)."""
    if value in ("all", "all-linear"):
        return tuple(TARGETS)
    if not isinstance(value, (str, list, tuple)):
        raise ConfigError(f"{where}: expected module names, got {value!r}")
    items = [s.strip() for s in value.split(",")] if isinstance(value, str) else list(value)
    names = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"{where}: expected module names, got {item!r}")
        if not item:
            continue
        item = item.rsplit(".", 1)[-1]
        name = item if item.endswith("_proj") else f"{item}_proj"
        if name not in TARGETS:
            short = [t.removesuffix("_proj") for t in TARGETS]
            raise ConfigError(f"{where}: {unknown_name('module', item, short)} (or q_proj, ...)")
        names.append(name)
    if not names:
        raise ConfigError(f"{where}: no modules given")
    return tuple(t for t in TARGETS if t in names)


def projection_shape(cfg: LlamaConfig, name: str) -> tuple[int, int]:
    """(inputs, outputs) of projection `name` of a decoder layer (quantization blocks run along inputs)."""
    if name in ("q_proj", "o_proj"):
        heads = cfg.num_heads * cfg.dim_per_head
        return (cfg.hidden_size, heads) if name == "q_proj" else (heads, cfg.hidden_size)
    if name in ("k_proj", "v_proj"):
        return cfg.hidden_size, cfg.num_kv_heads * cfg.dim_per_head
    if name in ("gate_proj", "up_proj"):
        return cfg.hidden_size, cfg.intermediate_size
    return cfg.intermediate_size, cfg.hidden_size


def load(c: ml_collections.ConfigDict, model: LlamaConfig) -> LoRAConfig:
    """Validates the `config.lora` ConfigDict against the model and returns it typed (errors name the key)."""
    rank = c.rank
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 0:
        _fail("rank", f"must be an integer >= 0 (0 = full fine-tuning), got {rank!r}")
    if not c.alpha > 0:
        _fail("alpha", f"must be > 0, got {c.alpha}")
    if not 0 <= c.dropout < 1:
        _fail("dropout", f"must be in [0, 1), got {c.dropout}")
    if c.base_quantization not in QUANTIZATIONS:
        _fail("base_quantization", unknown_name("quantization", c.base_quantization, QUANTIZATIONS))
    if c.base_dtype not in BASE_DTYPES:
        _fail("base_dtype", unknown_name("dtype", c.base_dtype, BASE_DTYPES))
    values = dict(rank=rank, alpha=float(c.alpha), dropout=float(c.dropout),
                  target_modules=parse_targets(c.target_modules), use_rslora=bool(c.use_rslora),
                  base_quantization=c.base_quantization, base_dtype=c.base_dtype,
                  quant_block_size=c.quant_block_size, init_adapter=c.init_adapter)
    if c.init_adapter:
        adapter = read_adapter_config(c.init_adapter, "config.lora.init_adapter")
        if rank and rank != adapter["r"]:
            _fail("rank", f"{rank} differs from the rank {adapter['r']} of the adapter in {c.init_adapter} "
                          "(set it to 0 or to the adapter's rank)")
        values.update(rank=adapter["r"], alpha=adapter["lora_alpha"], target_modules=adapter["targets"],
                      use_rslora=adapter["use_rslora"], init_adapter=os.path.abspath(c.init_adapter))
    lora = LoRAConfig(**values)
    if not lora.enabled and lora.base_quantization != "none":
        _fail("base_quantization", "quantizing the base needs LoRA (set config.lora.rank > 0)")
    if lora.base_quantization != "none":
        block = lora.quant_block_size
        if not isinstance(block, int) or block < 2 or block % 2:
            _fail("quant_block_size", f"must be an even integer >= 2, got {block!r}")
        for name in TARGETS:
            n_in = projection_shape(model, name)[0]
            if n_in % block:
                _fail("quant_block_size", f"{block} does not divide the {n_in} inputs of {name}")
    return lora


def read_adapter_config(directory: str, where: str = "--adapter") -> dict[str, Any]:
    """A PEFT adapter_config.json, checked for what we support: LoRA on our target modules, no bias, DoRA,
    per-module ranks or extra trained modules. Returns it with `targets` (our names) added."""
    path = os.path.join(directory, "adapter_config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"{where}: {directory} has no adapter_config.json (not a PEFT adapter directory)")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a JSON object")
    if data.get("peft_type") != "LORA":
        raise ConfigError(f"{path}: peft_type is {data.get('peft_type')!r}; only LORA adapters are supported")
    for key, kind in (("r", int), ("lora_alpha", (int, float))):
        value = data.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{path}: {key} must be a positive number, got {json.dumps(value)}")
    dropout = data.setdefault("lora_dropout", 0.0) or 0.0
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"{path}: lora_dropout must be a number in [0, 1), got {json.dumps(dropout)}")
    data["lora_dropout"] = float(dropout)
    unsupported = {"use_dora": True, "bias": lambda v: v not in (None, "none"),
                   "modules_to_save": lambda v: bool(v), "rank_pattern": lambda v: bool(v),
                   "alpha_pattern": lambda v: bool(v), "layers_to_transform": lambda v: v is not None,
                   "lora_bias": True, "layer_replication": lambda v: bool(v)}
    for key, bad in unsupported.items():
        if key in data and (bad(data[key]) if callable(bad) else data[key] == bad):
            raise ConfigError(f"{path}: {key}={data[key]!r} is not supported (plain LoRA on the "
                              "attention/MLP projections only)")
    targets = data.get("target_modules")
    if isinstance(targets, str) and targets != "all-linear":
        raise ConfigError(f"{path}: target_modules as a regular expression ({targets!r}) is not supported; "
                          "list the module names")
    data["targets"] = parse_targets(targets or [], f"{path}: target_modules")
    data["use_rslora"] = bool(data.get("use_rslora", False))
    return data
