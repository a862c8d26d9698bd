"""How the next token is picked: sampling parameters, and per-row sampling on the device.

Rows are independent: each has its own temperature, top-p, top-k and seed, and row r's key for its k-th token
is `fold_in(key(seed_r), k)`, so a seeded row draws the same tokens whatever else shares its batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. temperature 0 = greedy; top_k 0 and top_p 1 disable those filters.

    `max_new_tokens` is also capped by the room left in the context; generation ends early at an EOS token
    (unless `ignore_eos`) or once the text holds one of `stop_strings` (which is not part of the reply).
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop_strings: tuple[str, ...] = ()
    seed: int = 0
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")


def per_row(params: SamplingParams | Sequence[SamplingParams], n: int) -> list[SamplingParams]:
    """One SamplingParams per row: `params` itself when it is a sequence of n, else row b gets seed + b."""
    if isinstance(params, SamplingParams):
        return [dataclasses.replace(params, seed=params.seed + i) for i in range(n)]
    rows = list(params)
    if len(rows) != n:
        raise ValueError(f"{len(rows)} SamplingParams for {n} prompts")
    return rows


def sample_tokens(logits_BxV: jax.Array, rng: jax.Array, temperature_B: jax.Array, top_p_B: jax.Array,
                  top_k_B: jax.Array) -> jax.Array:
    """Per-row sampling; rows with temperature 0 take the argmax.

    `rng` is one key for the whole batch, or a `[B]` array of keys (one per row, batch-invariant draws).
    """
    greedy_B = jnp.argmax(logits_BxV, axis=-1)
    scaled = logits_BxV / jnp.maximum(temperature_B, 1e-6)[:, None]
    sorted_logits = jnp.sort(scaled, axis=-1)[:, ::-1]
    vocab = logits_BxV.shape[-1]
    # top-k: the k-th largest logit is the threshold (k = 0 keeps everything).
    k_B = jnp.where(top_k_B > 0, jnp.minimum(top_k_B, vocab), vocab)
    kth_B = jnp.take_along_axis(sorted_logits, (k_B - 1)[:, None], axis=-1)
    # top-p: keep the smallest prefix of sorted tokens whose probability mass reaches p.
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = mass_before < top_p_B[:, None]
    last_kept = jnp.sum(keep_sorted, axis=-1) - 1
    pth_B = jnp.take_along_axis(sorted_logits, last_kept[:, None], axis=-1)
    threshold = jnp.maximum(kth_B, pth_B)
    filtered = jnp.where(scaled >= threshold, scaled, -jnp.inf)
    if jnp.ndim(rng) == 0 or jax.dtypes.issubdtype(jnp.asarray(rng).dtype, jnp.uint32):
        sampled_B = jax.random.categorical(rng, filtered, axis=-1)
    else:  # one key per row: a row's draw does not depend on the rest of the batch
        sampled_B = jax.vmap(lambda k, lg: jax.random.categorical(k, lg))(rng, filtered)
    return jnp.where(temperature_B > 0, sampled_B, greedy_B).astype(jnp.int32)


def sample_rows(logits_BxV: jax.Array, seed_B: jax.Array, count_B: jax.Array, temperature_B: jax.Array,
                top_p_B: jax.Array, top_k_B: jax.Array) -> jax.Array:
    """Keyed per-row sampling: row b's draw uses `fold_in(key(seed_b), count_b)` (count = tokens it has
    sampled so far). Skips the vocabulary sort entirely when every row is greedy."""
    greedy_B = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)

    def sampled(_):
        keys_B = jax.vmap(lambda s, c: jax.random.fold_in(jax.random.key(s), c))(seed_B, count_B)
        return sample_tokens(logits_BxV, keys_B, temperature_B, top_p_B, top_k_B)

    return jax.lax.cond(jnp.any(temperature_B > 0), sampled, lambda _: greedy_B, None)
