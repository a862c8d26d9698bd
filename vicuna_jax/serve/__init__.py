"""OpenAI-compatible serving with continuous batching, and a browser chat page.

    python -m vicuna_jax.serve --model=DIR [--port=8000] [--max_batch=16]

`engine` schedules sequences over the KV-cache rows of the decoding core (`vicuna_jax.decoding`);
`protocol` is the OpenAI wire format; `api` the Starlette app; `limits` bounds what one client can hold
(body size, pace and deadline, header deadline, connection slots per address); `cors` the cross-origin
allow-list; `server` runs it under uvicorn; `__main__` is the CLI. The page lives in
`vicuna_jax/serve_static/`.
"""

from vicuna_jax.serve.api import ServeConfig, build_app
from vicuna_jax.serve.engine import Engine, SeqEvent, SeqRequest
from vicuna_jax.serve.server import ServerThread, load_engine

__all__ = ["Engine", "SeqEvent", "SeqRequest", "ServeConfig", "ServerThread", "build_app", "load_engine"]
