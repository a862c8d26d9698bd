"""The training loss: token-weighted masked cross-entropy, fused with the LM head.

It lives with the model, not in `train/`, because both full fine-tuning (`train.step`) and LoRA
(`lora.setup`) differentiate it, and LoRA sits below `train` in the layers (see `tests/test_layers.py`);
it needs only the model's `hidden_states` and LM head.

Normalisation (the point FastChat gets subtly wrong with a mean of per-batch means): the loss is the sum of
per-token losses over every target token in the *global* batch, across all gradient-accumulation
micro-batches, divided by the number of those target tokens. `loss_sums` returns the two sums for one
(micro-)batch; the step adds them up and divides once. So k micro-batches give exactly the update of one
batch k times the size, and a conversation's weight does not depend on what it was batched with.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vicuna_jax.model.cross_entropy import linear_cross_entropy, lm_head_kernel


def cross_entropy_sums(model: Any, h_BxTxE: jax.Array, targets_BxT: jax.Array, weights_BxT: jax.Array,
                       chunk: int = 0) -> jax.Array:
    """Sum over tokens of weight * (-log p(target)), with fp32 log-softmax.

    Fused with the LM head (`vicuna_jax.model.cross_entropy`): the gradient is formed in the forward pass,
    chunk by chunk, only for positions with a nonzero weight; neither the full `[B, T, V]` fp32 logits nor a
    scatter-built gradient of them is ever stored. chunk > 0 bounds the logits alive at once to
    `[B, chunk, V]` and lets the loop skip chunks without targets (0 = whole rows at once).
    """
    return linear_cross_entropy(h_BxTxE, lm_head_kernel(model), targets_BxT, weights_BxT, chunk, model.dtype)


def loss_sums(params: Any, graphdef: nnx.GraphDef, batch: dict[str, jax.Array],
              loss_chunk: int = 0) -> tuple[jax.Array, jax.Array]:
    """(sum of target-token losses, number of target tokens) for one (micro-)batch."""
    model = nnx.merge(graphdef, params)
    h = model.hidden_states(batch["input_tokens"], batch["positions"], batch["segment_ids"])
    weights = batch["loss_mask"].astype(jnp.float32)
    total = cross_entropy_sums(model, h, batch["target_tokens"], weights, loss_chunk)
    return total, jnp.sum(weights)
