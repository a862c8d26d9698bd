"""The LoRA half of `train.setup.build`: what trains (the adapters), what stays frozen (the base), their
shardings, and the loss the step differentiates.

`train.setup.build` asks `lora_parts` for these when `config.lora` is on and builds the same jitted step as
for full fine-tuning around them: `TrainState.params` are the adapters (so gradients, AdamW moments and
checkpoints hold only them) and `TrainState.frozen` is the base, FSDP-sharded by the same logical-axis table
as full fine-tuning shards parameters. The step passes the frozen base through unchanged; donated, its
buffers are aliased to the output (no copy, no second buffer: the planner shows it as aliased).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vicuna_jax import parallel
from vicuna_jax.lora import model as lora_model
from vicuna_jax.lora import quantize as quant
from vicuna_jax.lora.config import LoRAConfig
from vicuna_jax.model.loss import loss_sums


@dataclasses.dataclass(frozen=True)
class LoRAParts:
    lora: LoRAConfig
    seed: int
    num_layers: int
    graphdef: nnx.GraphDef  # the training model (dropout keys when dropout > 0)
    eval_graphdef: nnx.GraphDef  # no dropout
    abstract_adapters: Any  # ShapeDtypeStructs (no shardings)
    adapter_shardings: Any
    abstract_frozen: Any
    frozen_shardings: Any
    dropout_paths: tuple[tuple[str, ...], ...]
    loss_fn: Callable  # (adapters, batch, frozen, counter) -> (loss sum, target tokens)
    eval_loss_fn: Callable

    # ------------------------------------------------------------ the initial state

    def initial_adapters(self, host: Any = None) -> Any:
        """The adapters on the devices: `host` (e.g. an imported PEFT adapter), else PEFT's init (A random
        from `seed`, B zero, so training starts exactly at the base model)."""
        if host is not None:
            return place(host, self.abstract_adapters, self.adapter_shardings)
        return jax.jit(lambda: init_adapters(self.abstract_adapters, self.seed),
                       out_shardings=self.adapter_shardings)()

    def place_frozen(self, host_base: dict[str, Any]) -> Any:
        """The frozen base on the devices from the base model's weights (model layout, any dtype): cast to
        the base dtype, or quantized projection by projection on the devices."""
        out: dict[str, Any] = {}
        for path, want in _flat(self.abstract_frozen):
            if path[-1] == "scales":
                continue
            sharding = _get(self.frozen_shardings, path)
            if path[-1] == "codes":
                kernel_path = (*path[:-1], "kernel")
                scales_path = (*path[:-1], "scales")
                kernel = _get(host_base, kernel_path)
                as_stored = jax.ShapeDtypeStruct(np.shape(kernel), kernel.dtype)
                on_device = place_array(kernel, as_stored, sharding)
                quantize = functools.partial(quant.quantize_stacked, mode=self.lora.base_quantization,
                                             block=self.lora.quant_block_size)
                out_sh = (sharding, _get(self.frozen_shardings, scales_path))
                codes, scales = jax.jit(quantize, out_shardings=out_sh)(on_device)
                del on_device
                _set(out, path, codes)
                _set(out, scales_path, scales)
            else:
                _set(out, path, place_array(_get(host_base, path), want, sharding))
        return out


def lora_parts(cfg: Any, mesh: jax.sharding.Mesh) -> LoRAParts:
    """The LoRA pieces of training config `cfg` (a `train.config.TrainConfig`) on `mesh`."""
    lora, options = cfg.lora, cfg.run.model_options()
    train_model = lora_model.abstract_lora_model(cfg.model, lora, training=True, seed=cfg.seed, **options)
    eval_model = lora_model.abstract_lora_model(cfg.model, lora, training=False, seed=cfg.seed, **options)
    graphdef, eval_graphdef = nnx.graphdef(train_model), nnx.graphdef(eval_model)
    abstract_adapters = lora_model.adapters(train_model)
    abstract_frozen = lora_model.frozen(train_model)
    adapter_sh = parallel.param_shardings(train_model, mesh, lora_model.LoRAParam)
    frozen_sh = parallel.param_shardings(train_model, mesh, nnx.Param)
    paths = tuple(lora_model.dropout_key_paths(train_model))
    chunk, seed, layers = cfg.loss_chunk_size, cfg.seed, cfg.model.num_layers

    def loss_fn(adapters, batch, frozen, counter):
        trees = [frozen, adapters]
        if paths:
            trees.append(lora_model.dropout_keys(list(paths), layers, seed, counter))
        return loss_sums(lora_model.merge_trees(*trees), graphdef, batch, chunk)

    def eval_loss_fn(adapters, batch, frozen, counter):
        del counter
        return loss_sums(lora_model.merge_trees(frozen, adapters), eval_graphdef, batch, chunk)

    return LoRAParts(lora=lora, seed=seed, num_layers=layers, graphdef=graphdef, eval_graphdef=eval_graphdef,
                     abstract_adapters=abstract_adapters, adapter_shardings=adapter_sh,
                     abstract_frozen=abstract_frozen, frozen_shardings=frozen_sh, dropout_paths=paths,
                     loss_fn=loss_fn, eval_loss_fn=eval_loss_fn)


def init_adapters(abstract_adapters: Any, seed: int) -> Any:
    """PEFT's initial adapters for the shapes of `abstract_adapters`: A ~ U(+-1/sqrt(in)), B = 0."""
    def init(path, leaf):
        keys = [str(getattr(k, "key", k)) for k in path]
        if keys[-1] == "lora_a":
            return lora_model.init_lora_a(lora_model.adapter_key(seed, keys[-2]), leaf.shape, leaf.dtype)
        return jnp.zeros(leaf.shape, leaf.dtype)

    return jax.tree_util.tree_map_with_path(init, abstract_adapters)


def place_array(value: Any, want: Any, sharding: jax.sharding.Sharding) -> jax.Array:
    """A host (or device) array placed with `sharding` in `want.dtype`, built shard by shard."""
    if np.shape(value) != tuple(want.shape):
        raise ValueError(f"shape {np.shape(value)} where {tuple(want.shape)} is expected")
    return jax.make_array_from_callback(tuple(want.shape), sharding,
                                        lambda idx: np.asarray(value[idx]).astype(want.dtype))


def place(host: Any, abstract: Any, shardings: Any) -> Any:
    return jax.tree.map(place_array, host, abstract, shardings)


def _flat(tree: Any, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    if isinstance(tree, dict):
        return [item for k in sorted(tree) for item in _flat(tree[k], (*prefix, k))]
    return [(prefix, tree)]


def _get(tree: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        tree = tree[part]
    return tree


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value
