"""Fused LM head + cross-entropy: the loss and its gradient without the full `[B, T, V]` fp32 logits, and
without any LM-head work for positions that carry no loss.

Why: with LLaMA's 32K vocabulary the logits of a 2048-token row are 256 MB in fp32, and autodiff of
`logsumexp - take_along_axis` keeps them for the backward pass, then builds their gradient with a scatter
into another `[B, T, V]` buffer. And in chat fine-tuning only the assistant replies are targets (about half
of the tokens of a ShareGPT batch, less with padding), yet the LM head (3 of the step's matmuls, the largest
ones in small models) is usually computed for every position.

Here, in the spirit of Liger's fused linear cross-entropy:
1. the target positions (weight != 0) of each device's rows are moved to the front (a stable sort within
   the device's share of the batch, so no data moves between devices);
2. a loop walks them `chunk` positions per row at a time, only as many steps as the targets need (a
   dynamic trip count), and per step computes the logits, the loss and at once the gradient
   `dlogits = (softmax - onehot) * weight` in one fused pass, which it pushes through the LM head
   (`dh = dlogits W^T`, `dW += h^T dlogits`) before moving on;
3. the backward pass only scales those gradients by the incoming cotangent (the loss is a plain sum).

Compared with `jax.checkpoint`-ed chunks this saves one `[T, E] x [E, V]` matmul (no recomputation) and
skips chunks without targets; compared with no chunking it never holds more than one `[B, chunk, V]` block
of logits and has no scatter. Without differentiation only the loss is computed. The gradient is exact:
the same fp32 softmax autodiff would compute.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp


def _logits(h_BxCxE: jax.Array, w_ExV: jax.Array, dtype: Any) -> jax.Array:
    from vicuna_jax.parallel import shard_activation

    logits = jnp.dot(h_BxCxE.astype(dtype), w_ExV.astype(dtype), preferred_element_type=jnp.float32)
    return shard_activation(logits, ("batch", "length", "act_vocab"))


def _chunk_loss(h_BxCxE, w_ExV, t_BxC, dtype):
    """Per-token -log p(target) for one chunk, the chunk's fp32 logits and their logsumexp."""
    logits_BxCxV = _logits(h_BxCxE, w_ExV, dtype)
    lse_BxC = jax.nn.logsumexp(logits_BxCxV, axis=-1)
    target_BxC = jnp.take_along_axis(logits_BxCxV, t_BxC[..., None], axis=-1)[..., 0]
    return lse_BxC - target_BxC, logits_BxCxV, lse_BxC


def _batch_shards(batch: int) -> int:
    """How many devices the batch axis is split over under the current mesh (1 without a mesh)."""
    from vicuna_jax.parallel import current_mesh, logical_to_spec

    mesh = current_mesh()
    if mesh is None:
        return 1
    axes = logical_to_spec(("batch",))[0]
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    shards = 1
    for a in axes:
        shards *= mesh.shape[a]
    return shards if batch % shards == 0 else 1


class _Plan:
    """Target positions first, padded to whole chunks, and how many chunks to run.

    The batch is viewed as S groups of B/S consecutive rows, S = the number of batch shards (1 on one
    device), so each group is one device's rows and sorting within a group stays local. A group's targets
    come first (stable: in their original order); a step of the loop covers `chunk` positions of each of
    the group's rows ([S, B/S * chunk] tokens, the same memory as [B, chunk]), and the loop runs as many
    steps as the group with the most targets needs.
    """

    def __init__(self, h_BxTxE, targets_BxT, weights_BxT, chunk: int):
        b, t = targets_BxT.shape
        self.shape = (b, t)
        groups = _batch_shards(b)
        rows = b // groups
        self.chunk = rows * (t if chunk <= 0 or chunk >= t else chunk)
        group = lambda x: x.reshape(groups, rows * t, *x.shape[2:])
        weights = group(weights_BxT.astype(jnp.float32))
        self.order_SxN = jnp.argsort((weights == 0).astype(jnp.int32), axis=1, stable=True)
        pad = (-rows * t) % self.chunk
        self.h = self._sorted(group(h_BxTxE), pad)
        self.targets = self._sorted(group(targets_BxT), pad)
        self.weights = self._sorted(weights, pad)
        most = jnp.max(jnp.sum(weights != 0, axis=1))
        self.num_chunks = (most + self.chunk - 1) // self.chunk

    def _sorted(self, x_SxN, pad: int):
        idx = self.order_SxN.reshape(*self.order_SxN.shape, *([1] * (x_SxN.ndim - 2)))
        x_SxN = jnp.take_along_axis(x_SxN, idx, axis=1)
        return jnp.pad(x_SxN, [(0, 0), (0, pad)] + [(0, 0)] * (x_SxN.ndim - 2)) if pad else x_SxN

    def slice(self, x, i):
        return jax.lax.dynamic_slice_in_dim(x, i * self.chunk, self.chunk, axis=1)

    def unsort(self, x_SxNp):
        """Sorted-and-padded [S, N + pad, ...] back to the original positions [B, T, ...]."""
        inverse = jnp.argsort(self.order_SxN, axis=1)
        idx = inverse.reshape(*inverse.shape, *([1] * (x_SxNp.ndim - 2)))
        x_SxN = jnp.take_along_axis(x_SxNp, idx, axis=1)
        return x_SxN.reshape(*self.shape, *x_SxN.shape[2:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def linear_cross_entropy(h_BxTxE: jax.Array, w_ExV: jax.Array, targets_BxT: jax.Array,
                         weights_BxT: jax.Array, chunk: int = 0, dtype: Any = jnp.float32) -> jax.Array:
    """sum over tokens of weight * (-log softmax(h W)[target]), softmax in fp32, matmuls in `dtype`.

    Args:
      h_BxTxE: final hidden states. w_ExV: LM head kernel (pass `embed.T` for tied embeddings).
      targets_BxT: int target ids. weights_BxT: per-token loss weights (the loss mask); positions with
        weight 0 cost nothing when chunk > 0.
      chunk: positions per row per step of the loop (0 = whole rows at once, which skips nothing on one
        device); the logits alive at once are [B, chunk, V] in fp32.
      dtype: matmul input dtype (the model's compute dtype); accumulation is fp32.
    """
    plan = _Plan(h_BxTxE, targets_BxT, weights_BxT, chunk)

    def body(i, total):
        losses, _, _ = _chunk_loss(plan.slice(plan.h, i), w_ExV, plan.slice(plan.targets, i), dtype)
        return total + jnp.sum(losses * plan.slice(plan.weights, i))

    return jax.lax.fori_loop(0, plan.num_chunks, body, jnp.zeros((), jnp.float32))


def _fwd(h_BxTxE, w_ExV, targets_BxT, weights_BxT, chunk, dtype):
    plan = _Plan(h_BxTxE, targets_BxT, weights_BxT, chunk)

    def body(i, carry):
        total, dw_ExV, dh_BxTpxE, losses_BxTp = carry
        h, t, w = plan.slice(plan.h, i), plan.slice(plan.targets, i), plan.slice(plan.weights, i)
        losses, logits, lse = _chunk_loss(h, w_ExV, t, dtype)
        # d(sum w * loss)/d logits = (softmax - onehot(target)) * w, one fused pass over the chunk's logits.
        onehot = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 2) == t[..., None]
        dlogits = (jnp.exp(logits - lse[..., None]) - onehot.astype(jnp.float32)) * w[..., None]
        dlogits = dlogits.astype(dtype)
        dh = jnp.einsum("bcv,ev->bce", dlogits, w_ExV.astype(dtype), preferred_element_type=jnp.float32)
        dw_ExV += jnp.einsum("bce,bcv->ev", h.astype(dtype), dlogits, preferred_element_type=jnp.float32)
        start = i * plan.chunk
        dh_BxTpxE = jax.lax.dynamic_update_slice_in_dim(dh_BxTpxE, dh.astype(dh_BxTpxE.dtype), start, axis=1)
        losses_BxTp = jax.lax.dynamic_update_slice_in_dim(losses_BxTp, losses, start, axis=1)
        return total + jnp.sum(losses * w), dw_ExV, dh_BxTpxE, losses_BxTp

    init = (jnp.zeros((), jnp.float32), jnp.zeros(w_ExV.shape, jnp.float32), jnp.zeros_like(plan.h),
            jnp.zeros(plan.weights.shape, jnp.float32))
    total, dw_ExV, dh_BxTpxE, losses_BxTp = jax.lax.fori_loop(0, plan.num_chunks, body, init)
    # weights_BxT rides along only to give its cotangent the right dtype (it is [B, T], small).
    residuals = (plan.unsort(dh_BxTpxE), dw_ExV.astype(w_ExV.dtype), plan.unsort(losses_BxTp), weights_BxT)
    return total, residuals


def _bwd(chunk, dtype, residuals, g):
    del chunk, dtype
    dh_BxTxE, dw_ExV, losses_BxT, weights_BxT = residuals
    return (g.astype(dh_BxTxE.dtype) * dh_BxTxE, g.astype(dw_ExV.dtype) * dw_ExV, None,
            (g * losses_BxT).astype(weights_BxT.dtype))


linear_cross_entropy.defvjp(_fwd, _bwd)


def lm_head_kernel(model: Any) -> jax.Array:
    """The `[E, V]` LM head of a `vicuna_jax.model.llama.Llama`, as the model reports it (`lm_head_weight`:
    the embedding, transposed, when tied)."""
    return model.lm_head_weight()
