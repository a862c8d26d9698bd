"""Typed LLaMA architecture config: presets and Hugging Face `config.json` conversion.

`LlamaConfig` holds only what defines the network (what HF's config.json holds). How the network is run
(compute dtype, scan, remat, attention backend) is chosen when the model is built, so one checkpoint can be
run many ways.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from vicuna_jax.cli import UserError


class ConfigError(UserError):
    """A config value is missing, unsupported or inconsistent; the message names the key."""


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """LLaMA-1/2 architecture. Field names follow the paper/HF meaning; see `from_hf_config` for the keys."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int | None = None  # None: = num_heads; fewer: grouped-query attention (LLaMA-2 70B: 8).
    head_dim: int | None = None  # None: hidden_size // num_heads.
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rope_scaling_factor: float = 1.0  # linear position interpolation: positions are divided by this.
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
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

    def replace(self, **changes: Any) -> LlamaConfig:
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Parameter count (embeddings and head included)."""
        d, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
        hd = self.dim_per_head
        attn = d * hd * (self.num_heads * 2 + self.num_kv_heads * 2)
        per_layer = attn + 3 * d * f + 2 * d
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
        archs = hf.get("architectures") or ["LlamaForCausalLM"]
        model_type = hf.get("model_type", "llama")
        if model_type != "llama" or not any(a == "LlamaForCausalLM" for a in archs):
            raise ConfigError(
                f"{source}: unsupported architecture (model_type={model_type!r}, architectures={archs}); "
                "only LlamaForCausalLM is supported")
        for key, ok in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
            if key in hf and hf[key] != ok:
                raise ConfigError(f"{source}: unsupported {key}={hf[key]!r} (expected {ok!r})")
        rope_theta, _, factor = _rope_from_hf(hf, source)

        def need(key: str) -> Any:
            if key not in hf:
                raise ConfigError(f"{source}: missing required key {key!r}")
            return hf[key]

        num_heads = need("num_attention_heads")
        head_dim = hf.get("head_dim")
        if head_dim is not None and head_dim * num_heads == need("hidden_size"):
            head_dim = None  # the default; keeps configs from different sources equal
        eos = hf.get("eos_token_id", 2)
        if isinstance(eos, list):
            eos = eos[0]
        return cls(
            vocab_size=need("vocab_size"),
            hidden_size=need("hidden_size"),
            intermediate_size=need("intermediate_size"),
            num_layers=need("num_hidden_layers"),
            num_heads=num_heads,
            num_kv_heads=hf.get("num_key_value_heads") or num_heads,
            head_dim=head_dim,
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            rope_theta=float(rope_theta),
            rope_scaling_factor=float(factor),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            bos_token_id=hf.get("bos_token_id", 1) if hf.get("bos_token_id") is not None else 1,
            eos_token_id=eos if eos is not None else 2,
            pad_token_id=hf.get("pad_token_id"),
        )

    def to_hf_config(self, torch_dtype: str = "float32") -> dict[str, Any]:
        """The HF `config.json` dict; carries both transformers-5 and older rope keys."""
        rope_parameters: dict[str, Any] = {"rope_theta": self.rope_theta, "rope_type": "default"}
        rope_scaling = None
        if self.rope_scaling_factor != 1.0:
            rope_parameters.update(rope_type="linear", factor=self.rope_scaling_factor)
            rope_scaling = {"type": "linear", "rope_type": "linear", "factor": self.rope_scaling_factor}
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
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
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "initializer_range": 0.02,
            "use_cache": True,
            "torch_dtype": torch_dtype,
            "dtype": torch_dtype,
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LlamaConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown LlamaConfig keys: {unknown}")
        return cls(**d)


def _rope_from_hf(hf: dict[str, Any], source: str) -> tuple[float, str, float]:
    """(theta, type, linear factor) from transformers-5 `rope_parameters` and/or legacy keys."""
    readings = []
    if hf.get("rope_parameters"):
        p = hf["rope_parameters"]
        readings.append(("rope_parameters", p.get("rope_theta", hf.get("rope_theta", 10000.0)),
                         p.get("rope_type") or p.get("type") or "default", p.get("factor", 1.0)))
    if "rope_theta" in hf or hf.get("rope_scaling"):
        s = hf.get("rope_scaling") or {}
        readings.append(("rope_theta/rope_scaling", hf.get("rope_theta", 10000.0),
                         s.get("rope_type") or s.get("type") or "default", s.get("factor", 1.0)))
    if not readings:
        readings.append(("defaults", 10000.0, "default", 1.0))
    for _, _, rope_type, _ in readings:
        if rope_type not in ("default", "linear"):
            raise ConfigError(f"{source}: unsupported rope scaling type {rope_type!r} "
                              "(supported: none/default, linear)")
    normal = {(float(t), kind, float(f) if kind == "linear" else 1.0) for _, t, kind, f in readings}
    if len(normal) > 1:
        raise ConfigError(f"{source}: rope_parameters and rope_theta/rope_scaling disagree: {readings}")
    theta, kind, factor = normal.pop()
    return theta, kind, factor


_LLAMA1 = dict(vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-6)
_LLAMA2 = dict(vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5)

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
    # The CPU demo: matches the bundled 4096-piece tokenizer.
    "tiny": LlamaConfig(vocab_size=4096, hidden_size=256, intermediate_size=688, num_layers=4,
                        num_heads=8, num_kv_heads=4, max_position_embeddings=1024, rms_norm_eps=1e-5),
}


def get_preset(name: str) -> LlamaConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}") from None
