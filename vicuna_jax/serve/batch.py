"""Device state of the serving engine: one KV cache whose rows hold independent sequences.

Each row holds one sequence. `prefill` writes new prompts into chosen rows (the other rows are untouched, so
they keep decoding afterwards); `decode` runs up to `steps` batched decode steps for every row at once.

A decode step costs about as much as the cache is big (every step reads and rewrites it), so the cache is
kept only as large as the work in flight: its physical shape is (rows, length) buckets, both powers of two
(length at least 128), and `resize` grows, shrinks or compacts it between decode calls. Programs compile per
bucket: decode per (rows, length), the prefill forward pass per (prompts, prompt length) bucket, and tiny
copy programs for inserting prompts and resizing.

Sampling is per row and reproducible: row r's key at its k-th token is fold_in(key(seed_r), k), so a seeded
request gets the same tokens whatever else shares the batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vicuna_jax.generate import sample_tokens
from vicuna_jax.model.llama import KVCache, Llama

MIN_PROMPT_BUCKET = 32
MIN_LENGTH_BUCKET = 128


def next_pow2(n: int, floor: int = 1) -> int:
    """Smallest power of two >= max(n, floor)."""
    n = max(n, floor)
    return 1 << (n - 1).bit_length()


@dataclasses.dataclass
class RowParams:
    """Per-row decode inputs, kept on the host and sent with every decode call (a few bytes per row)."""

    active_B: np.ndarray  # bool: the row holds a sequence that is still generating
    count_B: np.ndarray  # int32: tokens sampled so far (also the sampling key's counter)
    limit_B: np.ndarray  # int32: most tokens this row may sample
    temperature_B: np.ndarray  # float32
    top_p_B: np.ndarray  # float32
    top_k_B: np.ndarray  # int32
    seed_B: np.ndarray  # uint32
    ignore_eos_B: np.ndarray  # bool

    @classmethod
    def empty(cls, rows: int) -> RowParams:
        return cls(np.zeros(rows, bool), np.zeros(rows, np.int32), np.zeros(rows, np.int32),
                   np.zeros(rows, np.float32), np.ones(rows, np.float32), np.zeros(rows, np.int32),
                   np.zeros(rows, np.uint32), np.zeros(rows, bool))

    def head(self, rows: int) -> tuple[np.ndarray, ...]:
        return tuple(getattr(self, f.name)[:rows] for f in dataclasses.fields(self))

    def permute(self, order: Sequence[int]) -> None:
        """Row i takes old row order[i]; the rows after len(order) are cleared."""
        fresh = RowParams.empty(len(self.active_B))
        for f in dataclasses.fields(self):
            new = getattr(fresh, f.name)
            new[:len(order)] = getattr(self, f.name)[list(order)]
            setattr(self, f.name, new)


def _sample_rows(logits_BxV: jax.Array, seed_B: jax.Array, count_B: jax.Array, temperature_B: jax.Array,
                 top_p_B: jax.Array, top_k_B: jax.Array) -> jax.Array:
    """Per-row keyed sampling; skips the vocabulary sort entirely when every row is greedy."""
    greedy_B = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)

    def sampled(_):
        keys = jax.vmap(lambda s, c: jax.random.fold_in(jax.random.key(s), c))(seed_B, count_B)
        one = lambda lg, k, t, p, tk: sample_tokens(lg[None], k, t[None], p[None], tk[None])[0]  # noqa: E731
        return jax.vmap(one)(logits_BxV, keys, temperature_B, top_p_B, top_k_B)

    return jax.lax.cond(jnp.any(temperature_B > 0), sampled, lambda _: greedy_B, None)


class DecodeBatch:
    """The KV cache (physically `rows` x `length` slots) plus each row's next-token logits, on the device."""

    def __init__(self, model: Llama, max_rows: int, max_len: int, eos_ids: list[int],
                 cache_dtype: Any = None):
        self.cfg = model.cfg
        self.max_rows, self.max_len = max_rows, max_len
        self.graphdef, self.state = nnx.split(model)
        self.cache_dtype = cache_dtype or model.dtype
        self.eos_ids = jnp.asarray(sorted(set(eos_ids)), jnp.int32)
        self._eos_set = frozenset(int(x) for x in eos_ids)
        self._prefill = jax.jit(self._prefill_impl)
        self._insert = jax.jit(self._insert_impl, donate_argnums=(0, 1))
        self._resize = jax.jit(self._resize_impl, static_argnames=("length",))  # new shape: no reuse
        self._decode = jax.jit(self._decode_impl, static_argnames=("steps",), donate_argnums=(1, 2))
        self.prefill_shapes: set[tuple[int, int]] = set()  # (prompts, prompt length) buckets compiled
        self.decode_shapes: set[tuple[int, int]] = set()  # (rows, length) buckets compiled
        self.reset()

    @property
    def rows(self) -> int:
        return self.cache.end_B.shape[0]

    @property
    def length(self) -> int:
        return self.cache.slot_segment_BxS.shape[1]

    def reset(self, rows: int = 1, length: int = MIN_LENGTH_BUCKET) -> None:
        """An empty cache (at start, and after an error, whatever the donated buffers then hold).

        Committed to the device like the jitted calls' outputs: an uncommitted input is a different cache
        key, and would compile every program a second time."""
        device = jax.devices()[0]
        self.cache = jax.device_put(KVCache.create(self.cfg, rows, length, self.cache_dtype), device)
        self.logits_BxV = jax.device_put(jnp.zeros((rows, self.cfg.vocab_size), jnp.float32), device)

    def bucket(self, rows: int, length: int) -> tuple[int, int]:
        """The physical shape that holds `rows` rows of `length` slots."""
        return (min(next_pow2(rows), self.max_rows),
                min(next_pow2(length, MIN_LENGTH_BUCKET), self.max_len))

    # ------------------------------------------------------------ host entry points

    def resize(self, order: Sequence[int], length: int) -> None:
        """New physical shape: row i holds old row order[i] (-1: an empty row); slots cut or padded to
        `length`. The caller keeps every filled slot below `length`."""
        old = self.rows
        order_R = np.asarray([o if o >= 0 else old for o in order], np.int32)  # `old` is out of range: empty
        self.cache, self.logits_BxV = self._resize(self.cache, self.logits_BxV, order_R, length=length)

    def prefill(self, rows: Sequence[int], prompts: Sequence[Sequence[int]]) -> None:
        """Writes each prompt into its row (slots [0, len)); the row's next-token logits become ready."""
        n = min(next_pow2(len(rows)), self.max_rows)
        p = min(next_pow2(max(len(x) for x in prompts), MIN_PROMPT_BUCKET), self.length)
        tokens = np.zeros((n, p), np.int32)
        lengths = np.ones((n,), np.int32)
        row_idx = np.full((n,), self.rows, np.int32)  # padding rows point past the end: their writes drop
        for i, (row, prompt) in enumerate(zip(rows, prompts, strict=True)):
            tokens[i, :len(prompt)] = prompt
            lengths[i], row_idx[i] = len(prompt), row
        self.prefill_shapes.add((n, p))
        new = self._prefill(self.state, tokens, lengths)
        self.cache, self.logits_BxV = self._insert(self.cache, self.logits_BxV, *new, lengths, row_idx)

    def decode(self, params: RowParams, steps: int) -> np.ndarray:
        """Up to `steps` tokens for every row, [rows, steps], -1 where a row is inactive or finished."""
        self.decode_shapes.add((self.rows, self.length))
        self.cache, self.logits_BxV, out = self._decode(self.state, self.cache, self.logits_BxV,
                                                        *params.head(self.rows), steps=steps)
        return np.asarray(out)

    def is_eos(self, token: int) -> bool:
        return token in self._eos_set

    # ------------------------------------------------------------ jitted pieces

    def _prefill_impl(self, state, tokens_NxP, lengths_N):
        """The prompts' keys/values in a cache of their own (attention costs P x P, not P x length)."""
        model = nnx.merge(self.graphdef, state)
        n, p = tokens_NxP.shape
        positions_NxP = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (n, p))
        segments_NxP = (positions_NxP < lengths_N[:, None]).astype(jnp.int32)
        sub = KVCache.create(self.cfg, n, p, self.cache_dtype)
        h_NxPxE, sub = model.decode_hidden_states(tokens_NxP, positions_NxP, segments_NxP, sub)
        last_NxE = jnp.take_along_axis(h_NxPxE, (lengths_N - 1)[:, None, None], axis=1)[:, 0]
        return sub.k_LxBxSxKxD, sub.v_LxBxSxKxD, segments_NxP, model.logits(last_NxE[:, None])[:, 0]

    @staticmethod
    def _insert_impl(cache: KVCache, logits_BxV, k_LxNxPxKxD, v_LxNxPxKxD, segments_NxP, logits_NxV,
                     lengths_N, rows_N):
        """Copies prefilled rows into the shared cache; the rest of each row is marked empty (stale values
        stay but are masked). Padding rows have an out-of-range index and are dropped."""
        n, p = segments_NxP.shape
        seg_NxS = jnp.zeros((n, cache.slot_segment_BxS.shape[1]), jnp.int32).at[:, :p].set(segments_NxP)
        cache = KVCache(
            cache.k_LxBxSxKxD.at[:, rows_N, :p].set(k_LxNxPxKxD, mode="drop"),
            cache.v_LxBxSxKxD.at[:, rows_N, :p].set(v_LxNxPxKxD, mode="drop"),
            cache.slot_segment_BxS.at[rows_N].set(seg_NxS, mode="drop"),
            cache.end_B.at[rows_N].set(lengths_N, mode="drop"),
        )
        return cache, logits_BxV.at[rows_N].set(logits_NxV, mode="drop")

    @staticmethod
    def _resize_impl(cache: KVCache, logits_BxV, order_R, *, length: int):
        take = lambda x, axis: jnp.take(x, order_R, axis=axis, mode="fill", fill_value=0)  # noqa: E731

        def fit(x, axis):
            have = x.shape[axis]
            if have >= length:
                return jax.lax.slice_in_dim(x, 0, length, axis=axis)
            pad = [(0, 0)] * x.ndim
            pad[axis] = (0, length - have)
            return jnp.pad(x, pad)

        cache = KVCache(fit(take(cache.k_LxBxSxKxD, 1), 2), fit(take(cache.v_LxBxSxKxD, 1), 2),
                        fit(take(cache.slot_segment_BxS, 0), 1), take(cache.end_B, 0))
        return cache, take(logits_BxV, 0)

    def _decode_impl(self, state, cache: KVCache, logits_BxV, active_B, count_B, limit_B, temperature_B,
                     top_p_B, top_k_B, seed_B, ignore_eos_B, *, steps: int):
        model = nnx.merge(self.graphdef, state)

        def cond(c):
            i, _, _, _, done_B, _ = c
            return (i < steps) & ~jnp.all(done_B)

        def body(c):
            i, cache, logits_BxV, count_B, done_B, out_BxN = c
            tok_B = _sample_rows(logits_BxV, seed_B, count_B, temperature_B, top_p_B, top_k_B)
            tok_B = jnp.where(done_B, -1, tok_B)
            out_BxN = out_BxN.at[:, i].set(tok_B)
            count_B = count_B + (~done_B).astype(jnp.int32)
            hit_eos_B = jnp.isin(tok_B, self.eos_ids) & ~ignore_eos_B
            done_B = done_B | hit_eos_B | (count_B >= limit_B)
            # Only rows that go on need this token in the cache; the others write an empty slot in place.
            write_B = ~done_B
            new_logits, new_cache = model(jnp.maximum(tok_B, 0)[:, None], cache.end_B[:, None],
                                          write_B.astype(jnp.int32)[:, None], cache)
            new_cache = new_cache._replace(end_B=jnp.where(write_B, cache.end_B + 1, cache.end_B))
            return i + 1, new_cache, new_logits[:, 0], count_B, done_B, out_BxN

        done_B = ~active_B | (count_B >= limit_B)
        out = jnp.full((logits_BxV.shape[0], steps), -1, jnp.int32)
        _, cache, logits_BxV, _, _, out = jax.lax.while_loop(
            cond, body, (0, cache, logits_BxV, count_B, done_B, out))
        return cache, logits_BxV, out
