"""Concurrent clients share decode steps and get exactly what they would get alone; a client that hangs up
frees its cache row."""

from __future__ import annotations

import json
import socket
import threading
import time

from serve_utils import MAX_BATCH, MODEL_NAME, SERVE_KEY

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
