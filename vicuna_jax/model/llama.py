"""Flax NNX LLaMA-family decoder, numerically the same network as HF's Llama/Mistral/Qwen2/Qwen3ForCausalLM.

One definition with the switches the families need (`LlamaConfig`): q/k/v biases (Qwen2), per-head q/k
RMSNorm (Qwen3), a sliding attention window (Mistral), RoPE variants and tied embeddings (Llama-3.x).

Layout choices:
- Every kernel is a plain `[in, out]` matrix, so HF conversion is a transpose and nothing else.
- RoPE uses HF's half-rotated layout (rotate_half), with theta, linear and llama3 frequency scaling.
- The decoder layers are stored stacked (leading "layers" axis) whether or not they run under `lax.scan`,
  so a checkpoint does not depend on how the model is run.
- Each parameter declares its logical axes next to its init; `vicuna_jax.parallel` maps them to the mesh.

Shape suffixes: B batch, T tokens, S cache slots, E hidden, F mlp, H heads, K kv heads, D head dim,
V vocab, L layers.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from vicuna_jax.model import attention as attention_lib
from vicuna_jax.model.config import LlamaConfig
from vicuna_jax.parallel import shard_activation

_INIT = nnx.initializers.normal(stddev=0.02)


def _param(rngs: nnx.Rngs | None, shape: tuple[int, ...], axes: tuple[str, ...], dtype: Any,
           init: Any = _INIT) -> nnx.Param:
    value = init(rngs.params(), shape, dtype) if rngs is not None else jnp.ones(shape, dtype)
    # eager_sharding=False: shardings come from `parallel.LOGICAL_RULES` at jit time, not at creation.
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


class Linear(nnx.Module):
    """y = x @ kernel (+ bias), kernel `[in, out]`; computes in `dtype`."""

    def __init__(self, in_features: int, out_features: int, axes: tuple[str, str], *, dtype: Any,
                 param_dtype: Any, rngs: nnx.Rngs, use_bias: bool = False):
        self.kernel = _param(rngs, (in_features, out_features), axes, param_dtype)
        if use_bias:
            self.bias = _param(rngs, (out_features,), axes[1:], param_dtype, nnx.initializers.zeros_init())
        self.use_bias = use_bias
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        # A 2-D [tokens, in] matmul (a free reshape): XLA:CPU would otherwise transpose the gradients for
        # the weight-gradient matmul; GPU/TPU compilers treat both forms alike.
        lead = x.shape[:-1]
        x_NxI = x.reshape(-1, x.shape[-1]).astype(self.dtype)
        y_NxO = jnp.dot(x_NxI, self.kernel[...].astype(self.dtype))
        if self.use_bias:
            y_NxO = y_NxO + self.bias[...].astype(self.dtype)
        return y_NxO.reshape(*lead, -1)


class RMSNorm(nnx.Module):
    """RMSNorm computed in fp32 (as HF does), result cast to the compute dtype."""

    def __init__(self, dim: int, eps: float, *, dtype: Any, param_dtype: Any):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), out_sharding=("norm",), eager_sharding=False)
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return (x32 * self.scale[...].astype(jnp.float32)).astype(self.dtype)


def rope_cos_sin(positions_BxT: jax.Array, head_dim: int, theta: float,
                 scaling_factor: float = 1.0, llama3: tuple[float, float, int] | None = None
                 ) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables `[B, T, D]` in fp32, HF layout (frequencies repeated for both halves).

    `llama3` = (low_freq_factor, high_freq_factor, original_max_position_embeddings): Llama-3.1's scaling,
    which divides the low frequencies by `scaling_factor`, keeps the high ones and blends in between.
    Otherwise `scaling_factor` is linear interpolation (positions divided by it).
    """
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    if llama3 is not None:
        low, high, original = llama3
        wavelen = 2 * math.pi / inv_freq
        smooth = (original / wavelen - low) / (high - low)
        blended = (1 - smooth) * inv_freq / scaling_factor + smooth * inv_freq
        inv_freq = jnp.where(wavelen > original / low, inv_freq / scaling_factor,
                             jnp.where(wavelen < original / high, inv_freq, blended))
        scaling_factor = 1.0
    pos = positions_BxT.astype(jnp.float32) / scaling_factor
    freqs_BxTxD2 = pos[..., None] * inv_freq
    emb_BxTxD = jnp.concatenate([freqs_BxTxD2, freqs_BxTxD2], axis=-1)
    return jnp.cos(emb_BxTxD), jnp.sin(emb_BxTxD)


def apply_rope(x_BxTxHxD: jax.Array, cos_BxTxD: jax.Array, sin_BxTxD: jax.Array) -> jax.Array:
    x = x_BxTxHxD.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    out = x * cos_BxTxD[:, :, None, :] + rotated * sin_BxTxD[:, :, None, :]
    return out.astype(x_BxTxHxD.dtype)


class LayerCache(NamedTuple):
    """The KV cache as one layer sees it: the stacked buffers of all layers, which layer this is, and the
    bookkeeping shared by all layers. A layer writes only its new tokens into the stacked buffers (in
    place when the buffers are donated or carried through a loop) instead of rebuilding a layer copy."""

    k_LxBxSxKxD: jax.Array
    v_LxBxSxKxD: jax.Array
    layer: jax.Array | int
    slot_segment_BxS: jax.Array  # segment id of each cache slot after this step's write (0 = empty/pad)
    end_B: jax.Array  # first slot this step writes, per row


class Attention(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, dtype: Any, param_dtype: Any, attention_impl: str,
                 rngs: nnx.Rngs):
        e, d = cfg.hidden_size, cfg.dim_per_head
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.q_proj = Linear(e, cfg.num_heads * d, ("embed", "q_heads"), use_bias=cfg.qkv_bias, **kw)
        self.k_proj = Linear(e, cfg.num_kv_heads * d, ("embed", "kv_heads"), use_bias=cfg.qkv_bias, **kw)
        self.v_proj = Linear(e, cfg.num_kv_heads * d, ("embed", "kv_heads"), use_bias=cfg.qkv_bias, **kw)
        self.o_proj = Linear(cfg.num_heads * d, e, ("q_heads", "embed"), **kw)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(d, cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
            self.k_norm = RMSNorm(d, cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.qk_norm = cfg.qk_norm
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, d
        self.rope_theta, self.rope_scaling = cfg.rope_theta, cfg.rope_scaling_factor
        self.rope_llama3 = None
        if cfg.rope_type == "llama3":
            self.rope_llama3 = (cfg.rope_low_freq_factor, cfg.rope_high_freq_factor,
                                cfg.rope_original_max_position_embeddings)
        self.sliding_window = cfg.sliding_window
        self.attention_impl = attention_impl

    def __call__(self, x_BxTxE: jax.Array, positions_BxT: jax.Array, segment_ids_BxT: jax.Array | None,
                 cache: LayerCache | None = None) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        b, t, _ = x_BxTxE.shape
        q = self.q_proj(x_BxTxE).reshape(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x_BxTxE).reshape(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x_BxTxE).reshape(b, t, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = rope_cos_sin(positions_BxT, self.head_dim, self.rope_theta, self.rope_scaling,
                                self.rope_llama3)
        q_BxTxHxD = checkpoint_name(apply_rope(q, cos, sin), "query_proj")
        k_BxTxKxD = checkpoint_name(apply_rope(k, cos, sin), "key_proj")
        v_BxTxKxD = checkpoint_name(v, "value_proj")
        q_BxTxHxD = shard_activation(q_BxTxHxD, ("batch", "length", "act_heads", None))
        k_BxTxKxD = shard_activation(k_BxTxKxD, ("batch", "length", "act_heads", None))
        v_BxTxKxD = shard_activation(v_BxTxKxD, ("batch", "length", "act_heads", None))

        new_kv = None
        if cache is None:
            out = attention_lib.attention(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, segment_ids_BxT,
                                          impl=self.attention_impl, window=self.sliding_window)
        else:
            k_L, v_L = _write_cache(cache, k_BxTxKxD, v_BxTxKxD)
            k_all = jax.lax.dynamic_index_in_dim(k_L, cache.layer, axis=0, keepdims=False)
            v_all = jax.lax.dynamic_index_in_dim(v_L, cache.layer, axis=0, keepdims=False)
            mask_BxTxS = cache_attention_mask(cache.slot_segment_BxS, cache.end_B, t, self.sliding_window)
            out = attention_lib.cached_attention(q_BxTxHxD, k_all, v_all, mask_BxTxS)
            new_kv = (k_L, v_L)
        out = checkpoint_name(out, "attention_out").reshape(b, t, self.num_heads * self.head_dim)
        return self.o_proj(out), new_kv


def _write_cache(cache: LayerCache, k_BxTxKxD: jax.Array,
                 v_BxTxKxD: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Writes this step's keys/values into the stacked buffers at [layer, b, end[b]:end[b]+T].

    A scatter, not a vmapped dynamic_update_slice: XLA does the scatter in place on a donated or
    loop-carried buffer, while the vmapped slice update copied the whole cache every layer. Slots past
    the end of the cache (rows that already finished) are dropped.
    """
    rows_Bx1, slots_BxT = _cache_slots(cache.end_B, k_BxTxKxD.shape[1])
    k_L = cache.k_LxBxSxKxD.at[cache.layer, rows_Bx1, slots_BxT].set(
        k_BxTxKxD.astype(cache.k_LxBxSxKxD.dtype), mode="drop")
    v_L = cache.v_LxBxSxKxD.at[cache.layer, rows_Bx1, slots_BxT].set(
        v_BxTxKxD.astype(cache.v_LxBxSxKxD.dtype), mode="drop")
    return k_L, v_L


def _cache_slots(end_B: jax.Array, num_new: int) -> tuple[jax.Array, jax.Array]:
    """Row and slot indices `[B, 1]`, `[B, T]` of this step's writes."""
    rows_Bx1 = jnp.arange(end_B.shape[0])[:, None]
    return rows_Bx1, end_B[:, None] + jnp.arange(num_new)[None, :]


def cache_attention_mask(slot_segment_BxS: jax.Array, end_B: jax.Array, num_new: int,
                         window: int | None = None) -> jax.Array:
    """Query i of row b sits in slot end[b]+i; it sees filled slots up to and including its own.

    With a sliding `window`, only the last `window` filled slots up to its own: a row's filled slots hold
    consecutive positions (padding slots are skipped), so distances are counted in filled slots."""
    slots_S = jnp.arange(slot_segment_BxS.shape[1])
    query_slot_BxT = end_B[:, None] + jnp.arange(num_new)[None, :]
    causal_BxTxS = slots_S[None, None, :] <= query_slot_BxT[:, :, None]
    filled_BxS = slot_segment_BxS != 0
    mask = causal_BxTxS & filled_BxS[:, None, :]
    if window is not None:
        rank_BxS = jnp.cumsum(filled_BxS, axis=1)  # position + 1 of each filled slot
        last_slot = slots_S.shape[0] - 1
        query_rank_BxT = jnp.take_along_axis(rank_BxS, jnp.minimum(query_slot_BxT, last_slot), axis=1)
        mask &= rank_BxS[:, None, :] > query_rank_BxT[:, :, None] - window
    return mask


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: LlamaConfig, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.gate_proj = Linear(cfg.hidden_size, cfg.intermediate_size, ("embed", "mlp"), **kw)
        self.up_proj = Linear(cfg.hidden_size, cfg.intermediate_size, ("embed", "mlp"), **kw)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, ("mlp", "embed"), **kw)

    def __call__(self, x_BxTxE: jax.Array) -> jax.Array:
        gate_BxTxF = checkpoint_name(self.gate_proj(x_BxTxE), "mlp_gate")
        up_BxTxF = checkpoint_name(self.up_proj(x_BxTxE), "mlp_up")
        h_BxTxF = shard_activation(jax.nn.silu(gate_BxTxF) * up_BxTxF, ("batch", "length", "act_mlp"))
        return self.down_proj(h_BxTxF)


class Block(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, dtype: Any, param_dtype: Any, attention_impl: str,
                 rngs: nnx.Rngs):
        norm_kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **norm_kw)
        self.self_attn = Attention(cfg, dtype=dtype, param_dtype=param_dtype,
                                   attention_impl=attention_impl, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **norm_kw)
        self.mlp = MLP(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x_BxTxE: jax.Array, positions_BxT: jax.Array, segment_ids_BxT: jax.Array | None,
                 cache: LayerCache | None = None):
        attn_out, new_kv = self.self_attn(self.input_layernorm(x_BxTxE), positions_BxT, segment_ids_BxT,
                                          cache)
        h_BxTxE = x_BxTxE + attn_out
        out_BxTxE = h_BxTxE + self.mlp(self.post_attention_layernorm(h_BxTxE))
        out_BxTxE = shard_activation(checkpoint_name(out_BxTxE, "decoder_layer_out"),
                                     ("batch", "length", "act_embed"))
        return out_BxTxE, new_kv


class KVCache(NamedTuple):
    """KV cache for all layers. Slots are per row: row b next writes at slot `end_B[b]`."""

    k_LxBxSxKxD: jax.Array
    v_LxBxSxKxD: jax.Array
    slot_segment_BxS: jax.Array  # 0 = empty or padding
    end_B: jax.Array

    @classmethod
    def create(cls, cfg: LlamaConfig, batch: int, max_len: int, dtype: Any = jnp.float32) -> KVCache:
        shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.dim_per_head)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
                   jnp.zeros((batch, max_len), jnp.int32), jnp.zeros((batch,), jnp.int32))


class Llama(nnx.Module):
    """LlamaForCausalLM.

    Args:
      cfg: architecture.
      dtype: compute dtype (bf16 for training; fp32 for parity tests).
      param_dtype: storage dtype of parameters (fp32 for training).
      scan_layers: run the stacked layers under `lax.scan` (fast compile) or a Python loop.
      remat_policy: None / "none" for no rematerialisation, otherwise a `jax.checkpoint_policies` name
        (e.g. "nothing_saveable", "dots_saveable", "checkpoint_dots_with_no_batch_dims").
      attention_impl: one of `attention.BACKENDS`.
    """

    def __init__(self, cfg: LlamaConfig, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                 scan_layers: bool = False, remat_policy: str | None = None, attention_impl: str = "xla",
                 rngs: nnx.Rngs):
        self.cfg = cfg
        self.dtype = dtype
        self.scan_layers = scan_layers
        resolve_remat_policy(remat_policy)  # fail early on a bad name
        self.remat_policy = remat_policy
        self.embed_tokens = nnx.Param(_INIT(rngs.params(), (cfg.vocab_size, cfg.hidden_size), param_dtype),
                                      out_sharding=("vocab", "embed"), eager_sharding=False)

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_layers(rngs: nnx.Rngs) -> Block:
            return Block(cfg, dtype=dtype, param_dtype=param_dtype, attention_impl=attention_impl, rngs=rngs)

        self.layers = make_layers(rngs)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        if not cfg.tie_word_embeddings:
            self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, ("embed", "vocab"), dtype=dtype,
                                  param_dtype=param_dtype, rngs=rngs)

    def hidden_states(self, tokens_BxT: jax.Array, positions_BxT: jax.Array | None = None,
                      segment_ids_BxT: jax.Array | None = None) -> jax.Array:
        """The training (and scoring) forward: final normed hidden states `[B, T, E]`, before the LM head.

        Segment ids (packed rows) keep attention within each segment; 0 marks padding.
        """
        x_BxTxE, positions_BxT = self._embed(tokens_BxT, positions_BxT)
        x_BxTxE, _ = self._layers(x_BxTxE, positions_BxT, segment_ids_BxT, None)
        return self.norm(x_BxTxE)

    def decode_hidden_states(self, tokens_BxT: jax.Array, positions_BxT: jax.Array,
                             segment_ids_BxT: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
        """The cached forward (prefill and decode): row b's T new tokens go to cache slots
        `[end[b], end[b] + T)` (segment id 0 writes an empty slot) and attend to every filled slot up to
        their own. Returns the final normed hidden states `[B, T, E]` and the updated cache."""
        b, t = tokens_BxT.shape
        x_BxTxE, positions_BxT = self._embed(tokens_BxT, positions_BxT)
        rows_Bx1, slots_BxT = _cache_slots(cache.end_B, t)
        slot_segment_BxS = cache.slot_segment_BxS.at[rows_Bx1, slots_BxT].set(
            segment_ids_BxT.astype(cache.slot_segment_BxS.dtype), mode="drop")
        layer_cache = (cache.k_LxBxSxKxD, cache.v_LxBxSxKxD, slot_segment_BxS, cache.end_B)
        x_BxTxE, (k_L, v_L) = self._layers(x_BxTxE, positions_BxT, segment_ids_BxT, layer_cache)
        return self.norm(x_BxTxE), KVCache(k_L, v_L, slot_segment_BxS, cache.end_B + t)

    def _embed(self, tokens_BxT: jax.Array, positions_BxT: jax.Array | None) -> tuple[jax.Array, jax.Array]:
        b, t = tokens_BxT.shape
        if positions_BxT is None:
            positions_BxT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        x_BxTxE = jnp.take(self.embed_tokens[...], tokens_BxT, axis=0).astype(self.dtype)
        return shard_activation(x_BxTxE, ("batch", "length", "act_embed")), positions_BxT

    def _layers(self, x_BxTxE: jax.Array, positions_BxT: jax.Array, segment_ids_BxT: jax.Array | None,
                cache: tuple[jax.Array, jax.Array, jax.Array, jax.Array] | None):
        """The decoder layers, scanned or looped; with `cache` = (k, v, slot segments after this step's
        write, end), each layer writes its keys/values into the stacked buffers. Returns (x, (k, v))."""
        graphdef, layer_state = nnx.split(self.layers)

        def layer_fn(carry, layer_xs):
            # The whole cache rides in the carry, so each layer's write is an in-place update.
            x, k_L, v_L = carry
            params, index = layer_xs
            block = nnx.merge(graphdef, params)
            layer_cache = None if cache is None else LayerCache(k_L, v_L, index, cache[2], cache[3])
            y, new_kv = block(x, positions_BxT, segment_ids_BxT, layer_cache)
            if new_kv is not None:
                k_L, v_L = new_kv
            return (y, k_L, v_L), None

        policy = resolve_remat_policy(self.remat_policy)
        if policy is not None and cache is None:  # remat only matters under differentiation
            layer_fn = jax.checkpoint(layer_fn, policy=policy, prevent_cse=not self.scan_layers)

        carry = (x_BxTxE, *(cache[:2] if cache is not None else (None, None)))
        if self.scan_layers:
            carry, _ = jax.lax.scan(layer_fn, carry, (layer_state, jnp.arange(self.cfg.num_layers)))
        else:
            for i in range(self.cfg.num_layers):
                carry, _ = layer_fn(carry, (jax.tree.map(lambda a, i=i: a[i], layer_state), i))
        return carry[0], carry[1:]

    def lm_head_weight(self) -> jax.Array:
        """The LM head as an `[E, V]` matrix: the embedding, transposed, when the embeddings are tied."""
        if self.cfg.tie_word_embeddings:
            return self.embed_tokens[...].T
        return self.lm_head.kernel[...]

    def logits(self, h_BxTxE: jax.Array) -> jax.Array:
        """LM head; logits come out in fp32 (accumulated in fp32 whatever the compute dtype)."""
        logits = jnp.dot(h_BxTxE.astype(self.dtype), self.lm_head_weight().astype(self.dtype),
                         preferred_element_type=jnp.float32)
        return shard_activation(logits, ("batch", "length", "act_vocab"))

    def decode(self, tokens_BxT: jax.Array, positions_BxT: jax.Array, segment_ids_BxT: jax.Array,
               cache: KVCache) -> tuple[jax.Array, KVCache]:
        """Logits `[B, T, V]` (fp32) of the cached forward (see `decode_hidden_states`) and the new cache."""
        h_BxTxE, cache = self.decode_hidden_states(tokens_BxT, positions_BxT, segment_ids_BxT, cache)
        return self.logits(h_BxTxE), cache

    def __call__(self, tokens_BxT: jax.Array, positions_BxT: jax.Array | None = None,
                 segment_ids_BxT: jax.Array | None = None, cache: KVCache | None = None
                 ) -> tuple[jax.Array, KVCache | None]:
        """Logits `[B, T, V]` (fp32) and the updated cache: the training forward without a cache (cache
        None), `decode` with one (segment ids default to 1: every token real)."""
        if cache is None:
            return self.logits(self.hidden_states(tokens_BxT, positions_BxT, segment_ids_BxT)), None
        if segment_ids_BxT is None:
            segment_ids_BxT = jnp.ones(tokens_BxT.shape, jnp.int32)
        return self.decode(tokens_BxT, positions_BxT, segment_ids_BxT, cache)


# jax.checkpoint_policies entries that are policies themselves (the others are factories taking arguments).
_DIRECT_POLICIES = ("nothing_saveable", "everything_saveable", "dots_saveable", "checkpoint_dots",
                    "dots_with_no_batch_dims_saveable", "checkpoint_dots_with_no_batch_dims")
# Named presets over the `checkpoint_name` tags the model sets (MaxText-style).
_NAMED_POLICIES = {
    "save_qkv_proj": ("query_proj", "key_proj", "value_proj"),
    "save_qkv_attn": ("query_proj", "key_proj", "value_proj", "attention_out"),
    "save_attn_mlp": ("query_proj", "key_proj", "value_proj", "attention_out", "mlp_gate", "mlp_up"),
    "save_layer_out": ("decoder_layer_out",),
}
REMAT_POLICIES = ("none", "full", *_DIRECT_POLICIES, *_NAMED_POLICIES, "offload_dot_with_no_batch_dims")


@functools.cache
def resolve_remat_policy(name: str | None):
    """A remat policy by name: None/"none" disables remat; "full" saves nothing (recompute everything)."""
    if name is None or name in ("none", ""):
        return None
    if name == "full":
        name = "nothing_saveable"
    if name in _DIRECT_POLICIES:
        return getattr(jax.checkpoint_policies, name)
    if name in _NAMED_POLICIES:
        return jax.checkpoint_policies.save_only_these_names(*_NAMED_POLICIES[name])
    if name == "offload_dot_with_no_batch_dims":
        return jax.checkpoint_policies.offload_dot_with_no_batch_dims("device", "pinned_host")
    raise ValueError(f"unknown remat_policy {name!r}; choose one of {list(REMAT_POLICIES)}")


def build_model(cfg: LlamaConfig, *, seed: int = 0, **options: Any) -> Llama:
    """A randomly initialised model (HF's init: normal(0.02) weights, unit norms)."""
    return Llama(cfg, rngs=nnx.Rngs(params=seed), **options)


def abstract_model(cfg: LlamaConfig, **options: Any) -> Llama:
    """The model with ShapeDtypeStruct leaves: no memory allocated (for restoring and planning)."""
    return nnx.eval_shape(functools.partial(build_model, cfg, **options))


def model_params(model: Llama) -> dict[str, Any]:
    """The parameters as a nested dict of arrays (the layout checkpoints and convert use)."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def model_from_params(cfg: LlamaConfig, params: dict[str, Any], **options: Any) -> Llama:
    """A model holding `params` (cast to the model's param dtype), without a random init."""
    model = abstract_model(cfg, **options)
    graphdef, state = nnx.split(model)
    wanted = nnx.to_pure_dict(state)
    cast = jax.tree.map(lambda a, w: jnp.asarray(a, dtype=w.dtype), params, wanted)
    nnx.replace_by_pure_dict(state, cast)
    return nnx.merge(graphdef, state)
