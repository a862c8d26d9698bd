"""The training step: token-weighted loss, gradient accumulation equivalence, masking, NaN safety."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from vicuna_jax.model.config import LlamaConfig
from vicuna_jax.model.llama import build_model, model_params
from vicuna_jax.model.loss import cross_entropy_sums
from vicuna_jax.train.optimizer import OptimizerConfig, _decay_mask, lr_schedule, make_optimizer
from vicuna_jax.train.step import TrainState, make_train_step

CFG = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                  num_kv_heads=2, max_position_embeddings=64)


def packed_batch(rows, seq_len=24, seed=0, empty_rows=()):
    """Rows of random conversations packed with segment ids; loss on the second half of each segment."""
    rng = np.random.RandomState(seed)
    batch = {k: np.zeros((rows, seq_len), np.int32) for k in ("input_tokens", "target_tokens", "segment_ids",
                                                               "positions")}
    batch["loss_mask"] = np.zeros((rows, seq_len), np.float32)
    for r in range(rows):
        start, seg = 0, 1
        while start < seq_len - 4:
            n = min(rng.randint(4, 12), seq_len - start)
            toks = rng.randint(3, CFG.vocab_size, n + 1)
            sl = slice(start, start + n)
            batch["input_tokens"][r, sl] = toks[:-1]
            batch["target_tokens"][r, sl] = toks[1:]
            batch["segment_ids"][r, sl] = seg
            batch["positions"][r, sl] = np.arange(n)
            if r not in empty_rows:
                batch["loss_mask"][r, start + n // 2: start + n] = 1
            start, seg = start + n, seg + 1
    return batch


def setup(accum=1, opt=None, tx=None):
    model = build_model(CFG, seed=0)
    graphdef = nnx.graphdef(model)
    params = model_params(model)
    opt = opt or OptimizerConfig(learning_rate=1e-2, warmup_ratio=0.0)
    tx = tx or make_optimizer(opt, 10)
    state = TrainState(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32))
    return state, jax.jit(make_train_step(graphdef, tx, lr_schedule(opt, 10), accum)), graphdef


def _max_diff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                                                 strict=True))


@pytest.mark.parametrize("accum", [2, 4])
def test_grad_accumulation_equals_one_big_batch(accum):
    """k micro-batches give the update of one batch k times the size. With SGD at lr 1 the parameter
    change is the gradient itself, so gradients are compared directly (fp32, 1e-6 absolute)."""
    batch = packed_batch(8)
    s1, step1, _ = setup(1, tx=optax.sgd(1.0))
    sk, stepk, _ = setup(accum, tx=optax.sgd(1.0))
    start = jax.tree.map(jnp.copy, s1.params)
    s1, m1 = step1(s1, batch)
    sk, mk = stepk(sk, batch)
    assert abs(float(m1.loss) - float(mk.loss)) < 1e-6
    assert float(m1.target_tokens) == float(mk.target_tokens)
    assert _max_diff(s1.params, sk.params) < 1e-6
    assert _max_diff(s1.params, start) > 1e-3  # the step did move the parameters
    # And with the real optimizer (AdamW + clipping) over two steps: within 1% of one step's size.
    a1, adam1, _ = setup(1)
    ak, adamk, _ = setup(accum)
    for _ in range(2):
        a1, _ = adam1(a1, batch)
        ak, _ = adamk(ak, batch)
    assert _max_diff(a1.params, ak.params) < 1e-2 * 1e-2


def test_loss_is_token_weighted_not_mean_of_means():
    """Two rows with 1 and 20 target tokens: each token weighs the same."""
    batch = packed_batch(2, seq_len=30, seed=3)
    batch["loss_mask"][:] = 0
    batch["loss_mask"][0, 2] = 1
    batch["loss_mask"][1, 5:25] = 1
    state, _, graphdef = setup(1)
    model = nnx.merge(graphdef, state.params)
    h = model.hidden_states(batch["input_tokens"], batch["positions"], batch["segment_ids"])
    logits = np.asarray(model.logits(h))
    logp = logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    nll = -np.take_along_axis(np.asarray(logp), batch["target_tokens"][..., None], -1)[..., 0]
    expected = (nll * batch["loss_mask"]).sum() / batch["loss_mask"].sum()
    _, step, _ = setup(1)
    _, metrics = step(state, batch)
    np.testing.assert_allclose(float(metrics.loss), expected, rtol=1e-5)


def test_rows_without_targets_contribute_nothing():
    with_targets = packed_batch(4, seed=1)
    no_targets = packed_batch(4, seed=2, empty_rows=range(4))
    combined = {k: np.concatenate([with_targets[k], no_targets[k]]) for k in with_targets}
    s_a, step, _ = setup(1, tx=optax.sgd(1.0))  # parameter change = gradient
    s_b = jax.tree.map(jnp.copy, s_a)
    s_a, m_a = step(s_a, with_targets)
    s_b, m_b = step(s_b, combined)
    assert float(m_a.target_tokens) == float(m_b.target_tokens)
    assert abs(float(m_a.loss) - float(m_b.loss)) < 1e-6
    assert _max_diff(s_a.params, s_b.params) < 1e-6


def test_batch_with_no_targets_changes_nothing():
    state, step, _ = setup(1)
    before = jax.tree.map(jnp.copy, state)
    after, metrics = step(state, packed_batch(4, empty_rows=range(4)))
    assert float(metrics.target_tokens) == 0.0 and float(metrics.loss) == 0.0
    assert _max_diff(before.params, after.params) == 0.0
    assert _max_diff(before.opt_state, after.opt_state) == 0.0


def test_non_finite_loss_keeps_state():
    state, step, _ = setup(1)
    state.params["norm"]["scale"] = state.params["norm"]["scale"].at[0].set(jnp.nan)
    before = jax.tree.map(jnp.copy, state)
    after, metrics = step(state, packed_batch(2))
    assert not bool(metrics.finite)
    leaves_before, leaves_after = jax.tree.leaves(before.params), jax.tree.leaves(after.params)
    for a, b in zip(leaves_before, leaves_after, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_chunked_cross_entropy_matches_full():
    state, _, graphdef = setup(1)
    model = nnx.merge(graphdef, state.params)
    batch = packed_batch(2, seq_len=30)
    h = model.hidden_states(batch["input_tokens"], batch["positions"], batch["segment_ids"])
    full = cross_entropy_sums(model, h, batch["target_tokens"], batch["loss_mask"])
    for chunk in (7, 8, 30):
        chunked = cross_entropy_sums(model, h, batch["target_tokens"], batch["loss_mask"], chunk)
        np.testing.assert_allclose(float(chunked), float(full), rtol=1e-5)

    def grads(chunk):
        def f(p):
            m = nnx.merge(graphdef, p)
            hh = m.hidden_states(batch["input_tokens"], batch["positions"], batch["segment_ids"])
            return cross_entropy_sums(m, hh, batch["target_tokens"], batch["loss_mask"], chunk)
        return jax.grad(f)(state.params)

    assert _max_diff(grads(0), grads(8)) < 1e-5


def test_schedule_warmup_then_cosine_to_zero():
    opt = OptimizerConfig(learning_rate=1.0, warmup_ratio=0.1)
    sched = lr_schedule(opt, 100)
    assert float(sched(0)) == 0.0
    assert abs(float(sched(10)) - 1.0) < 1e-6
    assert abs(float(sched(55)) - 0.5) < 1e-2
    assert float(sched(100)) < 1e-6


def test_weight_decay_skips_norms():
    opt = OptimizerConfig(learning_rate=0.1, warmup_ratio=0.0, weight_decay=0.5, grad_clip=0.0)
    state, step, _ = setup(1, opt)
    batch = packed_batch(2, empty_rows=())
    batch["loss_mask"][:] = 0
    batch["loss_mask"][0, 0] = 1
    new, _ = step(state, batch)
    m = _decay_mask(state.params)
    assert m["layers"]["input_layernorm"]["scale"] is False and m["norm"]["scale"] is False
    assert m["layers"]["mlp"]["up_proj"]["kernel"] is True and m["embed_tokens"] is True
    assert bool(jnp.all(jnp.isfinite(new.params["embed_tokens"])))
