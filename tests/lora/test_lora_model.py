"""The LoRA model and step: the low-rank path equals the merged weight, the first update equals a hand
computation, only adapters train, dropout is reproducible, and 8 devices train like one."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from lora_utils import batch, logits, random_adapters, random_params, tiny_cfg

from vicuna_jax import parallel
from vicuna_jax.lora import model as lora_model
from vicuna_jax.lora import quantize as quant
from vicuna_jax.lora.config import TARGETS, LoRAConfig
from vicuna_jax.model.llama import model_from_params
from vicuna_jax.train.config import RunOptions, TrainConfig
from vicuna_jax.train.optimizer import OptimizerConfig
from vicuna_jax.train.setup import build

ALL = tuple(TARGETS)


def lora_model_with(params, lora, adapters=None, training=False):
    model = lora_model.attach(model_from_params(tiny_cfg(), params), lora, training=training)
    if adapters is not None:
        state = nnx.state(model, lora_model.LoRAParam)
        nnx.replace_by_pure_dict(state, adapters)
        nnx.update(model, state)
    return model


def hand_merged(params, adapters, lora, kernel=None):
    """W + scale A B per targeted kernel, in numpy (`kernel(path, W)` may replace W first)."""
    out = jax.tree.map(np.array, params)
    for module, (group, _) in TARGETS.items():
        node = out["layers"][group][module]
        if kernel is not None:
            node["kernel"] = kernel(node["kernel"])
        if module in lora.target_modules:
            a, b = adapters["layers"][group][module]["lora_a"], adapters["layers"][group][module]["lora_b"]
            node["kernel"] = node["kernel"] + lora.scale * np.einsum("lir,lro->lio", a, b)
    return out


@pytest.mark.parametrize("quantization", ["none", "nf4", "int8"])
def test_low_rank_path_equals_the_merged_weight(quantization):
    lora = LoRAConfig(rank=4, alpha=8.0, dropout=0.0, target_modules=("q_proj", "v_proj", "down_proj"),
                      base_quantization=quantization, base_dtype="float32", quant_block_size=16)
    params, adapters = random_params(), random_adapters(lora)
    tokens = jnp.asarray(np.random.RandomState(0).randint(1, 211, (2, 24)))
    ours = logits(lora_model_with(params, lora, adapters), tokens)

    def dequantized(w):
        if quantization == "none":
            return w
        return np.asarray(quant.dequantize(*quant.quantize_stacked(jnp.asarray(w), quantization, 16),
                                           quantization, 16))

    merged = model_from_params(tiny_cfg(), hand_merged(params, adapters, lora, dequantized))
    np.testing.assert_allclose(ours, logits(merged, tokens), atol=2e-5)
    if quantization != "none":  # and the quantized base is close to, not equal to, the original
        exact = logits(model_from_params(tiny_cfg(), hand_merged(params, adapters, lora)), tokens)
        gap = np.abs(ours - exact).max()
        assert 0 < gap < (0.02 if quantization == "int8" else 0.3), gap


def small_cfg(lora: LoRAConfig, **overrides) -> TrainConfig:
    opt = overrides.pop("optimizer", OptimizerConfig(learning_rate=1e-2, warmup_ratio=0.0, weight_decay=0.0,
                                                     grad_clip=0.0))
    run = overrides.pop("run", RunOptions(dtype="float32", scan_layers=False, remat_policy="none",
                                          attention="xla"))
    values = {"seq_len": 16, "batch_size": 8, "loss_chunk_size": 0, **overrides}
    return TrainConfig(model=tiny_cfg(), run=run, optimizer=opt, lora=lora, **values)


def test_first_update_is_the_hand_computed_rank_r_update():
    """With B = 0, dL/dA = 0 and dL/dB = scale A^T dL/dW, so AdamW's first step (m^ = g, v^ = g^2) moves
    only B, by -lr g/(|g| + eps), and the effective weight by scale A B'."""
    from vicuna_jax.model.loss import loss_sums

    lora = LoRAConfig(rank=4, alpha=16.0, dropout=0.0, target_modules=ALL, base_dtype="float32")
    cfg = small_cfg(lora)
    setup = build(cfg, parallel.make_mesh(devices=jax.devices()[:1]), total_steps=10)
    params = random_params()
    state = setup.init_state(params)
    a0 = jax.tree.map(np.asarray, state.params)
    b = batch()
    new, metrics = setup.train_step(state, setup.global_batch(b))

    graphdef = nnx.graphdef(model_from_params(tiny_cfg(), params))
    b_dev = {k: jnp.asarray(v) for k, v in b.items()}

    def mean_loss(p):
        total, n = loss_sums(p, graphdef, b_dev)
        return total / n

    g_w = jax.grad(mean_loss)(jax.tree.map(jnp.asarray, params))
    lr, eps = cfg.optimizer.learning_rate, cfg.optimizer.eps
    for module, (group, _) in TARGETS.items():
        a = a0["layers"][group][module]["lora_a"]
        g_b = lora.scale * np.einsum("lir,lio->lro", a, np.asarray(g_w["layers"][group][module]["kernel"]))
        want_b = -lr * g_b / (np.abs(g_b) + eps)
        got = jax.tree.map(np.asarray, new.params)["layers"][group][module]
        np.testing.assert_array_equal(got["lora_a"], a)  # no gradient reaches A while B = 0
        np.testing.assert_allclose(got["lora_b"], want_b, atol=1e-3 * lr)
        np.testing.assert_allclose(lora.scale * np.einsum("lir,lro->lio", a, got["lora_b"]),
                                   lora.scale * np.einsum("lir,lro->lio", a, want_b), atol=1e-3 * lr)
    assert float(metrics.loss) == pytest.approx(float(mean_loss(jax.tree.map(jnp.asarray, params))), rel=1e-6)


def test_only_adapters_train_and_the_optimizer_holds_only_them():
    lora = LoRAConfig(rank=4, dropout=0.1, target_modules=("q_proj", "v_proj"), base_quantization="nf4",
                      quant_block_size=16)
    cfg = small_cfg(lora, grad_accum_steps=2)
    setup = build(cfg, parallel.make_mesh(devices=jax.devices()[:1]), total_steps=10)
    state = setup.init_state(random_params())
    frozen0 = jax.tree.map(np.array, state.frozen)
    adapters0 = jax.tree.map(np.array, state.params)
    for i in range(3):
        state, metrics = setup.train_step(state, setup.global_batch(batch(seed=i)))
        assert bool(metrics.finite)
    # The base: bit-identical, quantized projections stored as codes + scales, the rest in bf16.
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.frozen), frozen0)
    q_proj = state.frozen["layers"]["self_attn"]["q_proj"]
    assert set(q_proj) == {"codes", "scales"} and q_proj["codes"].dtype == jnp.uint8
    assert state.frozen["embed_tokens"].dtype == jnp.bfloat16
    changed = jax.tree.map(lambda a, b: not np.array_equal(np.asarray(a), b), state.params, adapters0)
    assert all(jax.tree.leaves(changed))
    adapter_shapes = {a.shape for a in jax.tree.leaves(state.params)}
    opt_leaves = [a for a in jax.tree.leaves(state.opt_state) if a.ndim]
    assert opt_leaves and {a.shape for a in opt_leaves} <= adapter_shapes
    assert len(opt_leaves) == 2 * len(jax.tree.leaves(state.params))  # AdamW's two moments, nothing else


def test_dropout_is_reproducible_and_off_in_evaluation():
    lora = LoRAConfig(rank=4, dropout=0.3, target_modules=ALL, base_dtype="float32")
    setup = build(small_cfg(lora), parallel.make_mesh(devices=jax.devices()[:1]), total_steps=10)
    state = setup.init_state(random_params())
    adapters = jax.tree.map(lambda a: a + 0.5, state.params)  # B != 0, so dropout changes the output
    b = {k: jnp.asarray(v) for k, v in batch().items()}
    loss = jax.jit(setup.lora.loss_fn)
    first, again = loss(adapters, b, state.frozen, 3), loss(adapters, b, state.frozen, 3)
    other = loss(adapters, b, state.frozen, 4)
    evaluated = setup.lora.eval_loss_fn(adapters, b, state.frozen, 3)
    no_dropout = dataclasses.replace(lora, dropout=0.0)
    plain = build(small_cfg(no_dropout), parallel.make_mesh(devices=jax.devices()[:1]), total_steps=10)
    reference = plain.lora.loss_fn(adapters, b, state.frozen, 3)
    assert float(first[0]) == float(again[0])
    assert float(first[0]) != float(other[0])
    assert float(evaluated[0]) == pytest.approx(float(reference[0]), rel=1e-6)
    assert float(evaluated[0]) != pytest.approx(float(first[0]), rel=1e-4)


def test_eight_devices_train_like_one():
    lora = LoRAConfig(rank=4, dropout=0.1, target_modules=ALL, base_quantization="nf4", quant_block_size=16)
    run = RunOptions(dtype="float32", scan_layers=True, remat_policy="full", attention="xla")
    cfg = small_cfg(lora, grad_accum_steps=2, run=run, batch_size=16)
    results = []
    for mesh in (parallel.make_mesh(devices=jax.devices()[:1]), parallel.make_mesh(data=2, fsdp=4)):
        setup = build(cfg, mesh, total_steps=10)
        state = setup.init_state(random_params())
        losses = []
        with jax.set_mesh(mesh):
            for i in range(3):
                state, metrics = setup.train_step(state, setup.global_batch(batch(rows=16, seed=i)))
                losses.append(float(metrics.loss))
        results.append((losses, jax.tree.map(np.asarray, state.params), state))
    (one, p1, _), (eight, p8, s8) = results
    np.testing.assert_allclose(eight, one, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4), p8, p1)  # 1% of one lr step
    assert "fsdp" in str(s8.frozen["layers"]["mlp"]["up_proj"]["codes"].sharding.spec)
    assert "fsdp" in str(s8.frozen["embed_tokens"].sharding.spec)
