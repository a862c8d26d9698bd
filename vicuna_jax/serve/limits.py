"""What one client can hold of the server: request body size and pace, header pace, idle time, connections.

Two layers, because uvicorn only calls the app once a request's headers are complete:

- `RequestLimits` (ASGI middleware) counts the body as it arrives and refuses it with 413 the moment it
  passes `max_body_bytes` (or at once when `Content-Length` says so), so a huge POST is never buffered. It
  bounds the body's pace three ways, each a 408: no byte for `body_timeout` seconds (a stall); after the
  first `body_timeout` seconds, an average under `min_body_rate` bytes/s since the headers (a trickle: one
  byte a second never stalls); and the whole body within `body_deadline` seconds of the headers. Any
  response sent before the body was read to the end closes the connection, so the server stops reading it.
  A client that hangs up mid-body ends its request quietly (no traceback).
- `protocol_class(limits)` is uvicorn's h11 protocol plus a header deadline (a connection that has not sent
  a complete request line and headers within `header_timeout` seconds, from connecting or from its first
  byte after a keep-alive wait, is closed), connection slots answered with 503 in OpenAI's error format
  (uvicorn's own `limit_concurrency` answers plain text) and a header size limit (431; h11's
  `max_incomplete_event_size` only bounds headers still arriving, which get uvicorn's plain 400).
  A connection takes a slot with its first accepted request and holds it until it closes. A request that
  would take a slot is refused when `max_connections` slots are taken, when its client address already
  holds `max_per_client`, or when fewer than `reserve` slots are free and its address already holds one:
  the last slots are kept for addresses holding none, so a few hostile addresses cannot take them all.
  Connections still sending their first request's headers take no slot (the header deadline bounds them).
  Keep-alive is uvicorn's `timeout_keep_alive`.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from typing import Any

import h11
from starlette.responses import JSONResponse
from uvicorn.protocols.http.h11_impl import H11Protocol

from vicuna_jax.serve.protocol import APIError

Scope = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ConnectionLimits:
    """Per-connection limits enforced by the HTTP protocol (see the module docstring)."""

    header_timeout: float = 20.0  # seconds to send the request line and headers
    keep_alive_timeout: float = 30.0  # idle seconds between requests (longer than clients' 5 s pool expiry)
    max_connections: int = 512  # connection slots; a request needing one more gets 503
    max_header_bytes: int = 16 << 10  # request target + headers: 431 beyond (400 while still arriving)
    max_per_client: int | None = None  # slots one client address may hold (None: a quarter of the slots)
    reserve: int | None = None  # slots only for addresses holding none (None: an eighth of the slots)

    def __post_init__(self) -> None:
        if min(self.header_timeout, self.keep_alive_timeout) <= 0:
            raise ValueError("header and keep-alive timeouts must be > 0")
        if min(self.max_connections, self.max_header_bytes) < 1:
            raise ValueError("max_connections and max_header_bytes must be >= 1")
        if self.max_per_client is None:
            object.__setattr__(self, "max_per_client", max(1, self.max_connections // 4))
        if self.reserve is None:
            object.__setattr__(self, "reserve", self.max_connections // 8)
        if self.max_per_client < 1:
            raise ValueError("max_per_client must be >= 1")
        if not 0 <= self.reserve < self.max_connections:
            raise ValueError("reserve must be >= 0 and less than max_connections")


def _refusal(err: APIError, close: bool = True) -> JSONResponse:
    headers = {**err.headers, **({"Connection": "close"} if close else {})}
    return JSONResponse(err.body(), err.status, headers=headers)


def too_large(limit: int) -> APIError:
    return APIError(413, f"request body over {limit} bytes", code="request_too_large")


def too_slow(message: str) -> APIError:
    return APIError(408, message, code="request_timeout")


class RequestLimits:
    """ASGI middleware: the body-size limit while streaming, the body's stall timeout, minimum rate and
    deadline, quiet client hang-ups. `min_body_rate` 0 checks no rate."""

    def __init__(self, app: Any, max_body_bytes: int, body_timeout: float, body_deadline: float = 120.0,
                 min_body_rate: float = 1024.0):
        if max_body_bytes < 1 or min(body_timeout, body_deadline) <= 0 or min_body_rate < 0:
            raise ValueError("max_body_bytes must be >= 1, body_timeout and body_deadline > 0 and "
                             "min_body_rate >= 0")
        self.app, self.max_bytes, self.timeout = app, max_body_bytes, body_timeout
        self.deadline, self.rate = body_deadline, min_body_rate

    def _next_wait(self, elapsed: float, received: int) -> tuple[float, APIError]:
        """Seconds the next read may take, and the error if it takes longer."""
        waits = [(self.timeout, f"the request body stalled for {self.timeout:g} s"),
                 (self.deadline - elapsed, f"the request body was not complete within {self.deadline:g} s")]
        if self.rate:
            # Past the first `timeout` seconds, the average since the headers must be at least `rate`.
            allowed = max(self.timeout, received / self.rate)
            waits.append((allowed - elapsed, f"the request body arrived slower than {self.rate:g} bytes/s"))
        wait, message = min(waits, key=lambda w: w[0])
        return wait, too_slow(message)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"").strip()
        has_body = (declared not in (b"", b"0")) or b"transfer-encoding" in headers
        if declared.isdigit() and int(declared) > self.max_bytes:
            await _refusal(too_large(self.max_bytes))(scope, receive, send)
            return
        received, done, start = 0, not has_body, time.monotonic()

        async def limited_receive() -> dict[str, Any]:
            nonlocal received, done
            if done:
                return await receive()
            wait, late = self._next_wait(time.monotonic() - start, received)
            if wait <= 0:
                raise late
            try:
                message = await asyncio.wait_for(receive(), wait)
            except TimeoutError:
                raise late from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise too_large(self.max_bytes)
                done = not message.get("more_body", False)
            return message

        async def closing_send(message: dict[str, Any]) -> None:
            # A reply before the whole body arrived (an error, a 401): close rather than drain the rest.
            if message["type"] == "http.response.start" and not done:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, limited_receive, closing_send)


class _Slots:
    """The connection slots of one server: how many are taken, by client address."""

    def __init__(self) -> None:
        self.taken = 0
        self.by_address: collections.Counter[str] = collections.Counter()

    def refusal(self, address: str, limits: ConnectionLimits) -> APIError | None:
        """Why a connection from `address` cannot take a slot now (None: it can)."""
        cap, mine = limits.max_connections, self.by_address[address]
        if self.taken >= cap:
            message = f"too many connections (the limit is {cap})"
        elif mine >= limits.max_per_client:
            message = f"too many connections from {address} (at most {limits.max_per_client} per address)"
        elif mine and self.taken >= cap - limits.reserve:
            message = (f"the server is nearly full: its last {limits.reserve} connections are kept for "
                       "clients holding none")
        else:
            return None
        return APIError(503, message + "; retry later", type="server_error", code="too_many_connections",
                        headers={"Retry-After": "1"})

    def take(self, address: str) -> None:
        self.taken += 1
        self.by_address[address] += 1

    def give_back(self, address: str) -> None:
        self.taken -= 1
        self.by_address[address] -= 1
        if not self.by_address[address]:
            del self.by_address[address]


class _LimitedH11Protocol(H11Protocol):
    limits = ConnectionLimits()
    slots = _Slots()  # per server: `protocol_class` makes a class with its own

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.limit_concurrency = None  # our cap in `_app_or_refuse` answers in OpenAI's error format
        self._inner_app, self.app = self.app, self._app_or_refuse
        self._header_timer: asyncio.TimerHandle | None = None
        self._slot: str | None = None  # the client address whose slot this connection holds

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        if self._slot is not None:
            self.slots.give_back(self._slot)
            self._slot = None
        super().connection_lost(exc)

    def _watch_headers(self) -> None:
        """Runs the header deadline while a request's headers are awaited (their_state IDLE). Called on
        connecting and on data only: a keep-alive wait with nothing received is uvicorn's timer's."""
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if not waiting:
            self._stop_header_timer()
        elif self._header_timer is None:
            self._header_timer = self.loop.call_later(self.limits.header_timeout, self._header_timed_out)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.logger.info("closing a connection that sent no complete request in %g s",
                             self.limits.header_timeout)
            try:
                self.conn.send(h11.ConnectionClosed())
            except h11.LocalProtocolError:
                pass
            self.transport.close()

    async def _app_or_refuse(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            cap, max_head = self.limits.max_connections, self.limits.max_header_bytes
            head = len(scope["raw_path"]) + len(scope["query_string"]) + sum(len(k) + len(v) + 4
                                                                             for k, v in scope["headers"])
            err = None
            if head > max_head:
                err = APIError(431, f"request headers over {max_head} bytes", code="headers_too_large")
            elif self._slot is None and not self.transport.is_closing():
                address = self.client[0] if self.client else ""
                err = self.slots.refusal(address, self.limits)
                if err is None:
                    self.slots.take(address)
                    self._slot = address
            elif len(self.tasks) > cap:
                err = APIError(503, f"too many requests in progress (the limit is {cap}); retry later",
                               type="server_error", code="too_many_connections", headers={"Retry-After": "1"})
            if err is not None:
                await _refusal(err)(scope, receive, send)
                return
        await self._inner_app(scope, receive, send)


def protocol_class(limits: ConnectionLimits) -> type[H11Protocol]:
    """uvicorn's h11 protocol with `limits` (pass as `uvicorn.Config(http=...)`)."""
    return type("LimitedH11Protocol", (_LimitedH11Protocol,), {"limits": limits, "slots": _Slots()})
