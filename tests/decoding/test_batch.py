"""The decoding batch: a row's tokens do not depend on which row it is in, who else is in the batch, when it
joined, or how the cache was reshaped meanwhile; greedy cached decoding equals the uncached forward; prefill
calls respect the token budget; rows finish at EOS or their budget."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vicuna_jax.decoding.batch import DecodeBatch, next_pow2
from vicuna_jax.decoding.sampling import SamplingParams
from vicuna_jax.model.config import LlamaConfig
from vicuna_jax.model.llama import build_model

CFG = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                  num_kv_heads=2, max_position_embeddings=200, rms_norm_eps=1e-5)
STEPS = 4
NO_EOS = [-5]


@pytest.fixture(scope="module")
def model():
    return build_model(CFG, seed=3)


@pytest.fixture(scope="module")
def batch(model):
    """One batch for the module, so its compilations are shared (each test starts from `reset`)."""
    return DecodeBatch(model, eos_ids=NO_EOS, max_rows=4)


def prompts(*lengths: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.RandomState(seed)
    return [[1] + rng.randint(3, CFG.vocab_size, n - 1).tolist() for n in lengths]


def admit(batch, prompts_, params) -> dict[int, int]:
    """Admits the prompts; returns row -> prompt index."""
    fit = batch.fit([len(p) for p in prompts_], STEPS)
    batch.admit(fit.rows, prompts_, params)
    return dict(zip(fit.rows, range(len(prompts_)), strict=True))


def decode_all(batch, index: dict[int, int], outs: list[list[int]], steps: int = 10**6) -> dict[int, int]:
    """Decodes (reshaping before each chunk, as the users of the batch do) until no row is live or `steps`
    chunks ran; returns the row -> prompt index after any moves."""
    for _ in range(steps):
        if not batch.live_rows():
            break
        moved = batch.fit([], STEPS).moved
        if moved is not None:
            index = {new: index[old] for new, old in enumerate(moved)}
        for row, got in batch.step(STEPS).items():
            outs[index[row]].extend(got.ids)
    return index


def alone(batch, prompt, params) -> list[int]:
    batch.reset()
    out: list[list[int]] = [[]]
    decode_all(batch, admit(batch, [prompt], [params]), out)
    return out[0]


def greedy_reference(model, prompt: list[int], n: int) -> list[int]:
    """Greedy tokens from the uncached (training) forward over prompt + tokens so far, padded to one shape."""
    width = 64

    @functools.partial(jax.jit)
    def next_token(tokens, length):
        positions = jnp.arange(width)[None]
        segments = (positions < length).astype(jnp.int32)
        logits, _ = model(tokens, positions, segments)
        return jnp.argmax(logits[0, length - 1])

    ids = list(prompt)
    for _ in range(n):
        tokens = np.zeros((1, width), np.int32)
        tokens[0, :len(ids)] = ids
        ids.append(int(next_token(jnp.asarray(tokens), len(ids))))
    return ids[len(prompt):]


def test_greedy_rows_equal_the_uncached_forward_and_alone(model, batch):
    ps = prompts(5, 17, 40)
    greedy = SamplingParams(max_new_tokens=12)
    batch.reset()
    outs: list[list[int]] = [[] for _ in ps]
    decode_all(batch, admit(batch, ps, [greedy] * 3), outs)
    for p, out in zip(ps, outs, strict=True):
        assert len(out) == 12
        assert out == greedy_reference(model, p, 12)
        assert out == alone(batch, p, greedy)


def test_a_row_joining_a_running_batch_changes_nothing(batch):
    a, b = prompts(9, 30, seed=1)
    hot = [SamplingParams(max_new_tokens=20, temperature=1.2, seed=s) for s in (5, 6)]
    want = [alone(batch, a, hot[0]), alone(batch, b, hot[1])]
    batch.reset()
    outs: list[list[int]] = [[], []]
    index = decode_all(batch, admit(batch, [a], hot[:1]), outs, steps=2)  # a is 8 tokens in
    fit = batch.fit([len(b)], STEPS)
    assert fit.rows and fit.rows[0] not in index
    batch.admit(fit.rows, [b], hot[1:])
    index = {**index, fit.rows[0]: 1}
    decode_all(batch, index, outs)
    assert outs == want


def test_resize_moves_and_cuts_rows_without_changing_them(batch):
    ps = prompts(6, 20, 11, seed=2)
    params = [SamplingParams(max_new_tokens=24, temperature=t, seed=9) for t in (0.0, 0.9, 1.1)]
    want = [alone(batch, p, sp) for p, sp in zip(ps, params, strict=True)]
    batch.reset()
    outs: list[list[int]] = [[] for _ in ps]
    index = decode_all(batch, admit(batch, ps, params), outs, steps=2)
    assert (batch.rows, batch.length) == (4, 128)
    # Reverse the rows into a longer cache, then into a shorter one; decoding goes on as if nothing moved.
    order = sorted(index, reverse=True) + [-1]
    batch.resize(order, 256)
    index = {new: index[old] for new, old in enumerate(order) if old >= 0}
    assert (batch.rows, batch.length) == (4, 256)
    for row, got in batch.step(STEPS).items():  # a chunk in the longer cache
        outs[index[row]].extend(got.ids)
    order = [1, 3, 0, 2]  # row 3 is empty: an empty row moves too
    batch.resize(order, 128)
    index = {new: index[old] for new, old in enumerate(order) if old in index}
    assert sorted(batch.live_rows()) == sorted(index) == [0, 2, 3]
    decode_all(batch, index, outs)
    assert outs == want


def test_finished_rows_free_and_the_cache_compacts(batch):
    ps = prompts(7, 8, 9, seed=3)
    budgets = [4, 40, 4]
    params = [SamplingParams(max_new_tokens=n) for n in budgets]
    want = [alone(batch, p, sp) for p, sp in zip(ps, params, strict=True)]
    batch.reset()
    outs: list[list[int]] = [[] for _ in ps]
    index = admit(batch, ps, params)
    first = batch.step(STEPS)
    for row, got in first.items():
        outs[index[row]].extend(got.ids)
    assert {index[r]: g.finish for r, g in first.items()} == {0: "length", 1: None, 2: "length"}
    fit = batch.fit([], STEPS)  # one live row left: it moves to row 0 of a one-row cache
    assert batch.rows == 1 and fit.moved == [next(r for r, i in index.items() if i == 1)] and fit.reshaped
    decode_all(batch, {0: 1}, outs)
    assert outs == want and [len(o) for o in outs] == budgets


def test_eos_ends_a_row_unless_ignored(model):
    p = prompts(10, seed=4)[0]
    free = DecodeBatch(model, eos_ids=NO_EOS, max_rows=2)
    run = alone(free, p, SamplingParams(max_new_tokens=12))
    eos = run[5]
    cut = run.index(eos)
    stopping = DecodeBatch(model, eos_ids=[eos], max_rows=2)
    index = admit(stopping, [p, p], [SamplingParams(max_new_tokens=12),
                                     SamplingParams(max_new_tokens=12, ignore_eos=True)])
    got: dict[int, list] = {0: [], 1: []}
    finish: dict[int, str | None] = {}
    count: dict[int, int] = {}
    while stopping.live_rows():
        for row, chunk in stopping.step(STEPS).items():
            got[index[row]].extend(chunk.ids)
            finish[index[row]], count[index[row]] = chunk.finish, chunk.count
    assert got[0] == run[:cut] and finish[0] == "stop" and count[0] == cut + 1  # EOS counts, is not returned
    assert got[1] == run and finish[1] == "length" and count[1] == 12


def test_prefill_calls_follow_buckets_and_the_token_budget(model):
    small = DecodeBatch(model, eos_ids=NO_EOS, max_rows=8, max_prefill_tokens=64)
    ps = prompts(20, 21, 22, 23, 40, seed=5)  # four in the 32 bucket, one in the 64 bucket
    fit = small.fit([len(p) for p in ps], STEPS)
    assert (small.rows, small.length) == (8, 128) and fit.rows == [0, 1, 2, 3, 4]
    calls = small.admit(fit.rows, ps, [SamplingParams(max_new_tokens=3)] * 5)
    assert calls == 3 and small.prefill_shapes == {(2, 32), (1, 64)}  # 64 tokens: two prompts of 32
    assert small.live_rows() == [0, 1, 2, 3, 4]
    # Every row's prompt landed in its own row: each continues exactly as it would alone.
    outs: list[list[int]] = [[] for _ in ps]
    decode_all(small, dict(zip(fit.rows, range(5), strict=True)), outs)
    assert outs == [alone(small, p, SamplingParams(max_new_tokens=3)) for p in ps]


def test_buckets():
    assert [next_pow2(n) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, 16]
    assert next_pow2(3, 128) == 128


def test_bucket_shapes(batch):
    assert batch.max_len == 256  # the context (200), rounded up to 128
    assert batch.bucket(3, 10) == (4, 128)
    assert batch.bucket(9, 129) == (4, 256)  # at most max_rows rows, at most max_len slots
    assert batch.bucket(1, 1000) == (1, 256)
