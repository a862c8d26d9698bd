"""Sliding-window attention (Mistral): the XLA reference against a naive loop, the cuDNN wrapper and TPU
splash (interpret mode) against the reference, the Pallas GPU kernel refused with a named reason, and the
KV-cache mask counting distances in filled slots."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_attention import FWD_ATOL, GRAD_ATOL, LOGGER, forward_and_grads, make_qkv, packed_segment_ids

from vicuna_jax.model import attention as attn
from vicuna_jax.model import attention_kernels as kernels
from vicuna_jax.model.llama import cache_attention_mask

B = 2


@pytest.fixture(autouse=True)
def _fresh_warnings():
    attn._WARNED.clear()
    yield
    attn._WARNED.clear()


def naive_window_attention(q, k, v, segment_ids, window):
    """Per (row, segment, head): query at segment position i sees positions i-window+1 .. i."""
    seg = np.asarray(segment_ids)
    heads, kv_heads, dim = q.shape[2], k.shape[2], q.shape[3]
    out = np.zeros(q.shape, np.float32)
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    for b in range(seg.shape[0]):
        for s in sorted(set(seg[b].tolist()) - {0}):
            idx = np.nonzero(seg[b] == s)[0]
            pos = np.arange(len(idx))
            allowed = (pos[:, None] >= pos[None, :]) & (pos[:, None] - pos[None, :] < window)
            for h in range(heads):
                kvh = h // (heads // kv_heads)
                scores = np.where(allowed, q[b, idx, h] @ k[b, idx, kvh].T * dim**-0.5, -np.inf)
                probs = np.exp(scores - scores.max(-1, keepdims=True))
                out[b, idx, h] = (probs / probs.sum(-1, keepdims=True)) @ v[b, idx, kvh]
    return out


def _reference(seg, window):
    return lambda q, k, v: attn.xla_attention(q, k, v, seg, window=window)


def test_xla_window_matches_naive_loop_and_differs_from_full():
    t, window = 64, 7
    seg = packed_segment_ids(B, t)
    q, k, v, _ = make_qkv(B, t)
    out = np.asarray(attn.attention(q, k, v, seg, impl="xla", window=window))
    np.testing.assert_allclose(out, naive_window_attention(q, k, v, seg, window), rtol=0, atol=FWD_ATOL)
    assert np.abs(out - np.asarray(attn.xla_attention(q, k, v, seg))).max() > 0.1
    # A window at least as long as the sequence is plain causal attention.
    np.testing.assert_array_equal(attn.attention(q, k, v, seg, window=t), attn.xla_attention(q, k, v, seg))


def test_cudnn_wrapper_window_through_xla():
    """cuDNN's local_window_size=(window-1, 0) plus the segment mask, checked through XLA's implementation."""
    t, window = 48, 10
    seg = packed_segment_ids(B, t)
    q, k, v, ct = make_qkv(B, t)
    for segments in (seg, None):
        got, grads = forward_and_grads(lambda q, k, v, s=segments: kernels.cudnn_attention(
            q, k, v, s, implementation="xla", window=window), q, k, v, ct)
        ref, ref_grads = forward_and_grads(_reference(segments, window), q, k, v, ct)
        np.testing.assert_allclose(got, ref, rtol=0, atol=FWD_ATOL)
        for g, r in zip(grads, ref_grads, strict=True):
            np.testing.assert_allclose(g, r, rtol=0, atol=GRAD_ATOL)


def test_splash_window_matches_reference():
    t, window = 256, 40  # two 128-blocks; blocks entirely left of the window are skipped by the mask
    seg = packed_segment_ids(B, t)
    q, k, v, ct = make_qkv(B, t)
    got, grads = forward_and_grads(lambda q, k, v: kernels.pallas_tpu_attention(
        q, k, v, seg, interpret=True, block=128, window=window), q, k, v, ct)
    ref, ref_grads = forward_and_grads(_reference(seg, window), q, k, v, ct)
    np.testing.assert_allclose(got, ref, rtol=0, atol=FWD_ATOL)
    for g, r in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, r, rtol=0, atol=GRAD_ATOL)


def test_pallas_gpu_refuses_a_short_window_and_auto_falls_back(caplog):
    t = 64
    q, k, v, _ = make_qkv(B, t)
    with attn.simulate_platform("gpu"):
        refused = r"impl='pallas' cannot run here: .*no sliding window \(window 16 < sequence length 64\)"
        with pytest.raises(ValueError, match=refused):
            attn.attention(q, k, v, impl="pallas", window=16)
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            out = jax.jit(lambda q, k, v: attn.attention(q, k, v, impl="auto", window=16))(q, k, v)
        assert "falls back to 'xla'" in caplog.text and "no sliding window" in caplog.text
        np.testing.assert_allclose(out, attn.xla_attention(q, k, v, window=16), atol=FWD_ATOL)
        # A window covering the whole sequence needs no window support: the kernel runs.
        assert attn.resolve_backend("pallas", jnp.float32, q.shape[-1], window=64, length=64) == "pallas"


def test_cache_mask_counts_filled_slots():
    """Row 0 holds 3 prompt tokens, 2 padding slots, then decoded tokens: the window skips the padding."""
    seg = jnp.asarray([[1, 1, 1, 0, 0, 1, 1, 0], [1, 1, 1, 1, 1, 1, 0, 0]])
    end = jnp.asarray([6, 5])  # the query writes at these slots this step (already marked filled)
    mask = np.asarray(cache_attention_mask(seg, end, 1, window=3))[:, 0]
    # Row 0: the query in slot 6 is the 5th filled slot; it sees filled slots 2, 5 and 6.
    np.testing.assert_array_equal(mask[0], [0, 0, 1, 0, 0, 1, 1, 0])
    np.testing.assert_array_equal(mask[1], [0, 0, 0, 1, 1, 1, 0, 0])
    full = np.asarray(cache_attention_mask(seg, end, 1))[:, 0]
    np.testing.assert_array_equal(full[0], [1, 1, 1, 0, 0, 1, 1, 0])
