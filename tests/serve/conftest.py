"""Fixtures for serving tests: one real server (uvicorn on 127.0.0.1, a free port, in a thread) over the tiny
random model, shared by every test here, plus a `vicuna_jax.generate` Generator to compare against.

The server runs 8 cache rows and 4-token decode chunks, so 16 concurrent requests exercise queueing and
row reuse, and short replies still stream in several chunks.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

SERVE_KEY = "sk-serve-test-2d6c1f0b9a8e7d6c5b4a3f2e"
MODEL_NAME = "tiny-vicuna"
MAX_BATCH = 8

# Loopback only: never route test traffic through a proxy from the environment.
os.environ["NO_PROXY"] = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost"]))


@dataclasses.dataclass
class Served:
    url: str
    host: str
    port: int
    engine: Any
    tokenizer: Any

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def health(self) -> dict[str, Any]:
        status, body = raw_request(self, "GET", "/health")
        assert status == 200
        return body

    def wait_idle(self, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            h = self.health()
            if (h["active"] == 0 and h["waiting"] == 0) or time.monotonic() > deadline:
                return h
            time.sleep(0.02)


def raw_request(served: Served, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, key: str | None = SERVE_KEY) -> tuple[int, Any]:
    """One HTTP request with exact bytes (the openai client cannot send malformed bodies); JSON reply."""
    conn = http.client.HTTPConnection(served.host, served.port, timeout=60)
    try:
        h = {"Content-Type": "application/json", **(headers or {})}
        if key is not None:
            h["Authorization"] = f"Bearer {key}"
        conn.request(method, path, body=body, headers=h)
        response = conn.getresponse()
        data = response.read()
        try:
            return response.status, json.loads(data)
        except ValueError:
            return response.status, data
    finally:
        conn.close()


@pytest.fixture(scope="session")
def served(tiny_checkpoint) -> Iterator[Served]:
    from vicuna_jax.serve import ServeConfig, ServerThread, build_app, load_engine

    engine, tokenizer = load_engine(tiny_checkpoint, max_batch=MAX_BATCH, decode_steps=4)
    app = build_app(engine, tokenizer, ServeConfig(MODEL_NAME, api_key=SERVE_KEY))
    thread = ServerThread(app).start()
    try:
        yield Served(thread.url, thread.host, thread.port, engine, tokenizer)
    finally:
        thread.stop()
        engine.shutdown()


@pytest.fixture(scope="session")
def reference(tiny_checkpoint):
    """`vicuna_jax.generate` on the same checkpoint: what greedy serving must reproduce."""
    from vicuna_jax.generate import load_generator

    return load_generator(tiny_checkpoint, chunk=16)


@pytest.fixture
def client(served: Served):
    import openai

    return openai.OpenAI(base_url=served.base_url, api_key=SERVE_KEY, max_retries=0, timeout=120)
