"""The model's two forwards agree: the cached forward (prefill, then one token at a time) gives the hidden
states of the training forward; the LM head is the model's `lm_head_weight()`, tied or not."""

from __future__ import annotations

import dataclasses
import inspect

import jax.numpy as jnp
import numpy as np
import pytest

from vicuna_jax.model.config import LlamaConfig
from vicuna_jax.model.llama import KVCache, Llama, build_model

CFG = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                  num_kv_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_cached_forward_matches_the_training_forward(scan_layers):
    model = build_model(CFG, seed=1, scan_layers=scan_layers)
    rng = np.random.RandomState(0)
    lengths, total = [5, 9], 14
    tokens = rng.randint(0, CFG.vocab_size, (2, total)).astype(np.int32)
    want = [np.asarray(model.hidden_states(jnp.asarray(tokens[b:b + 1])))[0] for b in range(2)]

    # Prefill right-padded prompts (segment 0 = padding), then feed each row's next tokens one at a time.
    p = max(lengths)
    positions = np.broadcast_to(np.arange(p), (2, p))
    segments = (positions < np.asarray(lengths)[:, None]).astype(np.int32)
    prompt = np.where(segments, tokens[:, :p], 0)
    cache = KVCache.create(CFG, 2, 32)
    h, cache = model.decode_hidden_states(jnp.asarray(prompt), jnp.asarray(positions), jnp.asarray(segments),
                                          cache)
    for b, n in enumerate(lengths):
        np.testing.assert_allclose(np.asarray(h)[b, :n], want[b][:n], atol=2e-5)
    cache = cache._replace(end_B=jnp.asarray(lengths, jnp.int32))  # decoding overwrites the padding slots
    for step in range(total - p):
        pos = np.asarray(lengths) + step
        tok = tokens[np.arange(2), pos][:, None]
        h, cache = model.decode_hidden_states(jnp.asarray(tok), jnp.asarray(pos[:, None]),
                                              jnp.ones((2, 1), jnp.int32), cache)
        for b in range(2):
            np.testing.assert_allclose(np.asarray(h)[b, 0], want[b][pos[b]], atol=2e-5)
    # __call__ with a cache is the cached forward's logits.
    logits, _ = model(jnp.asarray(tok), jnp.asarray(pos[:, None]), None, cache)
    assert logits.shape == (2, 1, CFG.vocab_size)


def test_training_forward_takes_no_cache():
    assert "cache" not in inspect.signature(Llama.hidden_states).parameters
    model = build_model(CFG, seed=0)
    h = model.hidden_states(jnp.zeros((1, 4), jnp.int32))
    assert h.shape == (1, 4, CFG.hidden_size)


@pytest.mark.parametrize("tied", [False, True])
def test_lm_head_weight(tied):
    cfg = dataclasses.replace(CFG, tie_word_embeddings=tied)
    model = build_model(cfg, seed=2)
    w = np.asarray(model.lm_head_weight())
    assert w.shape == (cfg.hidden_size, cfg.vocab_size)
    head = model.embed_tokens[...].T if tied else model.lm_head.kernel[...]
    np.testing.assert_array_equal(w, np.asarray(head))
    h = jnp.asarray(np.random.RandomState(3).normal(size=(1, 2, cfg.hidden_size)), jnp.float32)
    np.testing.assert_allclose(np.asarray(model.logits(h)), np.asarray(h) @ w, atol=1e-5)
