"""Attention backends against the XLA reference, and the reference against a naive per-segment loop.

The Pallas kernels run in interpret mode on CPU: directly with interpret=True, or through the interface
inside `attention.simulate_platform`. Splash uses the generic Pallas interpreter (interpret=True), not
`pltpu.force_tpu_interpret_mode()`, which in jax 0.10.2 fails on a vmapped pallas_call (the batch grid
dimension gets no dimension_semantics entry); the kernel code that runs is the same. Inputs are fp32 with
causal + packed segments (several per row, trailing padding) + GQA (H=4 query heads, K=2 kv heads).
Tolerances (max abs diff, fp32): forward FWD_ATOL, gradients dq/dk/dv GRAD_ATOL. Measured: forward
<= 1.1e-6, gradients <= 3.3e-6 (|dv| up to ~7).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

from vicuna_jax.model import attention as attn
from vicuna_jax.model import attention_kernels as kernels

FWD_ATOL = 1e-5
GRAD_ATOL = 2e-5
B, H, K, D = 2, 4, 2, 64
LOGGER = "vicuna_jax.model.attention"

Fn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


@pytest.fixture(autouse=True)
def _fresh_warnings():
    attn._WARNED.clear()  # fallback warnings are logged once per process; each test checks its own
    yield
    attn._WARNED.clear()


def packed_segment_ids(batch: int, length: int) -> jax.Array:
    """Rows with several segments of uneven length and trailing padding (0); ids need not start at 1."""
    rows = []
    for b in range(batch):
        cuts = sorted({int(length * f) for f in (0.2 + 0.1 * b, 0.45, 0.8 - 0.05 * b)})
        row = np.zeros(length, np.int32)
        start = 0
        for i, cut in enumerate(cuts):
            row[start:cut] = 3 * b + i + 1
            start = cut
        # The tail after the last cut is padding except in the last row, which ends in a real segment.
        if b == batch - 1:
            row[start:] = 99
        rows.append(row)
    return jnp.asarray(np.stack(rows))


def make_qkv(batch: int, length: int, heads: int = H, kv_heads: int = K, dim: int = D):
    kq, kk, kv, kc = jax.random.split(jax.random.key(length), 4)
    q = jax.random.normal(kq, (batch, length, heads, dim), jnp.float32)
    k = jax.random.normal(kk, (batch, length, kv_heads, dim), jnp.float32)
    v = jax.random.normal(kv, (batch, length, kv_heads, dim), jnp.float32)
    cotangent = jax.random.normal(kc, (batch, length, heads, dim), jnp.float32)
    return q, k, v, cotangent


def forward_and_grads(fn: Fn, q, k, v, cotangent):
    """Output and (dq, dk, dv) for a random output cotangent (padding rows included), traced here and now."""
    def run(q, k, v):
        out, pullback = jax.vjp(fn, q, k, v)
        return out, pullback(cotangent)
    return jax.jit(run)(q, k, v)


def assert_matches_reference(fn: Fn, segment_ids, q, k, v, cotangent) -> None:
    out, grads = forward_and_grads(fn, q, k, v, cotangent)
    ref_out, ref_grads = forward_and_grads(lambda q, k, v: attn.xla_attention(q, k, v, segment_ids),
                                           q, k, v, cotangent)
    assert out.shape == ref_out.shape and out.dtype == ref_out.dtype
    np.testing.assert_allclose(out, ref_out, rtol=0, atol=FWD_ATOL)
    for name, g, ref_g in zip(("dq", "dk", "dv"), grads, ref_grads, strict=True):
        assert bool(jnp.all(jnp.isfinite(g))), name
        np.testing.assert_allclose(g, ref_g, rtol=0, atol=GRAD_ATOL, err_msg=name)


# --- the reference itself -----------------------------------------------------------------------------------

def naive_attention(q, k, v, segment_ids):
    """One softmax per (row, segment, head) over that segment's tokens only, causal by position."""
    seg = np.asarray(segment_ids)
    heads, kv_heads, dim = q.shape[2], k.shape[2], q.shape[3]
    out = jnp.zeros_like(q)
    for b in range(seg.shape[0]):
        for s in sorted(set(seg[b].tolist()) - {0}):
            idx = np.nonzero(seg[b] == s)[0]
            causal = idx[:, None] >= idx[None, :]
            for h in range(heads):
                kvh = h // (heads // kv_heads)
                scores = q[b, idx, h] @ k[b, idx, kvh].T * dim**-0.5
                probs = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)
                out = out.at[b, idx, h].set(probs @ v[b, idx, kvh])
    return out


def test_xla_reference_matches_naive_per_segment_loop():
    t = 48
    seg = packed_segment_ids(B, t)
    q, k, v, ct = make_qkv(B, t)
    out, grads = forward_and_grads(lambda q, k, v: attn.xla_attention(q, k, v, seg), q, k, v, ct)
    ref_out, ref_grads = forward_and_grads(lambda q, k, v: naive_attention(q, k, v, seg), q, k, v, ct)
    np.testing.assert_allclose(out, ref_out, rtol=0, atol=FWD_ATOL)
    for g, ref_g in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, ref_g, rtol=0, atol=GRAD_ATOL)

    pad_BxT = np.asarray(seg) == 0
    assert pad_BxT.any() and (~pad_BxT).any()
    assert np.all(np.asarray(out)[pad_BxT] == 0.0), "padding queries must give exact zeros"
    dq, dk, dv = (np.asarray(g) for g in grads)
    assert np.isfinite(dq).all() and np.isfinite(dk).all() and np.isfinite(dv).all()
    assert np.all(dq[pad_BxT] == 0.0) and np.all(dk[pad_BxT] == 0.0) and np.all(dv[pad_BxT] == 0.0)


def test_xla_reference_without_segments_is_plain_causal():
    t = 16
    q, k, v, _ = make_qkv(B, t)
    ones = jnp.ones((B, t), jnp.int32)
    np.testing.assert_allclose(attn.xla_attention(q, k, v), naive_attention(q, k, v, ones), atol=FWD_ATOL)


# --- fused backends in interpret mode -----------------------------------------------------------------------

# T=256: two forward blocks of 128 and eight backward blocks of 32; T=100 is padded to one 128 block.
@pytest.mark.parametrize("length,blocks", [(256, None), (100, None)], ids=["T256-multiblock", "T100-padded"])
def test_pallas_gpu_kernel_matches_reference(length, blocks):
    seg = packed_segment_ids(B, length)
    q, k, v, ct = make_qkv(B, length)

    def fn(q, k, v):
        return kernels.pallas_gpu_attention(q, k, v, seg, interpret=True, blocks=blocks)
    assert_matches_reference(fn, seg, q, k, v, ct)


@pytest.mark.parametrize("length,block", [(256, 128), (200, None)], ids=["T256-multiblock", "T200-padded"])
def test_pallas_tpu_splash_matches_reference(length, block):
    seg = packed_segment_ids(B, length)
    q, k, v, ct = make_qkv(B, length)

    def fn(q, k, v):
        return kernels.pallas_tpu_attention(q, k, v, seg, interpret=True, block=block)
    assert_matches_reference(fn, seg, q, k, v, ct)


@pytest.mark.parametrize("platform", ["gpu", "tpu"])
def test_pallas_through_interface_without_segment_ids(platform):
    q, k, v, ct = make_qkv(B, 128)
    with attn.simulate_platform(platform):
        assert_matches_reference(lambda q, k, v: attn.attention(q, k, v, impl="pallas"), None, q, k, v, ct)


@pytest.mark.parametrize("platform", ["gpu", "tpu"])
def test_pallas_bfloat16_keeps_dtype_and_tracks_fp32_reference(platform):
    seg = packed_segment_ids(B, 128)
    q, k, v, _ = make_qkv(B, 128)
    with attn.simulate_platform(platform):
        out = jax.jit(lambda q, k, v: attn.attention(q, k, v, seg, impl="pallas"))(
            *(x.astype(jnp.bfloat16) for x in (q, k, v)))
    assert out.dtype == jnp.bfloat16
    # bf16 inputs carry ~3 significant digits; outputs are O(1).
    np.testing.assert_allclose(out.astype(jnp.float32), attn.xla_attention(q, k, v, seg), rtol=0, atol=3e-2)


def test_cudnn_wrapper_mask_logic_through_xla():
    """cuDNN cannot run on CPU; the same wrapper (segment mask, GQA, time padding, zeroed padding rows) can,
    with jax.nn.dot_product_attention's XLA implementation."""
    seg = packed_segment_ids(B, 100)
    q, k, v, ct = make_qkv(B, 100)
    fn = lambda q, k, v: kernels.cudnn_attention(q, k, v, seg, implementation="xla")
    assert_matches_reference(fn, seg, q, k, v, ct)


# --- shard_map over a mesh ----------------------------------------------------------------------------------

def _mesh(data: int, fsdp: int, tensor: int) -> jax.sharding.Mesh:
    return jax.make_mesh((data, fsdp, tensor), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3,
                         devices=jax.devices()[: data * fsdp * tensor])


@pytest.mark.parametrize("platform", ["gpu", "tpu"])
def test_shard_map_on_8_device_mesh_equals_unsharded(platform):
    batch, t = 4, 128  # batch 4 over data*fsdp = 4, heads 4 / kv heads 2 over tensor = 2
    seg = packed_segment_ids(batch, t)
    q, k, v, ct = make_qkv(batch, t)

    def fn(q, k, v):
        return attn.attention(q, k, v, seg, impl="pallas")
    with attn.simulate_platform(platform):
        out, grads = forward_and_grads(fn, q, k, v, ct)
        with jax.set_mesh(_mesh(2, 2, 2)):
            assert "shard_map" in str(jax.make_jaxpr(fn)(q, k, v))
            sharded_out, sharded_grads = forward_and_grads(fn, q, k, v, ct)
    np.testing.assert_allclose(sharded_out, out, rtol=0, atol=1e-6)
    for g, ref_g in zip(sharded_grads, grads, strict=True):
        np.testing.assert_allclose(g, ref_g, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out, attn.xla_attention(q, k, v, seg), rtol=0, atol=FWD_ATOL)


def test_no_shard_map_without_mesh_or_on_one_device():
    q, k, v, _ = make_qkv(B, 128)
    fn = lambda q, k, v: attn.attention(q, k, v, impl="pallas")
    with attn.simulate_platform("tpu"):
        assert "shard_map" not in str(jax.make_jaxpr(fn)(q, k, v))
        with jax.set_mesh(_mesh(1, 1, 1)):
            assert "shard_map" not in str(jax.make_jaxpr(fn)(q, k, v))


def test_shard_map_replicates_undivisible_heads_with_warning(caplog):
    q, k, v, _ = make_qkv(4, 128, heads=3, kv_heads=1)
    fn = lambda q, k, v: attn.attention(q, k, v, impl="pallas")
    caplog.set_level(logging.WARNING, logger=LOGGER)
    with attn.simulate_platform("gpu"), jax.set_mesh(_mesh(2, 2, 2)):
        out = jax.jit(fn)(q, k, v)
    assert any("not divisible over mesh axis 'tensor'" in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(out, attn.xla_attention(q, k, v), rtol=0, atol=FWD_ATOL)


# --- backend selection --------------------------------------------------------------------------------------

def test_auto_on_cpu_selects_xla_silently(caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    assert attn.resolve_backend("auto", jnp.bfloat16, 128) == "xla"
    seg = packed_segment_ids(B, 32)
    q, k, v, _ = make_qkv(B, 32)
    np.testing.assert_array_equal(attn.attention(q, k, v, seg, impl="auto"), attn.xla_attention(q, k, v, seg))
    assert not caplog.records, "xla is the intended CPU backend, not a fallback"


@pytest.mark.parametrize("impl,message", [("cudnn", "cuDNN needs an NVIDIA GPU"),
                                          ("pallas", "the Pallas kernels need a GPU or TPU")])
def test_named_backend_unavailable_on_cpu_raises(impl, message):
    q, k, v, _ = make_qkv(B, 32)
    with pytest.raises(ValueError, match=f"impl='{impl}' cannot run here: {message}"):
        attn.attention(q, k, v, impl=impl)


def test_named_cudnn_with_unsupported_dtype_raises():
    with attn.simulate_platform("gpu"):
        with pytest.raises(ValueError, match="bfloat16/float16 inputs, got float32"):
            attn.resolve_backend("cudnn", jnp.float32, 128)


def test_unknown_impl_and_bad_gqa_raise():
    q, k, v, _ = make_qkv(B, 32)
    with pytest.raises(ValueError, match="must be one of"):
        attn.attention(q, k, v, impl="flash")
    with pytest.raises(ValueError, match="must divide query heads"):
        attn.attention(q, k[:, :, :1].repeat(3, axis=2), v[:, :, :1].repeat(3, axis=2))


def test_auto_on_gpu_falls_back_to_pallas_with_warning(caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    with attn.simulate_platform("gpu"):
        assert attn.resolve_backend("auto", jnp.float32, 64) == "pallas"
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "falls back to 'pallas'" in record.getMessage()
    assert "'cudnn' unavailable: cuDNN flash attention needs bfloat16/float16 inputs" in record.getMessage()


def test_auto_falls_back_when_cudnn_rejects_at_trace_time(caplog, monkeypatch):
    """Pretend the host passes the static cuDNN checks; jax's own cuDNN call then raises while tracing
    ("cuDNN is not detected" here, an unsupported shape or version on a real GPU) and 'auto' must recover."""
    monkeypatch.setattr(attn, "_cudnn_device_error", lambda head_dim: None)
    monkeypatch.setattr(kernels, "CUDNN_DTYPES", (jnp.float32,))
    caplog.set_level(logging.WARNING, logger=LOGGER)
    seg = packed_segment_ids(B, 128)
    q, k, v, ct = make_qkv(B, 128)
    with attn.simulate_platform("gpu"):
        assert attn.resolve_backend("auto", jnp.float32, D) == "cudnn"
        assert_matches_reference(lambda q, k, v: attn.attention(q, k, v, seg, impl="auto"), seg, q, k, v, ct)
        with pytest.raises(RuntimeError, match="cuDNN"):
            attn.attention(q, k, v, seg, impl="cudnn")  # named: no silent fallback
    assert any("cuDNN rejected these inputs" in r.getMessage() and "using 'pallas'" in r.getMessage()
               for r in caplog.records)


def test_auto_on_tpu_falls_back_to_xla_when_kernel_import_fails(caplog, monkeypatch):
    monkeypatch.setattr(kernels, "PALLAS_TPU_MODULE", "jax.experimental.pallas.ops.tpu.no_such_kernel")
    caplog.set_level(logging.WARNING, logger=LOGGER)
    q, k, v, _ = make_qkv(B, 32)
    with attn.simulate_platform("tpu"):
        out = attn.attention(q, k, v, impl="auto")
        with pytest.raises(ValueError, match="cannot import jax.experimental.pallas.ops.tpu.no_such_kernel"):
            attn.attention(q, k, v, impl="pallas")
    np.testing.assert_array_equal(out, attn.xla_attention(q, k, v))
    assert any("falls back to 'xla'" in r.getMessage() and "cannot import" in r.getMessage()
               for r in caplog.records)


def test_auto_on_tpu_uses_splash():
    with attn.simulate_platform("tpu"):
        assert attn.resolve_backend("auto", jnp.bfloat16, 128) == "pallas"
        q, k, v, _ = make_qkv(B, 128)
        jaxpr = str(jax.make_jaxpr(lambda q, k, v: attn.attention(q, k, v, impl="auto"))(q, k, v))
    assert "pallas_call" in jaxpr


def test_block_size_choices():
    assert kernels.gpu_block_sizes(2048, 128) == (128, 32)
    assert kernels.gpu_block_sizes(2048, 256) == (64, 32)
    assert kernels.gpu_block_sizes(40, 64) == (64, 32)
    assert kernels.gpu_block_sizes(16, 64) == (16, 16)
    assert kernels.tpu_block_size(2048, 128) == 512
    assert kernels.tpu_block_size(384, 128) == 128
    assert kernels.tpu_block_size(768, 256) == 256
