"""The decoding batch: one KV cache on the device whose rows hold independent sequences, plus each row's
sampling inputs on the host. `generate.Generator` and the serving engine both decode through it.

Each row holds one sequence. `admit` prefills new prompts into chosen rows (the other rows are untouched, so
they keep decoding afterwards) and starts them decoding; `step` runs up to `steps` batched decode steps for
every row at once and reports each row's new tokens and whether it finished (EOS or its token budget).

A decode step costs about as much as the cache is big (every step reads and rewrites it), so the cache is
kept only as large as the work in flight: its physical shape is (rows, length) buckets, both powers of two
(length at least 128), and `fit` grows, shrinks or compacts it before each step. Programs compile per
bucket: decode per (rows, length), the prefill forward pass per (prompts, prompt length) bucket, and tiny
copy programs for inserting prompts and resizing.

Sampling is per row and reproducible (see `sampling.sample_rows`): a seeded row gets the same tokens
whatever else shares the batch.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vicuna_jax.decoding.sampling import SamplingParams, sample_rows
from vicuna_jax.model.llama import KVCache, Llama

MIN_PROMPT_BUCKET = 32
MIN_LENGTH_BUCKET = 128
MAX_PREFILL_TOKENS = 8192


def next_pow2(n: int, floor: int = 1) -> int:
    """Smallest power of two >= max(n, floor)."""
    n = max(n, floor)
    return 1 << (n - 1).bit_length()


def prompt_bucket(n: int) -> int:
    """The padded length a prompt of n tokens is prefilled at."""
    return next_pow2(n, MIN_PROMPT_BUCKET)


@dataclasses.dataclass
class RowParams:
    """Per-row decode inputs, kept on the host and sent with every decode call (a few bytes per row), and
    each row's prompt length (host only)."""

    active_B: np.ndarray  # bool: the row holds a sequence that is still generating
    count_B: np.ndarray  # int32: tokens sampled so far (also the sampling key's counter)
    limit_B: np.ndarray  # int32: most tokens this row may sample
    temperature_B: np.ndarray  # float32
    top_p_B: np.ndarray  # float32
    top_k_B: np.ndarray  # int32
    seed_B: np.ndarray  # uint32
    ignore_eos_B: np.ndarray  # bool
    prompt_len_B: np.ndarray  # int32, host only: with count_B, the cache slots the row fills

    @classmethod
    def empty(cls, rows: int) -> RowParams:
        return cls(np.zeros(rows, bool), np.zeros(rows, np.int32), np.zeros(rows, np.int32),
                   np.zeros(rows, np.float32), np.ones(rows, np.float32), np.zeros(rows, np.int32),
                   np.zeros(rows, np.uint32), np.zeros(rows, bool), np.zeros(rows, np.int32))

    def head(self, rows: int) -> tuple[np.ndarray, ...]:
        """The decode program's inputs for the first `rows` rows."""
        return (self.active_B[:rows], self.count_B[:rows], self.limit_B[:rows], self.temperature_B[:rows],
                self.top_p_B[:rows], self.top_k_B[:rows], self.seed_B[:rows], self.ignore_eos_B[:rows])

    def permuted(self, order: Sequence[int]) -> RowParams:
        """Row i takes old row order[i]; -1 gives an empty row."""
        new = RowParams.empty(len(order))
        taken = [i for i, o in enumerate(order) if o >= 0]
        for f in dataclasses.fields(self):
            getattr(new, f.name)[taken] = getattr(self, f.name)[[order[i] for i in taken]]
        return new

    def start(self, row: int, prompt_len: int, params: SamplingParams, limit: int) -> None:
        self.active_B[row], self.count_B[row], self.limit_B[row] = True, 0, limit
        self.temperature_B[row], self.top_p_B[row], self.top_k_B[row] = (params.temperature, params.top_p,
                                                                         params.top_k)
        self.seed_B[row], self.ignore_eos_B[row] = params.seed & 0xFFFFFFFF, params.ignore_eos
        self.prompt_len_B[row] = prompt_len


@dataclasses.dataclass(frozen=True)
class RowTokens:
    """One row's share of a decode chunk."""

    ids: list[int]  # its new tokens, an ending EOS excluded
    sampled: int  # tokens it sampled in this chunk (an ending EOS included)
    count: int  # tokens it has sampled in all
    finish: str | None  # "stop" (EOS), "length" (its token budget) or None (still generating)


@dataclasses.dataclass(frozen=True)
class Fit:
    """What `DecodeBatch.fit` did: where the admitted sequences go, and whether live rows moved."""

    rows: list[int]  # free rows for the admitted sequences, in order
    moved: list[int] | None  # None: live rows stayed; else new row i holds old row moved[i]
    reshaped: bool  # the cache changed shape


class DecodeBatch:
    """The KV cache (physically `rows` x `length` slots) plus each row's next-token logits on the device,
    and each row's `RowParams` on the host.

    Args:
      model: the model (split once; its parameters are shared by every program).
      max_rows: most rows (None: as many as asked for).
      context_len: longest sequence (prompt + reply); defaults to the model's context.
      eos_ids: tokens that end a row (see `text.resolve_eos_ids`).
      cache_dtype: KV-cache dtype (default: the model's compute dtype).
      max_prefill_tokens: tokens per prefill call (padded prompts x rows); bounds prefill memory, since
        attention scores grow as rows x length^2.
    """

    def __init__(self, model: Llama, *, eos_ids: Sequence[int], max_rows: int | None = None,
                 context_len: int | None = None, cache_dtype: Any = None,
                 max_prefill_tokens: int = MAX_PREFILL_TOKENS):
        self.cfg = model.cfg
        self.context_len = min(context_len or self.cfg.max_position_embeddings,
                               self.cfg.max_position_embeddings)
        self.max_rows = max_rows
        self.max_len = -(-self.context_len // MIN_LENGTH_BUCKET) * MIN_LENGTH_BUCKET
        self.max_prefill_tokens = max_prefill_tokens
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
        """An empty cache, every row free (at start, and after an error, whatever the donated buffers hold).

        Committed to the device like the jitted calls' outputs: an uncommitted input is a different cache
        key, and would compile every program a second time."""
        device = jax.devices()[0]
        self.cache = jax.device_put(KVCache.create(self.cfg, rows, length, self.cache_dtype), device)
        self.logits_BxV = jax.device_put(jnp.zeros((rows, self.cfg.vocab_size), jnp.float32), device)
        self.params = RowParams.empty(rows)

    def bucket(self, rows: int, length: int) -> tuple[int, int]:
        """The physical shape that holds `rows` rows of `length` slots."""
        r = next_pow2(rows)
        return (r if self.max_rows is None else min(r, self.max_rows),
                min(next_pow2(length, MIN_LENGTH_BUCKET), self.max_len))

    def live_rows(self) -> list[int]:
        return [int(r) for r in np.flatnonzero(self.params.active_B)]

    def is_eos(self, token: int) -> bool:
        return token in self._eos_set

    # ------------------------------------------------------------ scheduling (host)

    def fit(self, admitted: Sequence[int], steps: int) -> Fit:
        """Shapes the cache for the next `steps`-token decode chunk: enough rows for the live sequences and
        `admitted` new ones (their prompt lengths), and enough slots for every live row's chunk and the
        admitted prompts' buckets. Live rows move to the front when that lets the cache shrink."""
        live = self.live_rows()
        if not live and not admitted:
            return Fit([], None, False)
        p = self.params
        need = [int(p.prompt_len_B[r]) + int(p.count_B[r]) + steps for r in live]
        need += [max(n + steps, prompt_bucket(n)) for n in admitted]
        rows, length = self.bucket(len(live) + len(admitted), min(max(need), self.max_len))
        moved = None
        shape = (self.rows, self.length)
        if not live:
            if (rows, length) != shape:
                self.reset(rows, length)
        elif rows < self.rows or live[-1] >= rows:
            moved = live
            self.resize(live + [-1] * (rows - len(live)), length)
        elif (rows, length) != shape:
            self.resize(list(range(self.rows)) + [-1] * (rows - self.rows), length)
        free = [r for r in range(rows) if not self.params.active_B[r]][:len(admitted)]
        return Fit(free, moved, (self.rows, self.length) != shape)

    def admit(self, rows: Sequence[int], prompts: Sequence[Sequence[int]],
              params: Sequence[SamplingParams]) -> int:
        """Prefills each prompt into its (free) row and starts it generating with its params; returns the
        number of prefill calls. Prompts of one length bucket share calls (less padding; each group is one
        compiled shape), at most `max_prefill_tokens` padded tokens per call. The rows start only once every
        prefill succeeded."""
        placed = sorted(zip(rows, prompts, params, strict=True), key=lambda x: len(x[1]))
        groups: dict[int, list[tuple[int, Sequence[int], SamplingParams]]] = collections.defaultdict(list)
        for item in placed:
            groups[prompt_bucket(len(item[1]))].append(item)
        calls = 0
        for bucket, group in groups.items():
            per_call = 1 << (max(self.max_prefill_tokens // bucket, 1).bit_length() - 1)
            for i in range(0, len(group), per_call):
                part = group[i:i + per_call]
                self.prefill([r for r, _, _ in part], [prompt for _, prompt, _ in part])
                calls += 1
        for row, prompt, sp in placed:
            self.params.start(row, len(prompt), sp, min(sp.max_new_tokens, self.context_len - len(prompt)))
        return calls

    def step(self, steps: int) -> dict[int, RowTokens]:
        """One decode chunk for every live row; a row that samples EOS or reaches its budget stops (its row
        is free from then on). Returns each live row's share."""
        out_BxN = self.decode(self.params, steps)
        p = self.params
        results: dict[int, RowTokens] = {}
        for row in self.live_rows():
            ids: list[int] = []
            sampled, eos = 0, False
            for tok in out_BxN[row]:
                if tok < 0:
                    break
                sampled += 1
                if self.is_eos(int(tok)) and not p.ignore_eos_B[row]:
                    eos = True
                    break
                ids.append(int(tok))
            p.count_B[row] += sampled
            count = int(p.count_B[row])
            finish = "stop" if eos else "length" if count >= p.limit_B[row] else None
            if finish:
                p.active_B[row] = False
            results[row] = RowTokens(ids, sampled, count, finish)
        return results

    def release(self, row: int) -> None:
        """Stops a row (cancelled, or its text hit a stop string); its slots are reused from now on."""
        if row < len(self.params.active_B):  # after a failed reshape the row may be gone already
            self.params.active_B[row] = False

    # ------------------------------------------------------------ device entry points

    def resize(self, order: Sequence[int], length: int) -> None:
        """New physical shape: row i holds old row order[i] (-1: an empty row); slots cut or padded to
        `length`. The caller keeps every filled slot below `length`."""
        old = self.rows
        order_R = np.asarray([o if o >= 0 else old for o in order], np.int32)  # `old` is out of range: empty
        self.cache, self.logits_BxV = self._resize(self.cache, self.logits_BxV, order_R, length=length)
        self.params = self.params.permuted(order)

    def prefill(self, rows: Sequence[int], prompts: Sequence[Sequence[int]]) -> None:
        """Writes each prompt into its row (slots [0, len)); the row's next-token logits become ready."""
        n = next_pow2(len(rows)) if self.max_rows is None else min(next_pow2(len(rows)), self.max_rows)
        p = min(prompt_bucket(max(len(x) for x in prompts)), self.length)
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
        """Up to `steps` tokens per row; stops early once every row is done. Emits -1 for finished rows."""
        model = nnx.merge(self.graphdef, state)

        def cond(c):
            i, _, _, _, done_B, _ = c
            return (i < steps) & ~jnp.all(done_B)

        def body(c):
            i, cache, logits_BxV, count_B, done_B, out_BxN = c
            tok_B = sample_rows(logits_BxV, seed_B, count_B, temperature_B, top_p_B, top_k_B)
            tok_B = jnp.where(done_B, -1, tok_B)
            out_BxN = out_BxN.at[:, i].set(tok_B)
            count_B = count_B + (~done_B).astype(jnp.int32)
            hit_eos_B = jnp.isin(tok_B, self.eos_ids) & ~ignore_eos_B
            done_B = done_B | hit_eos_B | (count_B >= limit_B)
            # Only rows that go on need this token in the cache; the others write an empty slot in place.
            write_B = ~done_B
            new_logits, new_cache = model.decode(jnp.maximum(tok_B, 0)[:, None], cache.end_B[:, None],
                                                 write_B.astype(jnp.int32)[:, None], cache)
            new_cache = new_cache._replace(end_B=jnp.where(write_B, cache.end_B + 1, cache.end_B))
            return i + 1, new_cache, new_logits[:, 0], count_B, done_B, out_BxN

        done_B = ~active_B | (count_B >= limit_B)
        out = jnp.full((logits_BxV.shape[0], steps), -1, jnp.int32)
        _, cache, logits_BxV, _, _, out = jax.lax.while_loop(
            cond, body, (0, cache, logits_BxV, count_B, done_B, out))
        return cache, logits_BxV, out
