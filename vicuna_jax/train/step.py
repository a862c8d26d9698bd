"""The jitted training and evaluation steps: gradient accumulation, the optimizer update, NaN safety.

Batches (see `vicuna_jax.data`): `input_tokens`, `target_tokens`, `loss_mask`, `segment_ids`, `positions`,
all `[B, L]`. The loss and its normalisation over the global batch are in `loss.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from vicuna_jax.train.loss import loss_sums


@struct.dataclass
class TrainState:
    """Everything a training step reads and writes, and everything a checkpoint restores besides the data
    position. (Vicuna fine-tuning has no dropout, so there is no RNG to carry.)"""

    params: Any
    opt_state: Any
    step: jax.Array  # int32 scalar: optimizer steps taken


@struct.dataclass
class StepMetrics:
    """What one step reports (device scalars; fetched by the loop one step late)."""

    loss: jax.Array
    grad_norm: jax.Array
    lr: jax.Array
    target_tokens: jax.Array
    nonpad_tokens: jax.Array
    finite: jax.Array  # bool: loss and gradient norm finite; the update was applied only if so


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
    """train_step(state, batch) -> (state, metrics), both `TrainState` / `StepMetrics`.

    A step whose loss or gradient norm is not finite leaves the state unchanged and reports
    `finite = False` (the trainer stops and keeps the last good checkpoint); a global batch with no target
    tokens leaves params and optimizer state unchanged too.
    """
    grad_fn = jax.value_and_grad(lambda p, mb: loss_sums(p, graphdef, mb, loss_chunk), has_aux=True)

    def train_step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, StepMetrics]:
        params = state.params
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
        updates, new_opt_state = tx.update(grads, state.opt_state, params)
        new_params = optax.apply_updates(params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        apply = finite & (n_tok > 0)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(apply, a, b), new, old)
        new_state = TrainState(params=keep(new_params, params),
                               opt_state=keep(new_opt_state, state.opt_state), step=state.step + 1)
        nonpad = jnp.sum((batch["segment_ids"] != 0).astype(jnp.float32))
        metrics = StepMetrics(loss=loss, grad_norm=grad_norm, lr=schedule(state.step), target_tokens=n_tok,
                              nonpad_tokens=nonpad, finite=finite)
        return new_state, metrics

    return train_step


def make_eval_step(graphdef: nnx.GraphDef, loss_chunk: int = 0) -> Callable:
    """eval_step(params, batch) -> (loss sum, target tokens); accumulate over batches, then divide."""
    def eval_step(params: Any, batch: dict[str, jax.Array]):
        return loss_sums(params, graphdef, batch, loss_chunk)

    return eval_step
