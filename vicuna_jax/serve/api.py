"""The OpenAI-compatible HTTP API and the chat page, as a Starlette (ASGI) app over one Engine.

Each choice of each prompt is one engine sequence; a request's sequences are queued all together or not at
all, and their events reach the request's asyncio queue through `call_soon_threadsafe`. Streaming replies
are server-sent events in OpenAI's chunk format. A client that goes away (mid-stream, or while waiting for a
non-streamed reply) cancels its sequences, which leave the queue at once or free their cache rows on the
engine's next iteration. A body over `INLINE_BYTES` is parsed, rendered and tokenized on a worker thread, so
the event loop (and /health, and short requests) never waits for a big prompt.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hmac
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from absl import logging
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from vicuna_jax.data.chat_format import ChatFormat
from vicuna_jax.serve.cors import CorsMiddleware
from vicuna_jax.serve.engine import Engine, EngineFull, SeqEvent, SeqHandle, SeqRequest
from vicuna_jax.serve.limits import RequestLimits
from vicuna_jax.serve.protocol import (
    MAX_BODY_BYTES,
    APIError,
    Sampling,
    bad,
    chat_choice,
    chunk_body,
    completion_body,
    new_id,
    parse_json_body,
    parse_messages,
    parse_prompts,
    parse_sampling,
    require_json,
    sse,
    text_choice,
    usage,
)

STATIC_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "serve_static")
MAX_PROMPTS = 64  # prompts in one /v1/completions request
INLINE_BYTES = 64 << 10  # bodies up to this are prepared on the event loop (cheap); bigger on a worker
PREPARE_THREADS = 2  # workers for big bodies; more wait their turn (tokenizing is CPU-bound)
# What a request's body becomes: kind, token ids of each prompt, sampling, stop strings, the prompt's param.
_Prepared = tuple[str, list[list[int]], Sampling, tuple[str, ...], str]


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    model_name: str
    api_key: str | None = None
    max_body_bytes: int = MAX_BODY_BYTES  # larger bodies get 413 as soon as they pass it
    body_timeout: float = 30.0  # a body that stalls this long (seconds) gets 408
    body_deadline: float = 120.0  # a body not complete this long (seconds) after the headers gets 408
    min_body_rate: float = 1024.0  # bytes/s a body must average once body_timeout has passed (0: any)
    cors_origins: tuple[str, ...] = ()  # web origins allowed cross-origin requests ("*": any); none


class ApiKeyMiddleware:
    """Checks `Authorization: Bearer <key>` on every /v1 request (the page and /health stay open: they
    expose nothing, and the page asks for the key). Pure ASGI, so streaming passes through untouched."""

    def __init__(self, app: ASGIApp, api_key: str | None):
        self.app, self.key = app, (api_key or "").encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.key and scope["type"] == "http" and scope["path"].startswith("/v1"):
            auth = dict(scope["headers"]).get(b"authorization", b"")
            token = auth[7:].strip() if auth[:7].lower() == b"bearer " else b""
            if not hmac.compare_digest(token, self.key):
                message = ("Incorrect API key provided." if token else
                           "Missing API key: send it as 'Authorization: Bearer <key>'.")
                err = APIError(401, message, code="invalid_api_key")
                await JSONResponse(err.body(), 401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class Api:
    """Request handlers; one instance per app."""

    def __init__(self, engine: Engine, fmt: ChatFormat, config: ServeConfig):
        self.engine, self.chat_format, self.config = engine, fmt, config
        self.tokenizer = fmt.tokenizer
        self.created = int(time.time())
        self.workers = concurrent.futures.ThreadPoolExecutor(PREPARE_THREADS, "vicuna-prepare")

    # ------------------------------------------------------------ simple routes

    async def index(self, request: Request) -> Response:
        return FileResponse(os.path.join(STATIC_DIR, "index.html"), headers={"Cache-Control": "no-cache"})

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": self.config.model_name, **self.engine.stats()})

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.config.model_name, "object": "model", "created": self.created,
                "owned_by": "vicuna_jax", "max_model_len": self.engine.context_len}

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, request: Request) -> Response:
        self._check_model(request.path_params["model"], param=None)
        return JSONResponse(self._model_card())

    # ------------------------------------------------------------ completions

    async def chat_completions(self, request: Request) -> Response:
        return await self._serve(request, self._prepare_chat)

    async def completions(self, request: Request) -> Response:
        return await self._serve(request, self._prepare_text)

    async def _serve(self, request: Request, prepare: Callable[[bytes], _Prepared]) -> Response:
        require_json(request.headers.get("content-type"))
        raw = await request.body()
        if len(raw) <= INLINE_BYTES:
            prepared = prepare(raw)
        else:  # parsing, rendering and tokenizing megabytes must not stall the event loop
            prepared = await asyncio.get_running_loop().run_in_executor(self.workers, prepare, raw)
        return await self._generate(request, *prepared)

    def _prepare_chat(self, raw: bytes) -> _Prepared:
        body = parse_json_body(raw)
        self._check_model(body.get("model"))
        sampling = parse_sampling(body, max_n=self.engine.max_batch)
        messages = parse_messages(body)
        try:
            ids = self.chat_format.encode_prompt(messages)
        except ValueError as e:
            raise bad(str(e), "messages") from None
        stops = self.chat_format.stop_strings + sampling.stop
        return "chat", [ids], sampling, stops, "messages"

    def _prepare_text(self, raw: bytes) -> _Prepared:
        body = parse_json_body(raw)
        self._check_model(body.get("model"))
        sampling = parse_sampling(body, max_n=self.engine.max_batch)
        prompts = parse_prompts(body)
        if len(prompts) > MAX_PROMPTS:
            raise bad(f"at most {MAX_PROMPTS} prompts per request, got {len(prompts)}", "prompt")
        vocab = self.tokenizer.vocab_size
        ids_list = []
        for p in prompts:
            ids = self.tokenizer.encode(p, bos=True) if isinstance(p, str) else p
            if any(not 0 <= t < vocab for t in ids):
                raise bad(f"token ids must be in [0, {vocab})", "prompt")
            ids_list.append(ids)
        return "text", ids_list, sampling, sampling.stop, "prompt"

    def _check_model(self, model: Any, param: str | None = "model") -> None:
        if not isinstance(model, str) or not model:
            raise bad("'model' must be a non-empty string", param, "invalid_type")
        if model != self.config.model_name:
            raise APIError(404, f"The model '{model}' does not exist; this server serves "
                           f"'{self.config.model_name}'.", param=param, code="model_not_found")

    async def _generate(self, request: Request, kind: str, prompts: list[list[int]], s: Sampling,
                        stops: tuple[str, ...], param: str) -> Response:
        ctx = self.engine.context_len
        for ids in prompts:
            if len(ids) >= ctx:
                raise bad(f"This model's maximum context length is {ctx} tokens; the prompt has {len(ids)} "
                          "tokens and at least one token must be left to generate.", param,
                          "context_length_exceeded")
        count = len(prompts) * s.n
        if count > self.engine.max_waiting:  # could never be queued: retrying would not help
            raise bad(f"this request asks for {count} sequences (prompts x n); the server queues at most "
                      f"{self.engine.max_waiting}", "n" if s.n > 1 else param, "too_many_sequences")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, SeqEvent]] = asyncio.Queue()
        requests, callbacks = [], []
        for p, ids in enumerate(prompts):
            for j in range(s.n):
                index = p * s.n + j
                seed = None if s.seed is None else (s.seed + j) & 0x7FFFFFFF
                # A max_tokens over what the context leaves is clamped, not refused (vLLM refuses it), so
                # clients with a fixed budget, like the judge's 2048, work with small models; such a reply
                # ends with finish_reason "length".
                room = ctx - len(ids)
                requests.append(SeqRequest(tuple(ids), min(s.max_tokens or room, room), s.temperature,
                                           s.top_p, s.top_k, seed, stops, s.ignore_eos))
                callbacks.append(lambda ev, i=index: loop.call_soon_threadsafe(events.put_nowait, (i, ev)))
        try:
            handles = self.engine.submit_many(requests, callbacks)  # all queued, or none
        except EngineFull as e:
            raise APIError(503, f"server overloaded: {e}; retry later", type="server_error",
                           code="overloaded", headers={"Retry-After": "1"}) from None
        rid = new_id("chatcmpl" if kind == "chat" else "cmpl")
        prompt_tokens = sum(len(ids) for ids in prompts)
        if s.stream:
            stream = self._stream(kind, rid, handles, events, prompt_tokens, s.include_usage)
            return StreamingResponse(stream, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await self._collect(request, kind, rid, handles, events, prompt_tokens)

    async def _collect(self, request: Request, kind: str, rid: str, handles: list[SeqHandle],
                       events: asyncio.Queue, prompt_tokens: int) -> Response:
        watcher = asyncio.create_task(_cancel_on_disconnect(request, handles))
        texts: list[list[str]] = [[] for _ in handles]
        reasons: list[str | None] = [None] * len(handles)
        tokens = 0
        try:
            while any(r is None for r in reasons):
                i, ev = await events.get()
                texts[i].append(ev.text)
                if ev.finish_reason:
                    reasons[i], tokens = ev.finish_reason, tokens + ev.completion_tokens
                    _raise_if_failed(ev)
        finally:
            watcher.cancel()
            for h in handles:
                h.cancel()
        make = chat_choice if kind == "chat" else text_choice
        choices = [make(i, "".join(t), r) for i, (t, r) in enumerate(zip(texts, reasons, strict=True))]
        return JSONResponse(completion_body(kind, rid, self.config.model_name, choices,
                                            usage(prompt_tokens, tokens)))

    async def _stream(self, kind: str, rid: str, handles: list[SeqHandle], events: asyncio.Queue,
                      prompt_tokens: int, include_usage: bool) -> AsyncIterator[bytes]:
        model, created = self.config.model_name, int(time.time())
        try:
            if kind == "chat":
                for i in range(len(handles)):
                    yield sse(chunk_body(kind, rid, model, created, i, first=True))
            left, tokens = len(handles), 0
            while left:
                i, ev = await events.get()
                if ev.text:
                    yield sse(chunk_body(kind, rid, model, created, i, text=ev.text))
                if ev.finish_reason:
                    left, tokens = left - 1, tokens + ev.completion_tokens
                    try:
                        _raise_if_failed(ev)
                    except APIError as e:
                        yield sse(e.body())
                        return
                    yield sse(chunk_body(kind, rid, model, created, i, finish_reason=ev.finish_reason))
            if include_usage:
                yield sse(chunk_body(kind, rid, model, created, None, use=usage(prompt_tokens, tokens)))
            yield sse("[DONE]")
        finally:  # normal end, error, or the client went away (the task is cancelled)
            for h in handles:
                h.cancel()


def _raise_if_failed(ev: SeqEvent) -> None:
    if ev.finish_reason == "error":
        raise APIError(500, f"generation failed: {ev.error}", type="server_error", code="engine_error")
    if ev.finish_reason == "cancelled":
        raise APIError(503, "the server is shutting down", type="server_error", code="shutting_down")


async def _cancel_on_disconnect(request: Request, handles: list[SeqHandle]) -> None:
    """Waits for the client to hang up (the body is already read, so only a disconnect can arrive)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            for h in handles:
                h.cancel()
            return


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return JSONResponse(exc.body(), exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return JSONResponse(APIError(exc.status_code, message, code=code).body(), exc.status_code,
                        headers=dict(exc.headers or {}))


async def _client_gone(request: Request, exc: Exception) -> Response:
    """The client hung up before its body arrived: nobody to answer, nothing to log."""
    return Response(status_code=499)  # nginx's "client closed request"; uvicorn drops it


async def _server_error(request: Request, exc: Exception) -> Response:
    logging.error("unhandled error on %s: %r", request.url.path, exc)
    body = APIError(500, f"internal error: {type(exc).__name__}", type="server_error").body()
    return JSONResponse(body, 500)


def build_app(engine: Engine, fmt: ChatFormat, config: ServeConfig) -> ASGIApp:
    """The ASGI app: /v1 API, /health, and the chat page at /."""
    api = Api(engine, fmt, config)
    routes = [
        Route("/", api.index),
        Route("/health", api.health),
        Route("/v1/models", api.models),
        Route("/v1/models/{model:path}", api.model),
        Route("/v1/chat/completions", api.chat_completions, methods=["POST"]),
        Route("/v1/completions", api.completions, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR)),
    ]
    handlers = {APIError: _api_error, HTTPException: _http_error, ClientDisconnect: _client_gone,
                Exception: _server_error}
    app = Starlette(routes=routes, exception_handlers=handlers)  # type: ignore[arg-type]
    guarded = CorsMiddleware(ApiKeyMiddleware(app, config.api_key), config.cors_origins)
    return RequestLimits(guarded, config.max_body_bytes, config.body_timeout, config.body_deadline,
                         config.min_body_rate)
