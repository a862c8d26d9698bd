"""Sampling: top-k / top-p filters keep the right tokens; keyed per-row draws depend only on the row."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vicuna_jax.decoding.sampling import SamplingParams, per_row, sample_rows, sample_tokens


def test_sample_tokens_respects_top_k_and_top_p():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 4000))
    keys = jax.random.split(jax.random.key(0), 1)[0]
    one = lambda v, dt: jnp.full((4000,), v, dt)
    t1, p1 = one(1.0, jnp.float32), one(1.0, jnp.float32)
    k2 = np.asarray(sample_tokens(logits, keys, t1, p1, one(2, jnp.int32)))
    assert set(k2) == {0, 1}
    assert abs((k2 == 0).mean() - 0.5 / 0.8) < 0.03
    p = np.asarray(sample_tokens(logits, keys, t1, one(0.7, jnp.float32), one(0, jnp.int32)))
    assert set(p) == {0, 1}  # 0.5 < 0.7 needs the second token; 0.8 >= 0.7 stops there
    full = np.asarray(sample_tokens(logits, keys, one(1.0, jnp.float32), one(1.0, jnp.float32),
                                    one(0, jnp.int32)))
    assert set(full) == {0, 1, 2, 3}


def _rows(logits, seeds, counts, temps, top_p=None, top_k=None):
    n = len(seeds)
    return np.asarray(sample_rows(jnp.asarray(logits, jnp.float32), jnp.asarray(seeds, jnp.uint32),
                                  jnp.asarray(counts, jnp.int32), jnp.asarray(temps, jnp.float32),
                                  jnp.asarray(top_p if top_p is not None else [1.0] * n, jnp.float32),
                                  jnp.asarray(top_k if top_k is not None else [0] * n, jnp.int32)))


def test_sample_rows_draws_depend_only_on_the_row():
    logits = np.random.default_rng(0).normal(size=(4, 50)) * 2
    seeds, counts, temps = [3, 4, 5, 6], [0, 7, 2, 9], [1.0, 0.8, 1.3, 0.0]
    together = _rows(logits, seeds, counts, temps)
    alone = [_rows(logits[i:i + 1], seeds[i:i + 1], counts[i:i + 1], temps[i:i + 1])[0] for i in range(4)]
    reordered = _rows(logits[::-1], seeds[::-1], counts[::-1], temps[::-1])[::-1]
    assert together.tolist() == alone == reordered.tolist()
    assert together[3] == np.argmax(logits[3])  # temperature 0: greedy next to sampled rows
    # The key advances with the row's token count: other counts give other draws.
    draws = {int(_rows(logits[:1], [3], [c], [1.5])[0]) for c in range(20)}
    assert len(draws) > 1


def test_all_greedy_rows_take_the_argmax():
    logits = np.random.default_rng(1).normal(size=(3, 20))
    assert _rows(logits, [1, 2, 3], [0, 0, 0], [0.0] * 3).tolist() == np.argmax(logits, -1).tolist()


def test_sampling_params_validate_and_spread_seeds():
    rows = per_row(SamplingParams(seed=10, temperature=0.5), 3)
    assert [r.seed for r in rows] == [10, 11, 12] and {r.temperature for r in rows} == {0.5}
    with pytest.raises(ValueError, match="2 SamplingParams for 3 prompts"):
        per_row(rows[:2], 3)
    for bad in (dict(max_new_tokens=-1), dict(temperature=-0.1), dict(top_p=0.0), dict(top_k=-1)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SamplingParams(**bad)
