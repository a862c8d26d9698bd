"""What one client can hold of the server: a body over the size limit is refused while it arrives (not after
it was buffered), half-sent headers or bodies and idle keep-alive connections are closed on time, a request
beyond the connection cap gets 503, and a client that hangs up mid-body leaves no traceback in the log.

Each test runs its own small server (the shared engine, its own limits) and talks raw sockets, with bounded
loops and socket timeouts, so a server that never answers fails the test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import select
import socket
import time
from collections.abc import Iterator

import pytest
from serve_utils import MODEL_NAME, SERVE_KEY

from vicuna_jax.data import chat_format
from vicuna_jax.serve import ServeConfig, ServerThread, build_app
from vicuna_jax.serve.limits import ConnectionLimits

BODY_LIMIT = 64 << 10
AUTH = f"Authorization: Bearer {SERVE_KEY}\r\n"


@contextlib.contextmanager
def limited_server(served, *, max_body_bytes: int = BODY_LIMIT, body_timeout: float = 30.0,
                   **limits) -> Iterator[ServerThread]:
    config = ServeConfig(MODEL_NAME, api_key=SERVE_KEY, max_body_bytes=max_body_bytes,
                         body_timeout=body_timeout)
    thread = ServerThread(build_app(served.engine, chat_format.resolve(served.tokenizer), config),
                          limits=ConnectionLimits(**limits)).start()
    try:
        yield thread
    finally:
        thread.stop()


def connect(thread: ServerThread, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection((thread.host, thread.port), timeout=timeout)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def closed_after(sock: socket.socket, limit: float) -> float:
    """Seconds until the server closes `sock` (recv gives EOF or a reset); fails past `limit`."""
    start = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the connection was still open after {limit} s")
    return time.monotonic() - start


def assert_openai_error(body: bytes, code: str) -> dict:
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code, error
    return error


def health_request(keep_alive: bool = True) -> bytes:
    close = "" if keep_alive else "Connection: close\r\n"
    return f"GET /health HTTP/1.1\r\nHost: t\r\n{close}\r\n".encode()


# ------------------------------------------------------------ body size


def test_body_over_the_limit_is_refused_while_it_arrives(served):
    """A chunked body (no Content-Length to check up front) of 64 MiB against a 64 KiB limit: the 413 comes
    after about the limit was sent, the server closes, and the client never gets to send the rest."""
    total, chunk = 64 << 20, b"x" * (16 << 10)
    with limited_server(served) as thread, connect(thread) as sock:
        sock.sendall(("POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                      f"{AUTH}Transfer-Encoding: chunked\r\n\r\n").encode())
        sent = 0
        while sent < total and not select.select([sock], [], [], 0)[0]:
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        status, headers, body = read_response(sock)
        assert status == 413 and headers.get("connection") == "close"
        assert str(BODY_LIMIT) in assert_openai_error(body, "request_too_large")["message"]
        # Socket buffers let the client run ahead of the server a little, never to the end.
        assert sent < total // 8, f"sent {sent} of {total} bytes before the 413"
        closed_after(sock, 5)


def test_declared_length_over_the_limit_is_refused_before_the_body(served):
    with limited_server(served) as thread, connect(thread) as sock:
        sock.sendall(("POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                      f"{AUTH}Content-Length: {300 << 20}\r\n\r\n").encode())
        status, headers, body = read_response(sock)  # not a byte of the 300 MB sent
        assert status == 413 and headers.get("connection") == "close"
        assert_openai_error(body, "request_too_large")


def test_body_under_the_limit_is_served(served):
    fields = json.dumps({"model": MODEL_NAME, "prompt": "Hi", "max_tokens": 2}).encode()
    body = fields[:-1] + b" " * (BODY_LIMIT - len(fields)) + b"}"  # exactly at the limit
    assert len(body) == BODY_LIMIT
    with limited_server(served) as thread, connect(thread) as sock:
        head = f"POST /v1/completions HTTP/1.1\r\nHost: t\r\n{AUTH}Content-Length: {len(body)}\r\n\r\n"
        sock.sendall(head.encode() + body)
        status, _, reply = read_response(sock)
        assert status == 200, reply
        assert json.loads(reply)["usage"]["completion_tokens"] >= 1


# ------------------------------------------------------------ slow and idle clients


def test_half_sent_headers_are_closed_on_time(served):
    """Silent after half a request line, or trickling header bytes (a deadline, not an idle timer): both
    are closed after `header_timeout`; so is a connection that never sends anything."""
    with limited_server(served, header_timeout=1.0) as thread:
        with connect(thread) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n")
            assert 0.5 < closed_after(sock, 6) < 4
        with connect(thread) as sock:
            assert 0.5 < closed_after(sock, 6) < 4
        with connect(thread) as sock:
            start, closed = time.monotonic(), False
            sock.sendall(b"GET /health HTTP/1.1\r\n")
            while not closed and time.monotonic() - start < 6:
                closed = bool(select.select([sock], [], [], 0.2)[0])  # readable: EOF (or a reset)
                try:
                    sock.sendall(b"X-Slow: 1\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
            assert closed and time.monotonic() - start < 4
        assert _wait_for(lambda: not thread.server.server_state.connections)


def test_half_sent_body_gets_408_and_is_closed(served):
    with limited_server(served, body_timeout=0.5) as thread, connect(thread) as sock:
        sock.sendall((f"POST /v1/completions HTTP/1.1\r\nHost: t\r\n{AUTH}Content-Length: 100\r\n\r\n"
                      '{"model": ').encode())
        start = time.monotonic()
        status, headers, body = read_response(sock)
        assert status == 408 and headers.get("connection") == "close" and time.monotonic() - start < 4
        assert_openai_error(body, "request_timeout")
        closed_after(sock, 5)


def test_idle_keep_alive_connection_is_closed(served):
    with limited_server(served, keep_alive_timeout=0.5) as thread, connect(thread) as sock:
        sock.sendall(health_request())
        assert read_response(sock)[0] == 200
        assert closed_after(sock, 6) < 4


def test_connection_cap_answers_503(served):
    with limited_server(served, max_connections=2) as thread:
        held = [connect(thread), connect(thread)]
        try:
            for sock in held:  # two open keep-alive connections: the cap is reached
                sock.sendall(health_request())
                assert read_response(sock)[0] == 200
            with connect(thread) as third:
                third.sendall(health_request())
                status, headers, body = read_response(third)
                assert status == 503 and headers.get("retry-after") == "1"
                assert_openai_error(body, "too_many_connections")
                closed_after(third, 5)
            held.pop().close()

            def served_again() -> bool:
                with connect(thread) as sock:
                    sock.sendall(health_request(keep_alive=False))
                    return read_response(sock)[0] == 200

            assert _wait_for(served_again), "a freed connection slot was not reused"
        finally:
            for sock in held:
                sock.close()


def test_headers_over_the_limit_get_431(served):
    with limited_server(served, max_header_bytes=4096) as thread:
        with connect(thread) as sock:  # arrives whole: uvicorn's parser alone would take it
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 6000 + b"\r\n\r\n")
            status, headers, body = read_response(sock)
            assert status == 431 and headers.get("connection") == "close"
            assert_openai_error(body, "headers_too_large")
        with connect(thread) as sock:  # just under the limit
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 3000 + b"\r\n\r\n")
            assert read_response(sock)[0] == 200


# ------------------------------------------------------------ hang-ups


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_client_hanging_up_mid_body_logs_nothing(served):
    records = _Records()
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "absl")]
    for logger in loggers:
        logger.addHandler(records)
    try:
        with limited_server(served) as thread:
            for _ in range(3):
                with connect(thread) as sock:
                    sock.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n{AUTH}"
                                  "Content-Length: 1000\r\n\r\n{\"model\": ").encode())
                    time.sleep(0.1)  # the handler is reading the body now
            state = thread.server.server_state
            assert _wait_for(lambda: not state.connections and not state.tasks)
    finally:
        for logger in loggers:
            logger.removeHandler(records)
    assert not records.records, [r.getMessage() for r in records.records]


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False
