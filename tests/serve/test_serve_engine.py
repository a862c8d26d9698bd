"""The engine without HTTP: sequences join and leave a running batch (continuous batching), replies equal
`vicuna_jax.generate`, seeded sampling does not depend on the batch, and compiled shapes stay few."""

from __future__ import annotations

import threading

import pytest

from vicuna_jax.generate import SamplingParams, prompt_ids
from vicuna_jax.serve.engine import SeqEvent, SeqRequest


class Collector:
    """Gathers one sequence's events; records the order in which sequences finished."""

    order: list[str] = []

    def __init__(self, name: str):
        self.name, self.parts, self.final = name, [], None
        self.started, self.done = threading.Event(), threading.Event()

    def __call__(self, ev: SeqEvent) -> None:
        self.parts.append(ev.text)
        self.started.set()
        if ev.finish_reason:
            self.final = ev
            Collector.order.append(self.name)
            self.done.set()

    @property
    def text(self) -> str:
        return "".join(self.parts)


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    from vicuna_jax.serve import load_engine

    eng, _ = load_engine(tiny_checkpoint, max_batch=2, decode_steps=4)
    yield eng
    eng.shutdown()


def _ids(reference, text: str) -> tuple[int, ...]:
    return tuple(prompt_ids(reference, text))


def _greedy(reference, ids, n: int):
    return reference.generate([list(ids)], SamplingParams(max_new_tokens=n))[0]


def test_sequences_join_and_leave_a_running_batch(engine, reference):
    a, b, c = (_ids(reference, t) for t in ("Write a long essay about llamas.", "Hi", "What is JAX?"))
    want_a = _greedy(reference, a, 60)
    assert want_a.finish_reason == "length", "precondition: the long reply runs to its limit"
    Collector.order = []
    ca, cb, cc = Collector("a"), Collector("b"), Collector("c")
    engine.submit(SeqRequest(a, 60), ca)
    assert ca.started.wait(30)
    # Two rows: b takes the free one while a decodes; c waits for b's row, then joins while a still runs.
    engine.submit(SeqRequest(b, 8), cb)
    engine.submit(SeqRequest(c, 8), cc)
    for col in (ca, cb, cc):
        assert col.done.wait(60)
    assert Collector.order == ["b", "c", "a"]
    assert ca.text == want_a.text and ca.final.completion_tokens == 60
    for col, ids in ((cb, b), (cc, c)):
        want = _greedy(reference, ids, 8)
        assert col.text == want.text and col.final.finish_reason == want.finish_reason
    stats = engine.stats()
    assert stats["peak_active"] == 2 and stats["active"] == 0


def test_seeded_sampling_ignores_batch_company(engine, reference):
    x = SeqRequest(_ids(reference, "Sample me."), 16, temperature=0.8, top_p=0.9, seed=7)
    alone = Collector("alone")
    engine.submit(x, alone)
    assert alone.done.wait(60)
    together = Collector("together")
    other = Collector("other")
    engine.submit(SeqRequest(_ids(reference, "Something else entirely"), 16, temperature=1.0, seed=1), other)
    engine.submit(x, together)
    assert together.done.wait(60) and other.done.wait(60)
    assert together.text == alone.text and together.text != other.text


def test_cancel_running_and_waiting(engine, reference):
    ids = _ids(reference, "Go on and on.")
    cols = [Collector(f"s{i}") for i in range(3)]
    handles = [engine.submit(SeqRequest(ids, 400, ignore_eos=True), col) for col in cols]
    assert cols[0].started.wait(30)
    handles[2].cancel()  # still waiting: both rows are busy
    handles[0].cancel()  # running
    assert cols[0].done.wait(30) and cols[2].done.wait(30)
    assert cols[0].final.finish_reason == cols[2].final.finish_reason == "cancelled"
    assert cols[2].text == ""
    handles[1].cancel()
    assert cols[1].done.wait(30)
    assert engine.stats()["cancelled"] == 3


def test_compiled_shapes_stay_few(engine):
    # One program per (rows, cache length) bucket actually used; prefill per (prompts, prompt length) bucket.
    stats = engine.stats()
    pow2 = lambda n: n & (n - 1) == 0  # noqa: E731
    decode, prefill = stats["decode_shapes"], stats["prefill_shapes"]
    assert decode and all(r in (1, 2) and pow2(s) and s >= 128 for r, s in decode)
    assert prefill and all(n in (1, 2) and pow2(p) and p >= 32 for n, p in prefill)
    assert engine.batch._decode._cache_size() == len(decode)
    assert engine.batch._prefill._cache_size() == len(prefill)


def test_a_failing_step_fails_its_sequences_and_the_engine_recovers(engine, reference, monkeypatch):
    real_decode = engine.batch.decode
    calls = []

    def flaky_decode(params, steps):
        calls.append(steps)
        if len(calls) == 1:
            raise RuntimeError("simulated device failure")
        return real_decode(params, steps)

    monkeypatch.setattr(engine.batch, "decode", flaky_decode)
    ids = _ids(reference, "Hi")
    failed = Collector("failed")
    engine.submit(SeqRequest(ids, 8), failed)
    assert failed.done.wait(30)
    assert failed.final.finish_reason == "error" and "simulated device failure" in failed.final.error
    ok = Collector("ok")
    engine.submit(SeqRequest(ids, 8), ok)
    assert ok.done.wait(30)
    assert ok.text == _greedy(reference, ids, 8).text
    assert engine.stats()["errors"] == 1


def test_queue_takes_all_of_a_request_or_none_and_cancel_frees_it_at_once(engine):
    """On an engine that is not running (nothing leaves its queue by being admitted): a request that does
    not fit queues none of its sequences, and a cancelled waiting sequence leaves the queue at once with a
    "cancelled" event, so its place serves the next request."""
    from flax import nnx

    from vicuna_jax.serve.engine import Engine, EngineFull

    model = nnx.merge(engine.batch.graphdef, engine.batch.state)
    idle = Engine(model, engine.tokenizer, max_batch=1, max_waiting=3)
    req = SeqRequest((1, 5, 7), max_new_tokens=2)
    first = [Collector(f"first{i}") for i in range(2)]
    handles = idle.submit_many([req, req], first)
    with pytest.raises(EngineFull):
        idle.submit_many([req, req], [Collector("x"), Collector("y")])
    assert idle.stats()["waiting"] == 2  # not 3: none of the refused request's sequences stayed
    handles[0].cancel()
    assert idle.stats()["waiting"] == 1 and first[0].final.finish_reason == "cancelled"
    idle.submit_many([req, req], [Collector("x"), Collector("y")])  # the freed place is usable at once
    assert idle.stats()["waiting"] == 3
