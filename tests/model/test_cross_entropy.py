"""Fused LM head + cross-entropy: same loss and gradients as autodiff of the plain formula, on any chunking,
mask, dtype and batch sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vicuna_jax import parallel
from vicuna_jax.model.config import LlamaConfig
from vicuna_jax.model.cross_entropy import linear_cross_entropy, lm_head_kernel
from vicuna_jax.model.llama import build_model

B, T, E, V = 4, 37, 16, 53


def reference(h, w, targets, weights):
    logits = jnp.dot(h, w, preferred_element_type=jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    target = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jnp.sum((lse - target) * weights)


def inputs(seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    h = jnp.asarray(rng.normal(size=(B, T, E)), dtype)
    w = jnp.asarray(rng.normal(size=(E, V)) * 0.3, dtype)
    targets = jnp.asarray(rng.integers(0, V, (B, T)), jnp.int32)
    weights = np.asarray(rng.random((B, T)) < 0.4, np.float32)
    weights[1] = 0.0  # a row with no targets (a padding row)
    weights[2, :30] = 1.0  # a row full of them
    return h, w, targets, jnp.asarray(weights)


@pytest.mark.parametrize("chunk", [0, 1, 5, 8, 37, 64])
def test_loss_and_gradients_match_autodiff(chunk):
    h, w, targets, weights = inputs()
    want, (dh_want, dw_want) = jax.value_and_grad(reference, argnums=(0, 1))(h, w, targets, weights)
    fused = jax.jit(jax.value_and_grad(lambda h, w: linear_cross_entropy(h, w, targets, weights, chunk),
                                       argnums=(0, 1)))
    got, (dh, dw) = fused(h, w)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(dh, dh_want, atol=1e-6)
    np.testing.assert_allclose(dw, dw_want, atol=1e-5)
    # Without differentiation only the loss is computed; it is the same number.
    np.testing.assert_allclose(jax.jit(lambda: linear_cross_entropy(h, w, targets, weights, chunk))(), want,
                               rtol=1e-5)


def test_gradient_scales_with_the_cotangent_and_reaches_the_weights():
    h, w, targets, weights = inputs(1)
    f = lambda h, wt: 3.0 * linear_cross_entropy(h, w, targets, wt, 8)
    r = lambda h, wt: 3.0 * reference(h, w, targets, wt)
    (dh, dwt), (dh_want, dwt_want) = jax.grad(f, (0, 1))(h, weights), jax.grad(r, (0, 1))(h, weights)
    np.testing.assert_allclose(dh, dh_want, atol=1e-5)
    on = np.asarray(weights) != 0  # per-token losses are computed only where the weight is nonzero
    np.testing.assert_allclose(np.asarray(dwt)[on], np.asarray(dwt_want)[on], rtol=1e-5)


def test_no_targets_gives_zero_loss_and_gradient():
    h, w, targets, _ = inputs(2)
    zero = jnp.zeros((B, T), jnp.float32)
    f = jax.value_and_grad(lambda h, w: linear_cross_entropy(h, w, targets, zero, 8), (0, 1))
    loss, (dh, dw) = f(h, w)
    assert float(loss) == 0.0 and not np.any(dh) and not np.any(dw)


def test_bfloat16_matmuls_stay_close():
    h, w, targets, weights = inputs(3)
    want, (dh_want, _) = jax.value_and_grad(reference, argnums=(0, 1))(h, w, targets, weights)
    got, (dh, dw) = jax.value_and_grad(
        lambda h, w: linear_cross_entropy(h.astype(jnp.bfloat16), w, targets, weights, 8, jnp.bfloat16),
        (0, 1))(h, w)
    assert dw.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=2e-2)
    np.testing.assert_allclose(dh, dh_want, atol=3e-2)


def test_batch_sharded_over_devices_matches_one_device():
    """On a mesh the targets are compacted within each device's rows; the result must not change."""
    h, w, targets, weights = inputs(4)
    want = jax.value_and_grad(lambda h, w: linear_cross_entropy(h, w, targets, weights, 8), (0, 1))(h, w)
    mesh = parallel.make_mesh(data=1, fsdp=4, tensor=1, devices=jax.devices()[:4])
    rows = NamedSharding(mesh, P(("data", "fsdp")))
    with jax.set_mesh(mesh):
        f = jax.jit(jax.value_and_grad(lambda h, w, t, wt: linear_cross_entropy(h, w, t, wt, 8), (0, 1)))
        got = f(jax.device_put(h, rows), w, jax.device_put(targets, rows), jax.device_put(weights, rows))
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    for a, b in zip(got[1], want[1], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("tied", [False, True])
def test_lm_head_kernel_is_the_models_head(tied):
    cfg = LlamaConfig(vocab_size=V, hidden_size=E, intermediate_size=32, num_layers=1, num_heads=2,
                      tie_word_embeddings=tied)
    model = build_model(cfg, seed=0)
    h = jnp.asarray(np.random.default_rng(5).normal(size=(2, 3, E)), jnp.float32)
    np.testing.assert_allclose(h @ lm_head_kernel(model), model.logits(h), atol=1e-5)
