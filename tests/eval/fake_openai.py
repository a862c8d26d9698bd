"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests: scripted replies, faults, a request log.

Tests drive our code through the official `openai` package against this server, so retries, timeouts and
parsing are exercised over real sockets. It is reusable by the answer-generation and serving tests: pass any
`reply` function, queue faults with `push`, read `requests`.

The default reply simulates a judge that reads quality markers planted in the answers it is shown
(`<<score=7 turn=1>>`): single prompts get `[[7]]`, pairwise prompts the better of the two positions
(`[[A]]`/`[[B]]`/`[[C]]`; on a five-level prompt `[[A>>B]]` when the markers differ by 4 or more, else
`[[A>B]]`, `[[A=B]]` ...), Vicuna review prompts two scores on the first line. Because the verdict depends
on where each answer landed in the prompt, end-to-end tests check prompt assembly and position swapping.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

MARKER_RE = re.compile(r"<<score=(\d+(?:\.\d+)?) turn=(\d+)>>")
TEST_API_KEY = "sk-test-7f3a9c1e5b2d4f6a8c0e1b3d5f7a9c1e"


def marker(score: float, turn: int = 1) -> str:
    """The quality marker the default judge reads; put it in test answers."""
    return f"<<score={score:g} turn={turn}>>"


@dataclasses.dataclass
class Fault:
    """How to answer one upcoming chat request instead of the normal reply."""

    status: int = 200
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    delay_s: float = 0.0  # sleep before answering (past the client's timeout = a timeout)
    content: str | None = None  # judge text to send instead of the scripted one (malformed judgments)
    raw_body: str | None = None  # send this body verbatim
    trickle_s: float = 0.0  # send the response one byte per trickle_s seconds (every read is prompt)
    trickle_headers: bool = True  # trickle the status line and headers too, not only the body


@dataclasses.dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]  # lower-case names
    body: dict[str, Any]
    received_s: float

    @property
    def user_prompt(self) -> str:
        return "\n".join(m["content"] for m in self.body.get("messages", []) if m.get("role") == "user")

    @property
    def system_prompt(self) -> str:
        return "\n".join(m["content"] for m in self.body.get("messages", []) if m.get("role") == "system")


def _latest_turn_scores(text: str) -> list[float]:
    found = [(float(s), int(t)) for s, t in MARKER_RE.findall(text)]
    if not found:
        return []
    last = max(t for _, t in found)
    return [s for s, t in found if t == last]


def marker_judge(body: dict[str, Any], *, position_bias: bool = False) -> str:
    """A deterministic judge: grades the markers of the latest turn in the order they appear."""
    messages = body.get("messages", [])
    everything = "\n".join(m.get("content", "") for m in messages)
    user = "\n".join(m.get("content", "") for m in messages if m.get("role") == "user")
    scores = _latest_turn_scores(user)
    if "[[A>>B]]" in everything:  # a five-level (Arena-Hard style) prompt
        if len(scores) < 2:
            return "I could not find two replies to compare."
        a, b = scores[0], scores[1]
        better, gap = ("A", "B") if a >= b else ("B", "A"), abs(a - b)
        verdict = "A=B" if gap == 0 else f"{better[0]}{'>>' if gap >= 4 else '>'}{better[1]}"
        return f"My own answer first. Then the two replies.\nMy final verdict is [[{verdict}]]"
    if "[[A]]" in everything:
        if position_bias:
            return "Both replies look reasonable, but the first one reads better to me.\n[[A]]"
        if len(scores) < 2:
            return "I could not find two replies to compare."
        a, b = scores[0], scores[1]
        verdict = "[[A]]" if a > b else "[[B]]" if b > a else "[[C]]"
        return f"Comparing the two replies on helpfulness and accuracy.\nFinal verdict: {verdict}"
    if "[[rating]]" in everything or "[[" in everything:
        if not scores:
            return "There is no reply to grade."
        return f"The reply addresses the question with reasonable detail.\nRating: [[{scores[-1]:g}]]"
    if len(scores) < 2:
        return "I could not find two replies to review."
    return f"{scores[0]:g} {scores[1]:g}\nBoth assistants were reviewed for helpfulness and accuracy."


class FakeOpenAI:
    """Threaded HTTP server speaking enough of the OpenAI API for chat completions and model listing."""

    def __init__(
        self,
        *,
        api_key: str = TEST_API_KEY,
        reply: Callable[[dict[str, Any]], str] | None = None,
        model_ids: tuple[str, ...] = ("gpt-4",),
    ) -> None:
        self.api_key = api_key
        self.reply = reply or marker_judge
        self.model_ids = model_ids
        self._faults: deque[Fault] = deque()
        self._requests: list[RecordedRequest] = []
        self.trickled: list[tuple[int, int]] = []  # (bytes sent, bytes in the response) per trickled reply
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread: threading.Thread | None = None

    # -- control ---------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> FakeOpenAI:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # ends any trickle in progress
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def push(self, *faults: Fault) -> None:
        """Queue faults; each incoming chat request consumes the oldest one."""
        with self._lock:
            self._faults.extend(faults)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self._requests.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    # -- HTTP ------------------------------------------------------------------------------------------
    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = 1 << 16  # headers and body leave in one segment (avoids a 40 ms delayed-ACK stall)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output quiet

            def do_GET(self) -> None:
                if not self._authorized():
                    return
                if self.path.rstrip("/").endswith("/models"):
                    data = [
                        {"id": m, "object": "model", "created": 0, "owned_by": "test"}
                        for m in owner.model_ids
                    ]
                    self._send(200, {"object": "list", "data": data})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    self._send(
                        400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}}
                    )
                    return
                headers = {k.lower(): v for k, v in self.headers.items()}
                with owner._lock:
                    owner._requests.append(RecordedRequest(self.path, headers, body, time.monotonic()))
                    fault = owner._faults.popleft() if owner._faults else None
                if not self._authorized():
                    return
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                    return
                fault = fault or Fault()
                if fault.delay_s:
                    time.sleep(fault.delay_s)
                if fault.raw_body is not None:
                    self._send_raw(fault.status, fault.raw_body.encode(), fault.headers)
                    return
                if fault.status != 200:
                    error = {"error": {"message": f"scripted HTTP {fault.status}", "type": "server_error"}}
                    self._send(fault.status, error, fault.headers)
                    return
                content = fault.content if fault.content is not None else owner.reply(body)
                completion = _completion(body.get("model", "unknown"), content)
                if fault.trickle_s:
                    self._trickle(json.dumps(completion).encode(), fault)
                    return
                self._send(200, completion, fault.headers)

            def _trickle(self, data: bytes, fault: Fault) -> None:
                """A slow server: one byte at a time until done, the client hangs up, or the server stops."""
                head = (
                    f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                    "Connection: close\r\n\r\n"
                ).encode()
                self.close_connection = True
                sent, message = 0, head + data
                try:
                    if not fault.trickle_headers:
                        self.connection.sendall(head)  # unbuffered: nothing is left to flush on hang-up
                        sent = len(head)
                    while sent < len(message) and not owner._stopping.wait(fault.trickle_s):
                        self.connection.sendall(message[sent : sent + 1])
                        sent += 1
                except OSError:
                    pass  # the client hung up
                with owner._lock:
                    owner.trickled.append((sent, len(message)))

            def _authorized(self) -> bool:
                if self.headers.get("Authorization") == f"Bearer {owner.api_key}":
                    return True
                # Echo the presented key back, as some proxies do: callers must keep it out of their logs.
                presented = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                message = f"Incorrect API key provided: {presented}"
                self._send(401, {"error": {"message": message, "type": "invalid_request_error"}})
                return False

            def _send(
                self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
            ) -> None:
                self._send_raw(status, json.dumps(payload).encode(), headers or {})

            def _send_raw(self, status: int, data: bytes, headers: dict[str, str]) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test); nothing to do

        return Handler


def _completion(model: str, content: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
    }
