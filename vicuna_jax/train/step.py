"""The jitted training and evaluation steps: gradient accumulation, the optimizer update, NaN safety.

Batches (see `vicuna_jax.data`): `input_tokens`, `target_tokens`, `loss_mask`, `segment_ids`, `positions`,
all `[B, L]`. The loss and its normalisation over the global batch are in `vicuna_jax.model.loss`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from vicuna_jax.model.loss import loss_sums


@struct.dataclass
class TrainState:
    """Everything a training step reads and writes, and everything a checkpoint restores besides the data
    position. (Vicuna fine-tuning has no dropout, so there is no RNG to carry.)"""

    params: Any  # what trains: the model's parameters, or LoRA's adapters
    opt_state: Any
    step: jax.Array  # int32 scalar: optimizer steps taken
    # What the step reads but never changes (LoRA's base model), passed through to the new state; not
    # checkpointed: it is loaded from its source again on resume.
    frozen: Any = None


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


# (trainable params, micro-batch, frozen params, counter) -> (loss sum, target tokens). The counter numbers
# the micro-batches of the whole run (step * grad_accum_steps + micro-batch), for randomness (LoRA dropout).
LossFn = Callable[[Any, dict[str, jax.Array], Any, jax.Array], tuple[jax.Array, jax.Array]]


def full_loss(graphdef: nnx.GraphDef, loss_chunk: int = 0) -> LossFn:
    """Full fine-tuning: every parameter trains, nothing is frozen."""
    return lambda params, batch, frozen, counter: loss_sums(params, graphdef, batch, loss_chunk)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    grad_accum_steps: int = 1, loss_chunk: int = 0,
                    loss_fn: LossFn | None = None) -> Callable:
    """train_step(state, batch) -> (state, metrics), both `TrainState` / `StepMetrics`.

    `loss_fn` (default `full_loss`) is differentiated with respect to `state.params` only.
    A step whose loss or gradient norm is not finite leaves the state unchanged and reports
    `finite = False` (the trainer stops and keeps the last good checkpoint); a global batch with no target
    tokens leaves params and optimizer state unchanged too.
    """
    loss_fn = loss_fn or full_loss(graphdef, loss_chunk)

    def train_step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, StepMetrics]:
        params = state.params
        grad_fn = jax.value_and_grad(
            lambda p, mb, i: loss_fn(p, mb, state.frozen, state.step * grad_accum_steps + i), has_aux=True)
        if grad_accum_steps == 1:
            (loss_sum, n_tok), grads = grad_fn(params, batch, 0)
            grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
        else:
            micro = split_microbatches(batch, grad_accum_steps)

            def accumulate(carry, xs):
                mb, i = xs
                g_acc, l_acc, n_acc = carry
                (loss_mb, n), g = grad_fn(params, mb, i)
                g_acc = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), g_acc, g)
                return (g_acc, l_acc + loss_mb, n_acc + n), None

            zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
            init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
            xs = (micro, jnp.arange(grad_accum_steps, dtype=jnp.int32))
            (grads, loss_sum, n_tok), _ = jax.lax.scan(accumulate, init, xs)
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
                               opt_state=keep(new_opt_state, state.opt_state), step=state.step + 1,
                               frozen=state.frozen)
        nonpad = jnp.sum((batch["segment_ids"] != 0).astype(jnp.float32))
        metrics = StepMetrics(loss=loss, grad_norm=grad_norm, lr=schedule(state.step), target_tokens=n_tok,
                              nonpad_tokens=nonpad, finite=finite)
        return new_state, metrics

    return train_step


def make_eval_step(graphdef: nnx.GraphDef, loss_chunk: int = 0, loss_fn: LossFn | None = None) -> Callable:
    """eval_step(state, batch) -> (loss sum, target tokens); accumulate over batches, then divide."""
    loss_fn = loss_fn or full_loss(graphdef, loss_chunk)

    def eval_step(state: TrainState, batch: dict[str, jax.Array]):
        return loss_fn(state.params, batch, state.frozen, jnp.zeros((), jnp.int32))

    return eval_step
