"""LoRA on the NNX LLaMA, as a model transformation: `attach` swaps the decoder projections for
`LoRALinear`s, which compute `x W + scale * (dropout(x) A) B` without ever forming `W + scale A B`.

The frozen base kernel W is held as it was (in the base dtype) or quantized (int8 / nf4 codes and scales,
dequantized one layer at a time inside the layer loop). A `[in, r]` and B `[r, out]` are `LoRAParam`s, a
variable type of their own, so the parameter tree splits cleanly into what trains (`LoRAParam`) and what
does not (`nnx.Param`: the base). Layers stay stacked (a leading `layers` axis on every variable, adapters
included), so the model's Python loop or `lax.scan` over layers slices adapters like any other weight.

Dropout (PEFT's lora_dropout, on the adapters' input) needs randomness inside the layer loop: a training
model carries a `DropoutKey` per adapted projection (`[L, 2]` key data), which the training step fills from
(seed, step, micro-batch) before each call, so masks are reproducible on resume and on any mesh.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vicuna_jax.lora import quantize as quant
from vicuna_jax.lora.config import TARGETS, LoRAConfig
from vicuna_jax.model.config import LlamaConfig

_TARGET_INDEX = {name: i for i, name in enumerate(TARGETS)}


class LoRAParam(nnx.Variable):
    """A trainable low-rank factor (A or B) of a LoRA adapter."""


class DropoutKey(nnx.Variable):
    """Per-layer PRNG key data `[L, 2]` for an adapter's dropout; set by the training step, never saved."""


def adapter_key(seed: int, name: str) -> jax.Array:
    """The key A of projection `name` is drawn from (the same built concretely or by `init_adapters`)."""
    return jax.random.fold_in(jax.random.key(seed), 1 + _TARGET_INDEX[name])


def init_lora_a(key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
    """PEFT's init of A (kaiming_uniform(a=sqrt(5)) on its [r, in] weight): U(-1/sqrt(in), 1/sqrt(in))."""
    bound = 1.0 / float(shape[-2]) ** 0.5
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound).astype(dtype)


class LoRALinear(nnx.Module):
    """A frozen projection (kernel `[.., in, out]`, possibly quantized) with an optional LoRA adapter."""

    def __init__(self, kernel: nnx.Variable, *, name: str, lora: LoRAConfig, dtype: Any, adapter_dtype: Any,
                 training: bool, seed: int = 0):
        value = kernel[...]
        axes = tuple(kernel.get_metadata().get("out_sharding") or (None,) * value.ndim)
        *lead, n_in, n_out = value.shape
        self.name = name
        self.dtype = dtype
        self.quantization = lora.base_quantization
        self.block = lora.quant_block_size
        if self.quantization == "none":
            self.kernel = nnx.Param(value.astype(lora.base_dtype), out_sharding=axes, eager_sharding=False)
        else:
            quantize = quant.quantize_stacked if lead else quant.quantize
            codes, scales = quantize(value, self.quantization, self.block)
            self.codes = nnx.Param(codes, out_sharding=axes, eager_sharding=False)
            self.scales = nnx.Param(scales, out_sharding=axes, eager_sharding=False)
        self.rank = lora.rank if lora.targeted(name) else 0
        self.scale = lora.scale
        self.dropout = lora.dropout if training else 0.0
        if self.rank:
            lead_axes = axes[:-2]
            a_init = init_lora_a(adapter_key(seed, name), (*lead, n_in, self.rank), adapter_dtype)
            self.lora_a = LoRAParam(a_init, out_sharding=(*lead_axes, axes[-2], None), eager_sharding=False)
            self.lora_b = LoRAParam(jnp.zeros((*lead, self.rank, n_out), adapter_dtype),
                                    out_sharding=(*lead_axes, None, axes[-1]), eager_sharding=False)
            if self.dropout > 0:
                self.dropout_key = DropoutKey(jnp.zeros((*lead, 2), jnp.uint32),
                                              out_sharding=(*lead_axes, None), eager_sharding=False)

    def weight(self) -> jax.Array:
        """The base kernel `[in, out]` in the compute dtype."""
        if self.quantization == "none":
            return self.kernel[...].astype(self.dtype)
        return quant.dequantize(self.codes[...], self.scales[...], self.quantization, self.block, self.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        lead = x.shape[:-1]
        x_NxI = x.reshape(-1, x.shape[-1]).astype(self.dtype)  # 2-D matmuls, as `llama.Linear` (why: there)
        y_NxO = jnp.dot(x_NxI, self.weight())
        if self.rank:
            h_NxI = x_NxI
            if self.dropout > 0:
                keep, rate = dropout_mask(jax.random.wrap_key_data(self.dropout_key[...]), h_NxI.shape,
                                          self.dropout)
                h_NxI = jnp.where(keep, h_NxI / (1.0 - rate), 0).astype(self.dtype)
            h_NxR = jnp.dot(h_NxI, self.lora_a[...].astype(self.dtype)) * self.scale
            y_NxO = y_NxO + jnp.dot(h_NxR.astype(self.dtype), self.lora_b[...].astype(self.dtype))
        return y_NxO.reshape(*lead, -1)


def dropout_mask(key: jax.Array, shape: tuple[int, ...], rate: float) -> tuple[jax.Array, float]:
    """(keep mask, the exact drop rate): 16 random bits per element, two per 32-bit threefry word.

    `bernoulli` spends a whole 32-bit draw per element and threefry dominates: on a 2-core CPU it made a
    20M model's LoRA step 20% slower; half the draws halve that. The rate is resolved to 1/65536 and the
    kept values are scaled by the exact resolved rate, so the expectation is unchanged."""
    threshold = round(rate * 65536)
    if shape[-1] % 2:
        return jax.random.bernoulli(key, 1.0 - rate, shape), rate
    words = jax.random.bits(key, (*shape[:-1], shape[-1] // 2), jnp.uint32)
    halves = jax.lax.bitcast_convert_type(words, jnp.uint16).reshape(shape)
    return halves >= threshold, threshold / 65536


def attach(model: Any, lora: LoRAConfig, *, training: bool = False, seed: int = 0,
           adapter_dtype: Any = jnp.float32) -> Any:
    """Turns a `Llama` into its LoRA model in place (and returns it): the projections of `lora.replaced()`
    become `LoRALinear`s (adapters on the targets; quantized kernels when the base is quantized) and every
    other floating base weight is cast to `lora.base_dtype`. Works on abstract models (`nnx.eval_shape`)."""
    for name in lora.replaced():
        group, proj = TARGETS[name]
        parent = getattr(model.layers, group)
        base = getattr(parent, proj)
        setattr(parent, proj, LoRALinear(base.kernel, name=name, lora=lora, dtype=base.dtype,
                                         adapter_dtype=adapter_dtype, training=training, seed=seed))
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        value = var[...]
        if path[-1] != "scales" and jnp.issubdtype(value.dtype, jnp.floating):
            var.set_value(value.astype(lora.base_dtype))
    return model


def abstract_lora_model(cfg: LlamaConfig, lora: LoRAConfig, *, training: bool, seed: int = 0,
                        **options: Any) -> Any:
    """The LoRA model with ShapeDtypeStruct leaves (nothing allocated, nothing quantized)."""
    from vicuna_jax.model.llama import build_model

    adapter_dtype = options.get("param_dtype", jnp.float32)
    return nnx.eval_shape(lambda: attach(build_model(cfg, **options), lora, training=training, seed=seed,
                                         adapter_dtype=adapter_dtype))


def adapters(model: Any) -> dict[str, Any]:
    """The trainable adapters as a nested dict (`layers/<group>/<proj>/lora_a|lora_b`)."""
    return nnx.to_pure_dict(nnx.state(model, LoRAParam))


def frozen(model: Any) -> dict[str, Any]:
    """The frozen base as a nested dict (kernels, or `codes`/`scales` where quantized)."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def dropout_key_paths(model: Any) -> list[tuple[str, ...]]:
    """Paths of the `DropoutKey`s of a training model (empty without dropout)."""
    flat = nnx.to_flat_state(nnx.state(model, DropoutKey))
    return sorted(tuple(str(k) for k in path) for path, _ in flat)


def dropout_keys(paths: list[tuple[str, ...]], num_layers: int, seed: int, counter: jax.Array
                 ) -> dict[str, Any]:
    """Fresh key data for every adapter's dropout: one stream per (seed, counter = step and micro-batch),
    split per projection and layer."""
    base = jax.random.fold_in(jax.random.key(seed), counter)
    out: dict[str, Any] = {}
    for i, path in enumerate(paths):
        keys = jax.random.split(jax.random.fold_in(base, i), num_layers)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = jax.random.key_data(keys)
    return out


def merge_trees(*trees: dict[str, Any]) -> dict[str, Any]:
    """Nested dicts combined key by key (later trees add leaves; none may replace a leaf)."""
    out: dict[str, Any] = {}
    for tree in trees:
        for key, value in tree.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge_trees(out[key], value)
            elif key in out:
                raise ValueError(f"{key!r} appears in two trees")
            else:
                out[key] = value
    return out
