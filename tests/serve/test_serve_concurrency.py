"""Concurrent clients share decode steps and get exactly what they would get alone; a client that hangs up
frees its cache row."""

from __future__ import annotations

import json
import random
import socket
import string
import threading
import time

from serve_utils import MAX_BATCH, MODEL_NAME, SERVE_KEY, raw_request

PROMPTS = [f"Question {i}: what is {'very ' * (i % 5)}interesting about the number {i * 37}?"
           for i in range(16)]
MAX_TOKENS = [12 + 5 * i for i in range(16)]  # different lengths: rows free up at different times


def test_sixteen_concurrent_streams_equal_sequential(served, client):
    def ask(i: int, stream: bool) -> tuple[str, str, int]:
        kw = dict(model=MODEL_NAME, messages=[{"role": "user", "content": PROMPTS[i]}], temperature=0,
                  max_tokens=MAX_TOKENS[i])
        if not stream:
            got = client.chat.completions.create(**kw)
            return got.choices[0].message.content, got.choices[0].finish_reason, 1
        parts, reason, chunks = [], None, 0
        for c in client.chat.completions.create(**kw, stream=True):
            if c.choices and c.choices[0].delta.content:
                parts.append(c.choices[0].delta.content)
                chunks += 1
            if c.choices and c.choices[0].finish_reason:
                reason = c.choices[0].finish_reason
        return "".join(parts), reason, chunks

    sequential = [ask(i, stream=False) for i in range(16)]
    before = served.health()
    results: dict[int, tuple[str, str, int]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(16)

    def worker(i: int) -> None:
        try:
            barrier.wait()
            results[i] = ask(i, stream=True)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for i in range(16):
        assert results[i][:2] == sequential[i][:2], f"request {i}"
    assert sum(r[2] > 1 for r in results.values()) >= 12, "replies should stream in several chunks"
    after = served.wait_idle()
    # The requests were batched (all rows busy at once), not served one by one, and rows were reused.
    assert after["peak_active"] == MAX_BATCH
    assert after["requests"] - before["requests"] == 16
    assert after["active"] == 0 and after["waiting"] == 0
    # Continuous batching decodes the 16 replies in far fewer steps than one at a time would.
    chunks = after["decode_chunks"] - before["decode_chunks"]
    one_at_a_time = sum(-(-m // 4) for m in MAX_TOKENS)
    assert chunks < one_at_a_time / 2, (chunks, one_at_a_time)


def _open_stream(served, body: dict) -> socket.socket:
    """Sends a request by hand so the test decides exactly when the connection goes away."""
    data = json.dumps(body).encode()
    sock = socket.create_connection((served.host, served.port), timeout=30)
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {SERVE_KEY}\r\nContent-Length: {len(data)}\r\n\r\n")
    sock.sendall(head.encode() + data)
    return sock


def _wait_for(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_disconnect_mid_stream_frees_the_row(served, client):
    served.wait_idle()
    before = served.health()
    sock = _open_stream(served, {"model": MODEL_NAME, "prompt": "Tell me a long story", "max_tokens": 500,
                                 "temperature": 0, "stream": True, "ignore_eos": True})
    received = b""
    while received.count(b"data: ") < 2:  # headers plus a couple of chunks: it is decoding now
        received += sock.recv(65536)
    assert received.startswith(b"HTTP/1.1 200")
    assert served.health()["active"] == 1
    sock.close()
    assert _wait_for(lambda: served.health()["active"] == 0), "the row was not freed"
    after = served.health()
    assert after["cancelled"] - before.get("cancelled", 0) == 1
    assert after["tokens"] - before["tokens"] < 400, "decoding went on after the client left"
    # The freed row serves the next request.
    ok = client.completions.create(model=MODEL_NAME, prompt="Again", max_tokens=5, temperature=0)
    assert ok.choices[0].finish_reason in ("length", "stop")


def test_disconnect_while_waiting_for_a_full_reply(served):
    served.wait_idle()
    before = served.health()
    sock = _open_stream(served, {"model": MODEL_NAME, "prompt": "Tell me a long story", "max_tokens": 500,
                                 "temperature": 0, "ignore_eos": True})
    assert _wait_for(lambda: served.health()["active"] == 1)
    sock.close()
    assert _wait_for(lambda: served.health()["active"] == 0), "the row was not freed"
    after = served.health()
    assert after["cancelled"] - before.get("cancelled", 0) == 1
    assert after["tokens"] - before["tokens"] < 400


def _wait_rows_busy(served, socks: list[socket.socket]) -> None:
    assert _wait_for(lambda: served.health()["active"] == MAX_BATCH), "the rows did not fill"
    for sock in socks:  # each stream has started: its row is decoding
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")


def _busy_rows(served) -> list[socket.socket]:
    """Every cache row decoding a long reply, so nothing leaves the queue by being admitted."""
    return [_open_stream(served, {"model": MODEL_NAME, "prompt": [1], "max_tokens": 511, "temperature": 0,
                                  "stream": True, "ignore_eos": True}) for _ in range(MAX_BATCH)]


def test_refused_and_abandoned_requests_leave_the_queue_at_once(served):
    """A request asking for more sequences than the queue can ever hold is refused before any is queued
    (on main it queued 256, got 503 and left them there, so the next requests got 503 too); a queued
    request whose client hangs up leaves the queue at once, not when a row frees."""
    served.wait_idle()
    busy = _busy_rows(served)
    try:
        _wait_rows_busy(served, busy)
        oversized = {"model": MODEL_NAME, "prompt": ["Hi"] * 64, "n": MAX_BATCH, "max_tokens": 1}
        status, got = raw_request(served, "POST", "/v1/completions", json.dumps(oversized).encode())
        assert status == 400 and got["error"]["code"] == "too_many_sequences", got
        assert str(served.engine.max_waiting) in got["error"]["message"]
        h = served.health()
        assert h["waiting"] == 0 and h["active"] == MAX_BATCH, h
        queued = _open_stream(served, {"model": MODEL_NAME, "prompt": "Hi", "max_tokens": 1, "stream": True})
        assert _wait_for(lambda: served.health()["waiting"] == 1, 5), "the next request was not queued"
        queued.close()
        assert _wait_for(lambda: served.health()["waiting"] == 0, 2), "a hung-up request stayed queued"
        assert served.health()["active"] == MAX_BATCH, "the rows freed up: the test proved nothing"
    finally:
        for sock in busy:
            sock.close()
    served.wait_idle()


def test_health_answers_while_big_prompts_are_tokenized(served):
    """Two clients loop prompts of several MB (each takes the tokenizer a large part of a second here,
    measured below): tokenizing runs off the event loop, so /health and a short request are answered in a
    fraction of one tokenization (on main each waited for the tokenizations in progress)."""
    served.wait_idle()
    rng = random.Random(0)
    letters = string.ascii_lowercase
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(3000)]
    prompt = " ".join(rng.choice(words) for _ in range(1_200_000))[: 6 << 20]
    start = time.perf_counter()
    served.tokenizer.encode(prompt, bos=True)
    tokenize = time.perf_counter() - start
    body = json.dumps({"model": MODEL_NAME, "prompt": prompt, "max_tokens": 1}).encode()
    small = json.dumps({"model": MODEL_NAME, "prompt": "hi", "max_tokens": 1}).encode()
    stop, statuses = threading.Event(), []

    def flood() -> None:
        while not stop.is_set():
            statuses.append(raw_request(served, "POST", "/v1/completions", body)[0])

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    health, replies = [], []
    try:
        time.sleep(min(tokenize / 2, 0.5))  # the first big bodies are in
        end = time.monotonic() + max(2 * tokenize, 1.5)
        while time.monotonic() < end:
            t0 = time.perf_counter()
            served.health()
            health.append(time.perf_counter() - t0)
            if len(health) % 10 == 1:
                t0 = time.perf_counter()
                assert raw_request(served, "POST", "/v1/completions", small)[0] == 200
                replies.append(time.perf_counter() - t0)
            time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert statuses and set(statuses) == {400}, statuses  # tokenized, then over the context
    health.sort()
    bound = max(0.3, tokenize / 2)
    summary = (f"tokenize {tokenize:.2f} s, {len(statuses)} big requests, /health p50 "
               f"{health[len(health) // 2] * 1e3:.0f} ms max {health[-1] * 1e3:.0f} ms, "
               f"'hi' max {max(replies) * 1e3:.0f} ms")
    print(summary)
    assert health[-1] < bound and max(replies) < bound, summary
