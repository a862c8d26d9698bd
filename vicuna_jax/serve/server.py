"""Running the app: uvicorn on a socket we bind ourselves (clear errors, and port 0 picks a free port),
either in the foreground (the CLI) or in a background thread (tests, benchmarks)."""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

import jax.numpy as jnp
import uvicorn

from vicuna_jax.cli import UserError
from vicuna_jax.data import chat_format
from vicuna_jax.data.chat_format import ChatFormat
from vicuna_jax.load import load_model
from vicuna_jax.serve.engine import Engine
from vicuna_jax.serve.limits import ConnectionLimits, protocol_class


def load_engine(model_path: str, *, tokenizer: str | None = None, dtype: str = "float32", max_batch: int = 16,
                decode_steps: int = 8, max_seq_len: int | None = None, max_waiting: int = 256,
                max_prefill_tokens: int = 8192, warmup: bool = True,
                template: str | None = chat_format.AUTO, adapter: str | None = None
                ) -> tuple[Engine, ChatFormat]:
    """Loads a checkpoint or HF directory into a started Engine; returns (engine, its chat format: the one
    rule of `vicuna_jax.load`). Replies stop at the model's EOS ids and the format's end-of-turn ids.
    UserError for a model, tokenizer or template that cannot be used."""
    if not os.path.exists(model_path):
        raise UserError(f"--model: no such directory: {model_path}")
    model, _, fmt = load_model(model_path, tokenizer=tokenizer, adapter=adapter, template=template,
                               dtype=jnp.dtype(dtype))
    if fmt is None:
        raise UserError(f"no tokenizer (tokenizer.model or tokenizer.json) found with {model_path}; "
                        "pass --tokenizer")
    engine = Engine(model, fmt.tokenizer, max_batch=max_batch, decode_steps=decode_steps,
                    max_seq_len=max_seq_len, max_waiting=max_waiting, max_prefill_tokens=max_prefill_tokens,
                    extra_eos_ids=fmt.eos_token_ids)
    if warmup:
        engine.warmup()
    return engine.start(), fmt


def bind(host: str, port: int, listen: bool = True) -> socket.socket:
    """A bound socket, listening unless `listen` is False (the CLI binds first, so a taken port fails at
    once, and listens once the model is loaded: until then connections are refused rather than left
    hanging); OSError (address in use, bad host) for the caller to report."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    if listen:
        sock.listen(128)
    sock.set_inheritable(True)
    return sock


def make_server(app: Any, log_level: str = "warning", access_log: bool = False,
                limits: ConnectionLimits | None = None) -> uvicorn.Server:
    limits = limits or ConnectionLimits()
    config = uvicorn.Config(app, log_level=log_level, access_log=access_log, lifespan="off",
                            timeout_graceful_shutdown=5, http=protocol_class(limits),
                            timeout_keep_alive=limits.keep_alive_timeout,  # type: ignore[arg-type]
                            h11_max_incomplete_event_size=limits.max_header_bytes)
    return uvicorn.Server(config)


class ServerThread:
    """uvicorn serving `app` on 127.0.0.1 (a free port by default) in a daemon thread."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0,
                 limits: ConnectionLimits | None = None):
        self.sock = bind(host, port)
        self.host, self.port = self.sock.getsockname()[:2]
        self.server = make_server(app, limits=limits)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()
