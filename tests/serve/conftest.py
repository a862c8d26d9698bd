"""Fixtures for serving tests: one real server (uvicorn on 127.0.0.1, a free port, in a thread) over the tiny
random model, shared by every test here, plus a `vicuna_jax.generate` Generator to compare against.

The server runs 8 cache rows and 4-token decode chunks, so 16 concurrent requests exercise queueing and
row reuse, and short replies still stream in several chunks.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from serve_utils import MAX_BATCH, MODEL_NAME, SERVE_KEY, Served


@pytest.fixture(scope="session")
def served(tiny_checkpoint) -> Iterator[Served]:
    from vicuna_jax.serve import ServeConfig, ServerThread, build_app, load_engine

    engine, fmt = load_engine(tiny_checkpoint, max_batch=MAX_BATCH, decode_steps=4)
    tokenizer = fmt.tokenizer
    app = build_app(engine, fmt, ServeConfig(MODEL_NAME, api_key=SERVE_KEY))
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
