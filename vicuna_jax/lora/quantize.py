"""Blockwise absmax quantization of frozen kernels for QLoRA: int8 and NF4 (4-bit NormalFloat).

A kernel `[..., in, out]` is cut into blocks of `block` consecutive input rows per output column; each
block keeps its absolute maximum as an fp32 scale and its values as codes relative to it:

- int8: `round(127 * w / absmax)`, one signed byte per weight (error <= absmax / 254);
- nf4: the index of the nearest of NF4's 16 levels (QLoRA, Dettmers et al. 2023, appendix E: quantiles of
  a normal distribution, exact 0 and +-1), two codes per byte (error <= 0.152 absmax, half the widest gap).

In the `[in, out]` layout these blocks are exactly bitsandbytes' blocks (64 consecutive elements of a row
of the `[out, in]` HF weight), without its double quantization of the scales. Scales and codes keep the
kernel's axis order, so they shard along the same logical axes as the kernel they replace. Dequantizing
happens per layer inside the layer loop, so at most one layer's kernel exists in the compute dtype.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# bitsandbytes' NF4 levels (functional.py, create_normal_map(offset=0.9677083, use_extra_value=True)).
NF4_LEVELS = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0], dtype=np.float32)
_NF4_MIDPOINTS = (NF4_LEVELS[1:] + NF4_LEVELS[:-1]) / 2

MODES = ("int8", "nf4")


def code_shape(shape: tuple[int, ...], mode: str) -> tuple[int, ...]:
    """Shape of the codes of a `[..., in, out]` kernel (nf4 packs two input rows per byte)."""
    *lead, n_in, n_out = shape
    return (*lead, n_in // 2, n_out) if mode == "nf4" else tuple(shape)


def code_dtype(mode: str) -> Any:
    return jnp.int8 if mode == "int8" else jnp.uint8


def scale_shape(shape: tuple[int, ...], block: int) -> tuple[int, ...]:
    *lead, n_in, n_out = shape
    return (*lead, n_in // block, n_out)


def quantize(w: jax.Array, mode: str, block: int) -> tuple[jax.Array, jax.Array]:
    """(codes, fp32 scales) of kernel(s) `w` `[..., in, out]`; `in` must be a multiple of `block`."""
    if mode not in MODES:
        raise ValueError(f"unknown quantization {mode!r}; choose one of {MODES}")
    *lead, n_in, n_out = w.shape
    if n_in % block or block % 2:
        raise ValueError(f"block {block} must be even and divide the {n_in} input rows")
    w_blocks = w.astype(jnp.float32).reshape(*lead, n_in // block, block, n_out)
    absmax = jnp.max(jnp.abs(w_blocks), axis=-2)
    unit = w_blocks / jnp.where(absmax == 0, 1.0, absmax)[..., None, :]  # in [-1, 1]
    if mode == "int8":
        codes = jnp.round(unit * 127).astype(jnp.int8).reshape(w.shape)
        return codes, absmax
    # Nearest level = how many midpoints lie below; unrolled so XLA fuses it into one elementwise pass.
    index = jnp.zeros(unit.shape, jnp.uint8)
    for mid in _NF4_MIDPOINTS:
        index = index + (unit > mid).astype(jnp.uint8)
    index = index.reshape(w.shape)
    packed = (index[..., 0::2, :] << 4) | index[..., 1::2, :]
    return packed.astype(jnp.uint8), absmax


def dequantize(codes: jax.Array, scales: jax.Array, mode: str, block: int, dtype: Any = jnp.float32
               ) -> jax.Array:
    """The kernel `[..., in, out]` in `dtype` back from its codes and scales."""
    if mode == "int8":
        unit = codes.astype(jnp.float32) / 127
    elif mode == "nf4":
        high, low = (codes >> 4).astype(jnp.int32), (codes & 15).astype(jnp.int32)
        *lead, half, n_out = codes.shape
        index = jnp.stack([high, low], axis=-2).reshape(*lead, 2 * half, n_out)  # rows 2i, 2i+1
        unit = jnp.asarray(NF4_LEVELS)[index]
    else:
        raise ValueError(f"unknown quantization {mode!r}; choose one of {MODES}")
    *lead, n_in, n_out = unit.shape
    w = unit.reshape(*lead, n_in // block, block, n_out) * scales[..., None, :]
    return w.reshape(*lead, n_in, n_out).astype(dtype)


def max_error(mode: str) -> float:
    """The largest |w - dequantize(quantize(w))| relative to its block's absmax."""
    if mode == "int8":
        return 0.5 / 127
    return float(np.max(np.diff(NF4_LEVELS)) / 2)


def quantize_stacked(w_LxIxO: jax.Array, mode: str, block: int) -> tuple[jax.Array, jax.Array]:
    """`quantize` one layer at a time (`lax.map`), so the fp32 temporaries are one layer's, not all L."""
    return jax.lax.map(lambda w: quantize(w, mode, block), w_LxIxO)
