"""Typed architecture config for the LLaMA family of decoders: presets and Hugging Face `config.json`.

`LlamaConfig` holds only what defines the network (what HF's config.json holds). How the network is run
(compute dtype, scan, remat, attention backend) is chosen when the model is built, so one checkpoint can be
run many ways.

One network covers four HF architectures; `architecture` names the HF class and implies its switches:

| architecture | HF class             | differs from LLaMA by                                         |
|--------------|----------------------|---------------------------------------------------------------|
| `llama`      | `LlamaForCausalLM`   | (LLaMA-1/2/3.x: RoPE `default`, `linear` or `llama3` scaling)  |
| `mistral`    | `MistralForCausalLM` | sliding-window attention (`sliding_window`, None = full)      |
| `qwen2`      | `Qwen2ForCausalLM`   | biases on the q/k/v projections                                |
| `qwen3`      | `Qwen3ForCausalLM`   | per-head RMSNorm on q and k before RoPE, explicit `head_dim`   |
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from vicuna_jax.cli import UserError, unknown_name


class ConfigError(UserError):
    """A config value is missing, unsupported or inconsistent; the message names the key."""


# architecture -> HF `architectures[0]` (the HF `model_type` is the architecture name itself).
HF_CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
              "qwen3": "Qwen3ForCausalLM"}
ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """A LLaMA-family decoder. Field names follow the paper/HF meaning; see `from_hf_config` for the keys."""

    architecture: str = "llama"  # a key of HF_CLASSES
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int | None = None  # None: = num_heads; fewer: grouped-query attention (LLaMA-2 70B: 8).
    head_dim: int | None = None  # None: hidden_size // num_heads.
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rope_type: str = "default"  # default | linear (positions / factor) | llama3 (per-frequency scaling)
    rope_scaling_factor: float = 1.0  # linear: positions are divided by this; llama3: `factor`.
    rope_low_freq_factor: float = 1.0  # llama3 only
    rope_high_freq_factor: float = 4.0  # llama3 only
    rope_original_max_position_embeddings: int = 8192  # llama3 only
    sliding_window: int | None = None  # each token sees itself and the previous sliding_window - 1 tokens
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int = 2
    extra_eos_token_ids: tuple[int, ...] = ()  # more ids that end generation (Llama-3's <|eot_id|>, ...)
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        if self.architecture not in HF_CLASSES:
            raise ConfigError(f"architecture: {unknown_name('architecture', self.architecture, HF_CLASSES)}")
        if self.rope_type == "default" and self.rope_scaling_factor != 1.0:
            object.__setattr__(self, "rope_type", "linear")  # configs written before rope_type existed
        if self.rope_type not in ROPE_TYPES:
            raise ConfigError(f"rope_type: {unknown_name('rope type', self.rope_type, ROPE_TYPES)}")
        object.__setattr__(self, "extra_eos_token_ids", tuple(
            i for i in dict.fromkeys(int(i) for i in self.extra_eos_token_ids) if i != self.eos_token_id))
        if self.sliding_window is not None and (not isinstance(self.sliding_window, int)
                                                or self.sliding_window <= 0):
            raise ConfigError(f"sliding_window must be a positive integer or None, got "
                              f"{self.sliding_window!r}")
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                    "num_kv_heads", "max_position_embeddings"):
            value = getattr(self, key)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{key} must be a positive integer, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ConfigError(
                f"hidden_size ({self.hidden_size}) is not divisible by num_heads ({self.num_heads}); "
                "set head_dim explicitly")
        if self.dim_per_head % 2:
            raise ConfigError(f"head_dim must be even for RoPE, got {self.dim_per_head}")
        if self.rope_theta <= 0:
            raise ConfigError(f"rope_theta must be positive, got {self.rope_theta}")
        if self.rope_scaling_factor < 1.0:
            raise ConfigError(f"rope_scaling_factor must be >= 1, got {self.rope_scaling_factor}")

    @property
    def dim_per_head(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads

    @property
    def qkv_bias(self) -> bool:
        """Biases on the q/k/v projections (Qwen2)."""
        return self.architecture == "qwen2"

    @property
    def qk_norm(self) -> bool:
        """Per-head RMSNorm on queries and keys before RoPE (Qwen3)."""
        return self.architecture == "qwen3"

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Every id that ends generation: `eos_token_id` first."""
        return (self.eos_token_id, *self.extra_eos_token_ids)

    def replace(self, **changes: Any) -> LlamaConfig:
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Parameter count (embeddings and head included)."""
        d, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
        hd = self.dim_per_head
        attn = d * hd * (self.num_heads * 2 + self.num_kv_heads * 2)
        per_layer = attn + 3 * d * f + 2 * d
        per_layer += (self.num_heads + 2 * self.num_kv_heads) * hd if self.qkv_bias else 0
        per_layer += 2 * hd if self.qk_norm else 0
        head = 0 if self.tie_word_embeddings else d * v
        return v * d + self.num_layers * per_layer + d + head

    # ---- Hugging Face config.json ----

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any] | str | os.PathLike) -> LlamaConfig:
        """Builds a config from an HF `config.json` dict, file, or directory containing one.

        Accepts both the transformers<5 keys (`rope_theta`, `rope_scaling`) and transformers 5's
        `rope_parameters`. Anything this model cannot represent raises `ConfigError` naming the key.
        """
        source = "config"
        if not isinstance(hf, dict):
            path = os.fspath(hf)
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            source = path
            try:
                with open(path) as f:
                    hf = json.load(f)
            except FileNotFoundError:
                raise ConfigError(f"no config.json at {path}") from None
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}: invalid JSON: {e}") from None
        if not isinstance(hf, dict):
            raise ConfigError(f"{source}: must hold a JSON object (a model config), got "
                              f"{json.dumps(hf)[:40]}")
        model_type = hf.get("model_type", "llama")
        archs = hf.get("architectures") or [HF_CLASSES.get(model_type, "LlamaForCausalLM")]
        if not isinstance(model_type, str):
            raise ConfigError(f"{source}: model_type must be a string, got {json.dumps(model_type)}")
        if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
            raise ConfigError(f"{source}: architectures must be a list of class names, got "
                              f"{json.dumps(archs)}")
        if model_type not in HF_CLASSES or archs[0] != HF_CLASSES[model_type]:
            supported = ", ".join(f"{k}/{v}" for k, v in HF_CLASSES.items())
            raise ConfigError(
                f"{source}: unsupported architecture (model_type={model_type!r}, architectures={archs}); "
                f"supported model_type/architectures: {supported}")
        unsupported = [("hidden_act", "silu"), ("mlp_bias", False)]
        if model_type in ("llama", "qwen3"):
            unsupported.append(("attention_bias", False))  # True there also means an o_proj bias
        for key, ok in unsupported:
            if key in hf and hf[key] != ok:
                raise ConfigError(f"{source}: unsupported {key}={hf[key]!r} (expected {ok!r})")
        rope = _rope_from_hf(hf, source)
        sizes = {key: _hf_int(hf, key, source) for key in ("vocab_size", "hidden_size", "intermediate_size",
                                                            "num_hidden_layers", "num_attention_heads")}
        num_heads = sizes["num_attention_heads"]
        num_kv_heads = _hf_int(hf, "num_key_value_heads", source, None, nullable=True) or num_heads
        if num_heads % num_kv_heads:
            raise ConfigError(f"{source}: num_attention_heads ({num_heads}) must be a multiple of "
                              f"num_key_value_heads ({num_kv_heads})")
        head_dim = _hf_int(hf, "head_dim", source, None, nullable=True)
        if head_dim is not None and head_dim * num_heads == sizes["hidden_size"]:
            head_dim = None  # the default; keeps configs from different sources equal
        eos = hf.get("eos_token_id", 2 if model_type == "llama" else None)
        if eos is None or eos == []:
            raise ConfigError(f"{source}: eos_token_id is missing or null; set it to the end-of-text id")
        eos = eos if isinstance(eos, list) else [eos]
        if not all(_is_int(i) and i >= 0 for i in eos):
            raise ConfigError(f"{source}: eos_token_id must be a token id (a non-negative integer) or a list "
                              f"of them, got {json.dumps(hf['eos_token_id'])}")
        tie = hf.get("tie_word_embeddings", False)
        if not isinstance(tie, bool):
            raise ConfigError(f"{source}: tie_word_embeddings must be true or false, got {json.dumps(tie)}")
        try:
            return cls(
                architecture=model_type,
                vocab_size=sizes["vocab_size"],
                hidden_size=sizes["hidden_size"],
                intermediate_size=sizes["intermediate_size"],
                num_layers=sizes["num_hidden_layers"],
                num_heads=num_heads,
                num_kv_heads=num_kv_heads,
                head_dim=head_dim,
                max_position_embeddings=_hf_int(hf, "max_position_embeddings", source, 2048),
                **rope,
                sliding_window=_sliding_window_from_hf(hf, model_type, source),
                rms_norm_eps=_hf_number(hf, "rms_norm_eps", source, 1e-6),
                tie_word_embeddings=tie,
                bos_token_id=_hf_int(hf, "bos_token_id", source, 1 if model_type == "llama" else None,
                                     minimum=0, nullable=True),
                eos_token_id=eos[0],
                extra_eos_token_ids=tuple(eos[1:]),
                pad_token_id=_hf_int(hf, "pad_token_id", source, None, minimum=None, nullable=True),
            )
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    def to_hf_config(self, torch_dtype: str = "float32") -> dict[str, Any]:
        """The HF `config.json` dict of `architecture`; carries both transformers-5 and older rope keys."""
        rope_parameters: dict[str, Any] = {"rope_theta": self.rope_theta, "rope_type": self.rope_type}
        rope_scaling = None
        if self.rope_type != "default":
            rope_parameters["factor"] = self.rope_scaling_factor
            if self.rope_type == "llama3":
                rope_parameters.update(low_freq_factor=self.rope_low_freq_factor,
                                       high_freq_factor=self.rope_high_freq_factor,
                                       original_max_position_embeddings=self.rope_original_max_position_embeddings)
            rope_scaling = {k: v for k, v in rope_parameters.items() if k != "rope_theta"}
            rope_scaling["type"] = self.rope_type
        out: dict[str, Any] = {
            "architectures": [HF_CLASSES[self.architecture]],
            "model_type": self.architecture,
            "hidden_act": "silu",
        }
        if self.architecture in ("llama", "qwen3"):
            out.update(attention_bias=False)
        if self.architecture == "llama":
            out.update(mlp_bias=False)
        if self.architecture == "mistral":
            out.update(sliding_window=self.sliding_window)
        if self.architecture in ("qwen2", "qwen3"):
            sliding = self.sliding_window is not None
            out.update(use_sliding_window=sliding, sliding_window=self.sliding_window,
                       max_window_layers=0 if sliding else self.num_layers,
                       layer_types=[("sliding" if sliding else "full") + "_attention"] * self.num_layers)
        eos: int | list[int] = list(self.eos_token_ids) if self.extra_eos_token_ids else self.eos_token_id
        out.update({
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.dim_per_head,
            "max_position_embeddings": self.max_position_embeddings,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "rope_parameters": rope_parameters,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": self.pad_token_id,
            "initializer_range": 0.02,
            "use_cache": True,
            "torch_dtype": torch_dtype,
            "dtype": torch_dtype,
        })
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LlamaConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown LlamaConfig keys: {unknown}")
        d = dict(d)
        if "extra_eos_token_ids" in d:  # JSON gives back a list
            d["extra_eos_token_ids"] = tuple(d["extra_eos_token_ids"])
        return cls(**d)


# One line per LlamaConfig field: what it means (the trainer's `--help` shows these for
# `config.model_overrides.<field>`; tests/train/test_train_cli.py checks that every field has one).
FIELD_HELP: dict[str, str] = {
    "architecture": f"HF model class: {', '.join(HF_CLASSES)} (implies q/k/v bias, q/k norm)",
    "vocab_size": "rows of the embedding and the LM head (at least the tokenizer's pieces)",
    "hidden_size": "width of the residual stream",
    "intermediate_size": "width of the SwiGLU MLP",
    "num_layers": "decoder layers",
    "num_heads": "query heads",
    "num_kv_heads": "key/value heads (fewer than num_heads = grouped-query attention; unset = num_heads)",
    "head_dim": "width of one head (unset = hidden_size // num_heads)",
    "max_position_embeddings": "longest context the model is built for (seq_len must not exceed it)",
    "rope_theta": "RoPE base frequency",
    "rope_type": f"RoPE scaling: {', '.join(ROPE_TYPES)}",
    "rope_scaling_factor": "linear: positions divided by this; llama3: its `factor`",
    "rope_low_freq_factor": "llama3 RoPE scaling only: low-frequency factor",
    "rope_high_freq_factor": "llama3 RoPE scaling only: high-frequency factor",
    "rope_original_max_position_embeddings": "llama3 RoPE scaling only: the context before scaling",
    "sliding_window": "each token attends to itself and this many - 1 before it (unset = full attention)",
    "rms_norm_eps": "epsilon of every RMSNorm",
    "tie_word_embeddings": "the LM head reuses the embedding matrix",
    "bos_token_id": "beginning-of-sequence id (unset = none)",
    "eos_token_id": "end-of-sequence id",
    "extra_eos_token_ids": "more ids that end generation (e.g. Llama-3's <|eot_id|>)",
    "pad_token_id": "padding id written to config.json (unset = none)",
}


_LLAMA3_ROPE_KEYS = {"low_freq_factor": "rope_low_freq_factor", "high_freq_factor": "rope_high_freq_factor",
                     "original_max_position_embeddings": "rope_original_max_position_embeddings"}


def _rope_from_hf(hf: dict[str, Any], source: str) -> dict[str, Any]:
    """LlamaConfig rope fields from transformers-5 `rope_parameters` and/or the legacy keys (which agree)."""
    for key in ("rope_parameters", "rope_scaling"):
        if hf.get(key) and not isinstance(hf[key], dict):
            raise ConfigError(f"{source}: {key} must be an object, got {json.dumps(hf[key])}")
    readings = []
    if hf.get("rope_parameters"):
        p = hf["rope_parameters"]
        theta = _hf_number(p, "rope_theta", f"{source}: rope_parameters", hf.get("rope_theta", 10000.0))
        readings.append(("rope_parameters", theta, p))
    if "rope_theta" in hf or hf.get("rope_scaling"):
        legacy = hf.get("rope_scaling") or {}
        readings.append(("rope_theta/rope_scaling", _hf_number(hf, "rope_theta", source, 10000.0), legacy))
    if not readings:
        readings.append(("defaults", 10000.0, {}))
    normal = set()
    for key, theta, p in readings:
        kind = p.get("rope_type") or p.get("type") or "default"
        if kind not in ROPE_TYPES:
            raise ConfigError(f"{source}: unsupported rope scaling type {kind!r} in {key} "
                              f"(supported: none/default, linear, llama3)")
        fields: dict[str, Any] = {"rope_theta": theta, "rope_type": kind}
        where = f"{source}: {key}"
        if kind != "default":
            fields["rope_scaling_factor"] = _hf_number(p, "factor", where, 1.0)
        if kind == "llama3":
            for hf_key, field in _LLAMA3_ROPE_KEYS.items():
                if hf_key not in p:
                    raise ConfigError(f"{source}: {key} of type 'llama3' needs {hf_key!r}")
                is_int = isinstance(getattr(LlamaConfig, field), int)
                fields[field] = _hf_int(p, hf_key, where) if is_int else _hf_number(p, hf_key, where, None)
        normal.add(tuple(sorted(fields.items())))
    if len(normal) > 1:
        raise ConfigError(f"{source}: rope_parameters and rope_theta/rope_scaling disagree: "
                          f"{[(k, t, p) for k, t, p in readings]}")
    return dict(normal.pop())


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_MISSING = object()


def _hf_int(hf: dict[str, Any], key: str, source: str, default: Any = _MISSING, *, minimum: int | None = 1,
            nullable: bool = False) -> Any:
    """hf[key] (or `default`) checked to be an integer >= `minimum` (None: any), or null when `nullable`."""
    value = hf.get(key, default)
    if value is _MISSING:
        raise ConfigError(f"{source}: missing required key {key!r}")
    if (value is None and nullable) or (_is_int(value) and (minimum is None or value >= minimum)):
        return value
    what = {1: "a positive integer", 0: "a non-negative integer", None: "an integer"}[minimum]
    raise ConfigError(f"{source}: {key} must be {what}{' or null' if nullable else ''}, got "
                      f"{json.dumps(value)}")


def _hf_number(hf: dict[str, Any], key: str, source: str, default: Any) -> float:
    """hf[key] (or `default`) checked to be a finite positive number."""
    value = hf.get(key, default)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{source}: {key} must be a positive number, got {json.dumps(value)}")
    return float(value)


def _sliding_window_from_hf(hf: dict[str, Any], model_type: str, source: str) -> int | None:
    """The one window all layers share (None = full attention); per-layer mixes are refused."""
    if model_type == "llama":
        return None
    window = hf.get("sliding_window")
    if model_type in ("qwen2", "qwen3") and not hf.get("use_sliding_window", False):
        window = None  # transformers ignores sliding_window unless use_sliding_window is set
    layers = hf.get("num_hidden_layers", 0)
    layer_types = hf.get("layer_types")
    if layer_types is None:
        first_sliding = (_hf_int(hf, "max_window_layers", source, layers, minimum=0)
                         if model_type != "mistral" else 0)
        layer_types = ["sliding_attention" if i >= first_sliding else "full_attention" for i in range(layers)]
    if not isinstance(layer_types, list) or not all(isinstance(t, str) for t in layer_types):
        raise ConfigError(f"{source}: layer_types must be a list of strings, got {json.dumps(layer_types)}")
    kinds = set(layer_types) if window is not None else {"full_attention"}
    if kinds - {"full_attention", "sliding_attention"}:
        raise ConfigError(f"{source}: unsupported layer_types {sorted(kinds)}")
    if len(kinds) > 1:
        raise ConfigError(f"{source}: unsupported layer_types/max_window_layers: some layers use a sliding "
                          "window and others full attention; only one kind for all layers is supported")
    if kinds == {"full_attention"}:
        return None
    return _hf_int(hf, "sliding_window", source)


_LLAMA1 = dict(vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-6)
_LLAMA2 = dict(vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5)
_LLAMA3 = dict(vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5, num_kv_heads=8,
               rope_theta=500000.0, rope_type="llama3", rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
               rope_original_max_position_embeddings=8192, bos_token_id=128000, eos_token_id=128001,
               extra_eos_token_ids=(128008, 128009))
_LLAMA3_SHAPES = {
    "llama3_1_8b": dict(hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
                        rope_scaling_factor=8.0),
    "llama3_1_70b": dict(hidden_size=8192, intermediate_size=28672, num_layers=80, num_heads=64,
                         rope_scaling_factor=8.0),
    "llama3_2_1b": dict(hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32,
                        rope_scaling_factor=32.0, tie_word_embeddings=True),
    "llama3_2_3b": dict(hidden_size=3072, intermediate_size=8192, num_layers=28, num_heads=24,
                        rope_scaling_factor=32.0, tie_word_embeddings=True),
}
_TINY = dict(vocab_size=4096, hidden_size=256, intermediate_size=688, num_layers=4, num_heads=8,
             num_kv_heads=4, max_position_embeddings=1024, rms_norm_eps=1e-5)
_TINY_FAMILIES = {
    "llama3": dict(rope_theta=500000.0, rope_type="llama3", rope_scaling_factor=8.0,
                   rope_original_max_position_embeddings=256, tie_word_embeddings=True),
    "mistral": dict(architecture="mistral", sliding_window=64),
    "qwen2": dict(architecture="qwen2", rope_theta=1e6, bos_token_id=None),
    "qwen3": dict(architecture="qwen3", head_dim=64, rope_theta=1e6, bos_token_id=None),
}
_QWEN3 = dict(architecture="qwen3", vocab_size=151936, head_dim=128, num_kv_heads=8,
              max_position_embeddings=40960, rope_theta=1e6, bos_token_id=None, eos_token_id=151645,
              extra_eos_token_ids=(151643,))
_QWEN3_SHAPES = {
    "qwen3_0_6b": dict(hidden_size=1024, intermediate_size=3072, num_layers=28, num_heads=16,
                       tie_word_embeddings=True),
    "qwen3_4b": dict(hidden_size=2560, intermediate_size=9728, num_layers=36, num_heads=32,
                     tie_word_embeddings=True),
    "qwen3_8b": dict(hidden_size=4096, intermediate_size=12288, num_layers=36, num_heads=32),
    "qwen3_14b": dict(hidden_size=5120, intermediate_size=17408, num_layers=40, num_heads=40),
}

PRESETS: dict[str, LlamaConfig] = {
    "llama1_7b": LlamaConfig(**_LLAMA1, hidden_size=4096, intermediate_size=11008, num_layers=32,
                             num_heads=32, num_kv_heads=32),
    "llama1_13b": LlamaConfig(**_LLAMA1, hidden_size=5120, intermediate_size=13824, num_layers=40,
                              num_heads=40, num_kv_heads=40),
    "llama1_33b": LlamaConfig(**_LLAMA1, hidden_size=6656, intermediate_size=17920, num_layers=60,
                              num_heads=52, num_kv_heads=52),
    "llama1_65b": LlamaConfig(**_LLAMA1, hidden_size=8192, intermediate_size=22016, num_layers=80,
                              num_heads=64, num_kv_heads=64),
    "llama2_7b": LlamaConfig(**_LLAMA2, hidden_size=4096, intermediate_size=11008, num_layers=32,
                             num_heads=32, num_kv_heads=32),
    "llama2_13b": LlamaConfig(**_LLAMA2, hidden_size=5120, intermediate_size=13824, num_layers=40,
                              num_heads=40, num_kv_heads=40),
    "llama2_70b": LlamaConfig(**_LLAMA2, hidden_size=8192, intermediate_size=28672, num_layers=80,
                              num_heads=64, num_kv_heads=8),
    # Llama-3.x (128K vocab, GQA 8 KV heads, llama3 RoPE scaling; 3.2 1B/3B tie the embeddings).
    **{name: LlamaConfig(**_LLAMA3, **shape) for name, shape in _LLAMA3_SHAPES.items()},
    # Mistral-7B-v0.1 (sliding window 4096).
    "mistral_7b": LlamaConfig(architecture="mistral", vocab_size=32000, hidden_size=4096,
                              intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8,
                              max_position_embeddings=32768, sliding_window=4096, rms_norm_eps=1e-5),
    # Qwen2.5 (q/k/v biases) and Qwen3 (q/k norms, head_dim 128).
    "qwen2_5_7b": LlamaConfig(architecture="qwen2", vocab_size=152064, hidden_size=3584,
                              intermediate_size=18944, num_layers=28, num_heads=28, num_kv_heads=4,
                              max_position_embeddings=32768, rope_theta=1e6, bos_token_id=None,
                              eos_token_id=151645, extra_eos_token_ids=(151643,)),
    **{name: LlamaConfig(**_QWEN3, **shape) for name, shape in _QWEN3_SHAPES.items()},
    # Tiny versions of each family (CPU tests and demos; vocab of the bundled tokenizer).
    **{f"tiny_{name}": LlamaConfig(**_TINY, **switches) for name, switches in _TINY_FAMILIES.items()},
    # The CPU demo: matches the bundled 4096-piece tokenizer.
    "tiny": LlamaConfig(vocab_size=4096, hidden_size=256, intermediate_size=688, num_layers=4,
                        num_heads=8, num_kv_heads=4, max_position_embeddings=1024, rms_norm_eps=1e-5),
}


def get_preset(name: str) -> LlamaConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(unknown_name("model preset", name, sorted(PRESETS))) from None
