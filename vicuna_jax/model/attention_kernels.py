"""Fused attention kernels behind `attention.attention`: cuDNN, Pallas GPU (Triton) and Pallas TPU (splash).

Every kernel here has the contract of `attention.xla_attention`, on per-device shapes (the caller wraps it in
`shard_map` when a mesh is active): causal self-attention, `segment_ids_BxT` with 0 = padding (None = one
segment), K key/value heads dividing H query heads (GQA), softmax scale D**-0.5, output in q's dtype, and
padding queries give exact zeros.

Segment 0 (padding) is treated as one more segment inside the kernels, so no query row is ever fully masked
(fully masked rows are undefined in all three kernels); the padding rows are zeroed afterwards, which also
zeroes their gradient, matching the reference.

Sequence lengths that the kernels cannot tile are padded at the end: causal masking already keeps real
queries from seeing later (padded) keys, and the padded positions get segment id 0 when segment ids are given.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# Kernel modules, named so `attention.py` can probe them and report an import failure with its reason.
PALLAS_GPU_MODULE = "jax.experimental.pallas.ops.gpu.attention"
PALLAS_TPU_MODULE = "jax.experimental.pallas.ops.tpu.splash_attention"

CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def _next_power_of_2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _pad_time(x_BxTx: jax.Array, length: int) -> jax.Array:
    """Pads axis 1 (time) with zeros up to `length`."""
    pad = length - x_BxTx.shape[1]
    if pad == 0:
        return x_BxTx
    widths = [(0, 0)] * x_BxTx.ndim
    widths[1] = (0, pad)
    return jnp.pad(x_BxTx, widths)


def _finish(out_BxTpxHxD: jax.Array, segment_ids_BxT: jax.Array | None, length: int,
            dtype: jnp.dtype) -> jax.Array:
    """Drops time padding, zeroes padding queries (segment 0) and casts to q's dtype."""
    out_BxTxHxD = out_BxTpxHxD[:, :length]
    if segment_ids_BxT is not None:
        real_BxTx1x1 = (segment_ids_BxT != 0)[:, :, None, None]
        out_BxTxHxD = jnp.where(real_BxTx1x1, out_BxTxHxD, jnp.zeros((), out_BxTxHxD.dtype))
    return out_BxTxHxD.astype(dtype)


# --- cuDNN --------------------------------------------------------------------------------------------------

def cudnn_attention(q_BxTxHxD: jax.Array, k_BxTxKxD: jax.Array, v_BxTxKxD: jax.Array,
                    segment_ids_BxT: jax.Array | None, *, implementation: str = "cudnn",
                    window: int | None = None) -> jax.Array:
    """cuDNN flash attention through `jax.nn.dot_product_attention` (GQA is native there).

    jax 0.10's public API has no segment ids, so packed rows become a boolean same-segment mask [B, 1, T, T]
    (broadcast over heads; cuDNN adds it as a bias) while `is_causal=True` lets cuDNN skip the upper triangle.
    Without segment ids there is no mask at all, the fastest cuDNN path. (cuDNN's ragged "packed layout",
    `q_offsets`/`kv_offsets` in jax._src, avoids the mask but is private API, Hopper-only, and needs a static
    bound M on segments per row: its softmax-stat residual is [B*M, H, T] and segments beyond M are lost.)

    A sliding `window` is cuDNN's `local_window_size=(window - 1, 0)`: query i sees keys i-window+1 .. i.
    `implementation="xla"` runs the same wrapper through XLA so CPU tests can check the mask logic.
    """
    t = q_BxTxHxD.shape[1]
    # cuDNN's biased backward needs an even sequence length; pad to a multiple of 8 for aligned tiles.
    t_pad = round_up(t, 8) if segment_ids_BxT is not None else t
    q, k, v = (_pad_time(x, t_pad) for x in (q_BxTxHxD, k_BxTxKxD, v_BxTxKxD))
    mask_Bx1xTxT = None
    if segment_ids_BxT is not None:
        seg_BxT = _pad_time(segment_ids_BxT, t_pad)
        mask_Bx1xTxT = (seg_BxT[:, :, None] == seg_BxT[:, None, :])[:, None]
    local = (window - 1, 0) if window is not None else None
    out = jax.nn.dot_product_attention(q, k, v, mask=mask_Bx1xTxT, is_causal=True, local_window_size=local,
                                       scale=q.shape[-1] ** -0.5, implementation=implementation)
    return _finish(out, segment_ids_BxT, t, q_BxTxHxD.dtype)


# --- Pallas GPU (Triton) ------------------------------------------------------------------------------------

def gpu_block_sizes(length: int, head_dim: int) -> tuple[int, int]:
    """(forward block, backward block) for the Triton kernel, powers of two (the padded length is a multiple).

    Forward 128x128 and backward 32x32 are JAX's defaults for this kernel (they fit shared memory up to D=128
    on A100/H100); larger heads halve the forward block, short sequences use one block (Triton's minimum is
    16). Tune with scripts/check_attention_gpu.py --sweep_gpu_blocks.
    """
    fwd = min(128 if head_dim <= 128 else 64, _next_power_of_2(max(length, 16)))
    return fwd, min(32, fwd)


def pallas_gpu_attention(q_BxTxHxD: jax.Array, k_BxTxKxD: jax.Array, v_BxTxKxD: jax.Array,
                         segment_ids_BxT: jax.Array | None, *, interpret: bool = False,
                         blocks: tuple[int, int] | None = None) -> jax.Array:
    """JAX's Pallas Triton flash attention (`ops.gpu.attention.mha`) with segment ids.

    GQA: that kernel indexes K/V blocks by the query head, so K/V are repeated to H heads here; autodiff of
    the repeat sums dK/dV over each group. LLaMA-1/2 7B/13B have K == H, where this is a no-op; a GQA-native
    kernel would need its backward to accumulate dK/dV over the G query heads of a group, which only pays off
    for GQA models (future work if one is trained). `blocks` overrides (forward, backward) block sizes.
    """
    from jax.experimental.pallas.ops.gpu import attention as gpu_attention

    _, t, h, d = q_BxTxHxD.shape
    groups = h // k_BxTxKxD.shape[2]
    if groups > 1:
        k_BxTxKxD = jnp.repeat(k_BxTxKxD, groups, axis=2)
        v_BxTxKxD = jnp.repeat(v_BxTxKxD, groups, axis=2)
    fwd_block, bwd_block = blocks or gpu_block_sizes(t, d)
    t_pad = round_up(t, fwd_block)
    q, k, v = (_pad_time(x, t_pad) for x in (q_BxTxHxD, k_BxTxKxD, v_BxTxKxD))
    seg = None if segment_ids_BxT is None else _pad_time(segment_ids_BxT.astype(jnp.int32), t_pad)
    # The kernel's backward refuses to run unless all four backward block sizes are set.
    block_sizes = gpu_attention.BlockSizes(block_q=fwd_block, block_k=fwd_block,
                                           block_q_dkv=bwd_block, block_kv_dkv=bwd_block,
                                           block_q_dq=bwd_block, block_kv_dq=bwd_block)
    out = gpu_attention.mha(q, k, v, seg, sm_scale=d**-0.5, causal=True, block_sizes=block_sizes,
                            interpret=interpret)
    return _finish(out, segment_ids_BxT, t, q_BxTxHxD.dtype)


# --- Pallas TPU (splash) ------------------------------------------------------------------------------------

def tpu_block_size(length: int, head_dim: int) -> int:
    """Largest splash block (multiple of 128, at most 512, or 256 for D > 128) dividing the padded length."""
    cap = 512 if head_dim <= 128 else 256
    return next(blk for blk in (512, 256, 128) if blk <= cap and length % blk == 0)


@functools.lru_cache(maxsize=32)
def _splash_mask(length: int, num_heads: int, window: int | None):
    """The causal (or causal sliding-window) mask: numpy-side objects only, so safe to cache across traces."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask

    if window is None:
        head_mask = splash_mask.CausalMask((length, length))
    else:
        head_mask = splash_mask.LocalMask((length, length), window_size=(window - 1, 0), offset=0)
    return splash_mask.MultiHeadMask([head_mask] * num_heads)


def _splash_kernel(length: int, num_heads: int, block: int, interpret: bool, window: int | None = None):
    """The splash kernel for one shape; blocks entirely outside the window are skipped like those above the
    diagonal.

    Built afresh in every trace, never cached or evaluated eagerly: its mask tables become constants of the
    computation being traced, so no device is touched (compile-only TPU devices from
    `jax.experimental.topologies` cannot run the eager op that `ensure_compile_time_eval` would need), and no
    tracer outlives its trace. The costly part, the numpy mask processing, is cached by splash itself
    (keyed on the mask, which `_splash_mask` keeps equal across calls)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash

    block_sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                                    block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                                    block_q_dq=block, block_kv_dq=block)
    # Built per device inside shard_map, so it never shards heads or q itself.
    return splash.make_splash_mha(_splash_mask(length, num_heads, window), block_sizes=block_sizes,
                                  head_shards=1, q_seq_shards=1, interpret=interpret)


def pallas_tpu_attention(q_BxTxHxD: jax.Array, k_BxTxKxD: jax.Array, v_BxTxKxD: jax.Array,
                         segment_ids_BxT: jax.Array | None, *, interpret: bool = False,
                         block: int | None = None, window: int | None = None) -> jax.Array:
    """Splash attention: static causal mask (fully masked blocks skipped) and dynamic `SegmentIds`.

    GQA is native: the MHA splash kernel maps query head h to K/V head h // G in forward and backward, so K/V
    are never repeated. Splash has no scale argument, so q is pre-scaled by D**-0.5. Batch is vmapped.
    `block` overrides the block size (a multiple of 128 dividing the padded length).
    """
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash

    _, t, h, d = q_BxTxHxD.shape
    t_pad = round_up(t, 128)
    block = block or tpu_block_size(t_pad, d)
    q_BxTxHxD = q_BxTxHxD * jnp.asarray(d**-0.5, q_BxTxHxD.dtype)
    q_BxHxTxD, k_BxKxTxD, v_BxKxTxD = (
        jnp.swapaxes(_pad_time(x, t_pad), 1, 2) for x in (q_BxTxHxD, k_BxTxKxD, v_BxTxKxD))
    kernel = _splash_kernel(t_pad, h, block, interpret, window)
    if segment_ids_BxT is None:
        out_BxHxTxD = jax.vmap(kernel)(q_BxHxTxD, k_BxKxTxD, v_BxKxTxD)
    else:
        seg_BxT = _pad_time(segment_ids_BxT.astype(jnp.int32), t_pad)

        def one_row(q_HxTxD, k_KxTxD, v_KxTxD, seg_T):
            return kernel(q_HxTxD, k_KxTxD, v_KxTxD, splash.SegmentIds(q=seg_T, kv=seg_T))

        out_BxHxTxD = jax.vmap(one_row)(q_BxHxTxD, k_BxKxTxD, v_BxKxTxD, seg_BxT)
    return _finish(jnp.swapaxes(out_BxHxTxD, 1, 2), segment_ids_BxT, t, q_BxTxHxD.dtype)
