"""A deadline for a whole HTTP request made through the `openai` client.

The client's `timeout` (httpx's) bounds each socket operation, not the request: a server that trickles one
byte a second answers every read in time and holds the caller forever. Here each request under
`deadline.limit(seconds)` gets a timer; when it fires, the request's socket is shut down, which wakes the
blocked read at once (in any phase: sending, waiting for headers, reading the body), and the caller sees
`guard.expired`. Only public hooks are used: an httpx request event hook adds httpcore's `trace` extension,
whose connect event hands over the socket. Requests under a limit send `Connection: close`, so each has a
socket of its own (a pooled connection would be reused without a connect event, and could be shared).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

_CONNECT_EVENTS = ("connection.connect_tcp.complete", "connection.connect_unix_socket.complete")


class Guard:
    """One request's deadline: shuts its socket down when the timer fires."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's trace callback: remember the socket of each connection this request opens."""
        if event not in _CONNECT_EVENTS:
            return
        stream = info.get("return_value")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if not isinstance(sock, socket.socket):
            return
        with self._lock:
            self._sockets.append(sock)
            expired = self.expired
        if expired:  # connected after the deadline: stop right here
            _shutdown(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)

    def cancel(self) -> None:
        self._timer.cancel()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # unlike close(), wakes a thread blocked in recv/send on it
    except OSError:
        pass  # already closed: the request finished as the timer fired


class RequestDeadline:
    """Give `http_client()` to `openai.OpenAI(http_client=...)`, then wrap each call in `limit(seconds)`.

    The limit is per thread (httpx's sync client runs hooks and I/O in the calling thread), so one client
    can serve many worker threads, each with its own deadline.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def http_client(self, **kwargs: Any) -> Any:
        import openai

        return openai.DefaultHttpxClient(event_hooks={"request": [self._on_request]}, **kwargs)

    @contextlib.contextmanager
    def limit(self, seconds: float) -> Iterator[Guard]:
        guard = Guard(seconds)
        self._local.guard = guard
        try:
            yield guard
        finally:
            self._local.guard = None
            guard.cancel()

    def _on_request(self, request: Any) -> None:
        guard = getattr(self._local, "guard", None)
        if guard is None:
            return
        request.headers["Connection"] = "close"
        request.extensions["trace"] = guard.trace
