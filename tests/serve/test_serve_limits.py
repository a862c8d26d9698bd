"""What one client can hold of the server: a body over the size limit is refused while it arrives (not after
it was buffered), half-sent headers or bodies and idle keep-alive connections are closed on time, so are
bodies trickled slower than the minimum rate or past the whole-body deadline, a request beyond the connection
cap, the per-address cap or into the reserve gets 503 (so trickling attackers cannot starve other clients),
cross-origin preflights follow the allow-list, and a client that hangs up mid-body leaves no traceback.

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
                   body_deadline: float = 120.0, min_body_rate: float = 1024.0,
                   cors_origins: tuple[str, ...] = (), **limits) -> Iterator[ServerThread]:
    config = ServeConfig(MODEL_NAME, api_key=SERVE_KEY, max_body_bytes=max_body_bytes,
                         body_timeout=body_timeout, body_deadline=body_deadline, min_body_rate=min_body_rate,
                         cors_origins=cors_origins)
    thread = ServerThread(build_app(served.engine, chat_format.resolve(served.tokenizer), config),
                          limits=ConnectionLimits(**limits)).start()
    try:
        yield thread
    finally:
        thread.stop()


def connect(thread: ServerThread, timeout: float = 10.0, source: str | None = None) -> socket.socket:
    """A connection to `thread`, from the loopback address `source` (127.0.0.x) when given."""
    return socket.create_connection((thread.host, thread.port), timeout=timeout,
                                    source_address=(source, 0) if source else None)


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
        head = (f"POST /v1/completions HTTP/1.1\r\nHost: t\r\n{AUTH}Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")
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
        sock.sendall((f"POST /v1/completions HTTP/1.1\r\nHost: t\r\n{AUTH}Content-Type: application/json\r\n"
                      'Content-Length: 100\r\n\r\n{"model": ').encode())
        start = time.monotonic()
        status, headers, body = read_response(sock)
        assert status == 408 and headers.get("connection") == "close" and time.monotonic() - start < 4
        assert_openai_error(body, "request_timeout")
        closed_after(sock, 5)


def start_body(sock: socket.socket, length: int = 60_000) -> None:
    """Full headers of a completions request, then the first bytes of its body."""
    sock.sendall((f"POST /v1/completions HTTP/1.1\r\nHost: t\r\n{AUTH}Content-Type: application/json\r\n"
                  f"Content-Length: {length}\r\n\r\n" '{"model": ').encode())


def trickle_until_answered(socks: dict[str, socket.socket], every: float, limit: float,
                           chunk: bytes = b" ") -> dict[str, float]:
    """Sends `chunk` of body per `every` seconds on each socket until the server answers (or closes) it;
    returns the seconds each took. Fails past `limit`: the server let the body trickle on."""
    start, answered = time.monotonic(), {}
    while len(answered) < len(socks):
        if time.monotonic() - start > limit:
            pytest.fail(f"still trickling after {limit} s: {sorted(set(socks) - set(answered))}")
        for name, sock in socks.items():
            if name in answered:
                continue
            if select.select([sock], [], [], 0)[0]:
                answered[name] = time.monotonic() - start
                continue
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                answered[name] = time.monotonic() - start
        time.sleep(every)
    return answered


def test_trickled_bodies_are_cut_by_rate_and_deadline(served):
    """Body slowloris: each read comes well within `body_timeout`, so only the rate and the whole-body
    deadline can end it. 10 bytes/s against a 100 bytes/s minimum is cut once `body_timeout` has passed;
    a client that keeps the rate with a body too long for the deadline is cut at the deadline."""
    with limited_server(served, body_timeout=0.6, min_body_rate=100, body_deadline=2.0) as thread:
        slow, steady = connect(thread), connect(thread)
        with slow, steady:
            start_body(slow)
            start_body(steady)
            start = time.monotonic()
            while not select.select([slow], [], [], 0.1)[0] and time.monotonic() - start < 8:
                slow.sendall(b" ")  # 10 bytes/s
                steady.sendall(b" " * 40)  # 400 bytes/s
            took = time.monotonic() - start
            status, headers, body = read_response(slow)
            assert status == 408 and headers.get("connection") == "close" and 0.5 < took < 2, took
            assert "100 bytes/s" in assert_openai_error(body, "request_timeout")["message"]
            closed_after(slow, 5)
            answered = trickle_until_answered({"steady": steady}, 0.1, 6, b" " * 40)["steady"]
            assert 0.5 < took + answered < 4.5, (took, answered)
            status, headers, body = read_response(steady)
            assert status == 408 and headers.get("connection") == "close"
            assert "2 s" in assert_openai_error(body, "request_timeout")["message"]
        assert _wait_for(lambda: not thread.server.server_state.connections)


def test_trickling_attackers_do_not_starve_other_clients(served):
    """22 connections from one address trickle bodies against `max_connections=20`: the per-address cap
    (a quarter of the connections) refuses all but 5 of them, and a client from another address is served
    while they are connected; the held ones are then closed by the body deadline."""
    with limited_server(served, max_connections=20, body_timeout=5, body_deadline=2.5) as thread:
        attackers = []
        try:
            for _ in range(22):  # one after another, each holding its slot with a body in progress
                attackers.append(connect(thread, source="127.0.0.1"))
                start_body(attackers[-1])
            refused = _refused(attackers, expected=17)
            assert len(refused) == 17
            assert all(read_response(s)[0] == 503 for s in refused)
            held = {str(i): s for i, s in enumerate(attackers) if s not in refused}
            assert _legit_request(thread, "127.0.0.2") == 200
            took = trickle_until_answered(held, 0.2, 8)
            assert max(took.values()) < 5, took
        finally:
            for sock in attackers:
                sock.close()


def test_reserve_keeps_slots_for_new_addresses(served):
    """22 trickling connections from 11 addresses (2 each, under the per-address cap): the reserve (an
    eighth of the connections) keeps the last slots for addresses holding no connection, so one more
    client is served while they are all connected."""
    with limited_server(served, max_connections=20, body_timeout=5, body_deadline=3) as thread:
        attackers = []
        try:
            for i in range(22):  # the first of each address, then the seconds
                attackers.append(connect(thread, source=f"127.0.0.{10 + i % 11}"))
                start_body(attackers[-1])
                time.sleep(0.01)
            refused = _refused(attackers, expected=4)
            assert len(refused) == 4 and all(read_response(s)[0] == 503 for s in refused)
            assert _legit_request(thread, "127.0.0.2") == 200
        finally:
            for sock in attackers:
                sock.close()


def _refused(socks: list[socket.socket], expected: int, timeout: float = 2.0) -> list[socket.socket]:
    """The sockets the server answered (a 503 at once), waiting until `expected` did or `timeout`."""
    deadline, ready = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        ready = select.select(socks, [], [], 0.1)[0]
        if len(ready) >= expected:
            time.sleep(0.2)  # and no more
            return select.select(socks, [], [], 0)[0]
    return ready


def _legit_request(thread: ServerThread, source: str) -> int:
    body = json.dumps({"model": MODEL_NAME, "prompt": "Hi", "max_tokens": 1}).encode()
    with connect(thread, source=source) as sock:
        sock.sendall((f"POST /v1/completions HTTP/1.1\r\nHost: t\r\n{AUTH}Content-Type: application/json\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
        status, _, reply = read_response(sock)
        return status


def test_idle_keep_alive_connection_is_closed(served):
    with limited_server(served, keep_alive_timeout=0.5) as thread, connect(thread) as sock:
        sock.sendall(health_request())
        assert read_response(sock)[0] == 200
        assert closed_after(sock, 6) < 4


def test_connection_cap_answers_503(served):
    with limited_server(served, max_connections=2, max_per_client=2, reserve=0) as thread:
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


# ------------------------------------------------------------ cross-origin requests


def _preflight(thread: ServerThread, origin: str) -> tuple[int, dict[str, str], bytes]:
    with connect(thread) as sock:
        sock.sendall((f"OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: t\r\nOrigin: {origin}\r\n"
                      "Access-Control-Request-Method: POST\r\n"
                      "Access-Control-Request-Headers: authorization, content-type\r\n"
                      "Connection: close\r\n\r\n").encode())
        return read_response(sock)


def test_cors_preflight_follows_the_allow_list(served):
    """No origin is allowed by default: a preflight gets 403 with no Access-Control-Allow-Origin, so a web
    page cannot send JSON to the server. An origin on the allow-list gets the preflight headers, and its
    requests carry Access-Control-Allow-Origin; another origin still gets none."""
    with limited_server(served) as thread:
        status, headers, body = _preflight(thread, "https://evil.example")
        assert status == 403 and "access-control-allow-origin" not in headers
        assert_openai_error(body, "cors_origin_not_allowed")
    with limited_server(served, cors_origins=("https://ui.example",)) as thread:
        status, headers, _ = _preflight(thread, "https://ui.example")
        assert status == 204 and headers["access-control-allow-origin"] == "https://ui.example"
        assert "POST" in headers["access-control-allow-methods"]
        assert "authorization" in headers["access-control-allow-headers"].lower()
        assert "Origin" in headers.get("vary", "")
        assert _preflight(thread, "https://evil.example")[0] == 403
        for origin, allowed in (("https://ui.example", True), ("https://evil.example", False)):
            with connect(thread) as sock:
                sock.sendall(f"GET /v1/models HTTP/1.1\r\nHost: t\r\n{AUTH}Origin: {origin}\r\n\r\n".encode())
                status, headers, _ = read_response(sock)
                assert status == 200
                assert headers.get("access-control-allow-origin") == (origin if allowed else None)


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
                                  "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                                  "{\"model\": ").encode())
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
