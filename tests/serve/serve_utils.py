"""Shared pieces of the serving tests (a module with a unique name: every test folder has a conftest)."""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import time
from typing import Any

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
                headers: dict[str, str] | None = None, key: str | None = SERVE_KEY,
                content_type: str | None = "application/json") -> tuple[int, Any]:
    """One HTTP request with exact bytes (the openai client cannot send malformed bodies); JSON reply."""
    conn = http.client.HTTPConnection(served.host, served.port, timeout=60)
    try:
        h = {**({"Content-Type": content_type} if content_type else {}), **(headers or {})}
        if key is not None:
            h["Authorization"] = f"Bearer {key}"
        try:
            conn.request(method, path, body=body, headers=h)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered before the body was sent (413) and closed; the answer is readable
        response = conn.getresponse()
        data = response.read()
        try:
            return response.status, json.loads(data)
        except ValueError:
            return response.status, data
    finally:
        conn.close()
