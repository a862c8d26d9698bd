"""The training step: token-weighted masked cross-entropy, gradient accumulation, AdamW.

Loss normalisation (the point FastChat gets subtly wrong with a mean of per-batch means): the loss is the
sum of per-token losses over every target token in the *global* batch, across all gradient-accumulation
micro-batches, divided by the number of those target tokens. So k micro-batches give exactly the update
of one batch k times the size, and a conversation's weight does not depend on what it was batched with.

Batches (see `vicuna_jax.data`): `input_tokens`, `target_tokens`, `loss_mask`, `segment_ids`,
`positions`, all `[B, L]`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with linear warmup then cosine decay to `final_lr_ratio * lr` (HF/FastChat semantics)."""

    learning_rate: float = 2e-5
    warmup_ratio: float = 0.03
    final_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 1.0


def lr_schedule(opt: OptimizerConfig, total_steps: int) -> optax.Schedule:
    warmup = math.ceil(opt.warmup_ratio * total_steps)
    if total_steps <= 1:
        return optax.constant_schedule(opt.learning_rate)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=opt.learning_rate, warmup_steps=warmup, decay_steps=total_steps,
        end_value=opt.learning_rate * opt.final_lr_ratio)


def _decay_mask(params: Any) -> Any:
    """Weight decay on everything but the RMSNorm scales, as HF's Trainer does for LLaMA."""
    def decays(path, _):
        return not any("norm" in str(getattr(k, "key", "")) for k in path)

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(opt: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    parts = []
    if opt.grad_clip and opt.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(opt.grad_clip))
    parts.append(optax.adamw(lr_schedule(opt, total_steps), b1=opt.b1, b2=opt.b2, eps=opt.eps,
                             weight_decay=opt.weight_decay, mask=_decay_mask))
    return optax.chain(*parts)


def cross_entropy_sums(model: Any, h_BxTxE: jax.Array, targets_BxT: jax.Array, weights_BxT: jax.Array,
                       chunk: int = 0) -> jax.Array:
    """Sum over tokens of weight * (-log p(target)), with fp32 log-softmax.

    Fused with the LM head (`vicuna_jax.cross_entropy`): the gradient is formed in the forward pass, chunk by
    chunk, only for positions with a nonzero weight; neither the full `[B, T, V]` fp32 logits nor a
    scatter-built gradient of them is ever stored. chunk > 0 bounds the logits alive at once to
    `[B, chunk, V]` and lets the loop skip chunks without targets (0 = whole rows at once).
    """
    from vicuna_jax.cross_entropy import linear_cross_entropy, lm_head_kernel

    return linear_cross_entropy(h_BxTxE, lm_head_kernel(model), targets_BxT, weights_BxT, chunk, model.dtype)


def loss_sums(params: Any, graphdef: nnx.GraphDef, batch: dict[str, jax.Array],
              loss_chunk: int = 0) -> tuple[jax.Array, jax.Array]:
    """(sum of target-token losses, number of target tokens) for one (micro-)batch."""
    model = nnx.merge(graphdef, params)
    h, _ = model.hidden_states(batch["input_tokens"], batch["positions"], batch["segment_ids"])
    weights = batch["loss_mask"].astype(jnp.float32)
    total = cross_entropy_sums(model, h, batch["target_tokens"], weights, loss_chunk)
    return total, jnp.sum(weights)


def split_microbatches(batch: dict[str, jax.Array], num_micro: int) -> dict[str, jax.Array]:
    """[B, L] -> [A, B/A, L], taking rows with stride A so every device keeps its share of each
    micro-batch (a contiguous split would put whole micro-batches on a subset of devices)."""
    from vicuna_jax.parallel import shard_activation

    def split(x):
        b = x.shape[0]
        x = x.reshape(b // num_micro, num_micro, *x.shape[1:]).swapaxes(0, 1)
        return shard_activation(x, (None, "batch", "length"))

    return {k: split(v) for k, v in batch.items()}


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    grad_accum_steps: int = 1, loss_chunk: int = 0) -> Callable:
    """train_step(state, batch) -> (state, metrics); state = {"params", "opt_state", "step"}.

    A step whose loss or gradient norm is not finite leaves the state unchanged and reports
    `finite = False` (the trainer stops and keeps the last good checkpoint); a global batch with no target
    tokens leaves params and optimizer state unchanged too.
    """
    grad_fn = jax.value_and_grad(lambda p, mb: loss_sums(p, graphdef, mb, loss_chunk), has_aux=True)

    def train_step(state: dict[str, Any], batch: dict[str, jax.Array]):
        params = state["params"]
        if grad_accum_steps == 1:
            (loss_sum, n_tok), grads = grad_fn(params, batch)
            grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
        else:
            micro = split_microbatches(batch, grad_accum_steps)

            def accumulate(carry, mb):
                g_acc, l_acc, n_acc = carry
                (loss_mb, n), g = grad_fn(params, mb)
                g_acc = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), g_acc, g)
                return (g_acc, l_acc + loss_mb, n_acc + n), None

            zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
            init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
            (grads, loss_sum, n_tok), _ = jax.lax.scan(accumulate, init, micro)
        denom = jnp.maximum(n_tok, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        loss = loss_sum / denom
        grad_norm = optax.global_norm(grads)
        updates, new_opt_state = tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        apply = finite & (n_tok > 0)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(apply, a, b), new, old)
        new_state = {
            **state,  # e.g. the RNG key, carried unchanged (LLaMA fine-tuning uses no dropout)
            "params": keep(new_params, params),
            "opt_state": keep(new_opt_state, state["opt_state"]),
            "step": state["step"] + 1,
        }
        nonpad = jnp.sum((batch["segment_ids"] != 0).astype(jnp.float32))
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "lr": schedule(state["step"]),
            "target_tokens": n_tok,
            "nonpad_tokens": nonpad,
            "finite": finite,
        }
        return new_state, metrics

    return train_step


def make_eval_step(graphdef: nnx.GraphDef, loss_chunk: int = 0) -> Callable:
    """eval_step(params, batch) -> (loss sum, target tokens); accumulate over batches, then divide."""
    def eval_step(params: Any, batch: dict[str, jax.Array]):
        return loss_sums(params, graphdef, batch, loss_chunk)

    return eval_step
