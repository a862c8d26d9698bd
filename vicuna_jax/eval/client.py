"""A chat-completions caller for judging: the official `openai` client plus our own retry policy.

The client's built-in retries are turned off so that the policy is ours and visible: exponential backoff
with jitter on 408/409/429/5xx, timeouts, dropped connections and malformed replies, honouring the server's
Retry-After. The timeout is a deadline for the whole request (see deadline.py), not only for each read.
No retry on other 4xx (they would fail again). A rejected key or unknown model stops the whole
run (FatalJudgeError); one judgment that keeps failing is skipped (JudgeRequestError) and retried next run.
The key is read by `openai` from OPENAI_API_KEY, never taken as a flag, and scrubbed from every message.
"""

from __future__ import annotations

import dataclasses
import email.utils
import logging as std_logging
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import openai
from absl import logging

from vicuna_jax.eval.deadline import RequestDeadline

RETRY_STATUS = frozenset({408, 409, 429})
FATAL_STATUS = frozenset({401, 403, 404})
MAX_RETRY_AFTER_S = 600.0


class FatalJudgeError(RuntimeError):
    """Every further request would fail the same way (bad key, unknown model): stop the run."""


class JudgeRequestError(RuntimeError):
    """This request failed for good (after retries, or a non-retryable 4xx)."""


class Cancelled(RuntimeError):
    """The run is stopping (Ctrl-C or a fatal error elsewhere); do not start or retry requests."""


def redactor(secret: str | None) -> Callable[[str], str]:
    """A function that replaces the secret in text; keys shorter than 8 characters are placeholders."""
    if not secret or len(secret) < 8:
        return lambda text: text
    return lambda text: text.replace(secret, "***")


class RedactingFilter(std_logging.Filter):
    """Scrubs the API key from every log record passing a handler (ours, openai's, httpx's)."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self._redact = redactor(secret)

    def filter(self, record: std_logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self._redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def install_redaction(secret: str | None) -> RedactingFilter | None:
    """Attaches a RedactingFilter to the root logger's handlers (absl's included); returns it to remove."""
    if not secret or len(secret) < 8:
        return None
    flt = RedactingFilter(secret)
    for handler in std_logging.getLogger().handlers:
        handler.addFilter(flt)
    return flt


def remove_redaction(flt: RedactingFilter | None) -> None:
    if flt is not None:
        for handler in std_logging.getLogger().handlers:
            handler.removeFilter(flt)


def resolve_api_key(api_key: str | None = None) -> str:
    """The key to use, or a FatalJudgeError that says how to provide one."""
    key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
    if not key:
        raise FatalJudgeError(
            "no API key: set the OPENAI_API_KEY environment variable (keys are never taken as flags so they "
            "stay out of shell history and logs). For a local OpenAI-compatible server without "
            "authentication any value works, e.g. OPENAI_API_KEY=EMPTY, with OPENAI_BASE_URL=http://host:port/v1."
        )
    return key


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5
    backoff_base_s: float = 2.0
    backoff_max_s: float = 60.0

    def delay(self, attempt: int, retry_after_s: float | None, rng: random.Random) -> float:
        """Seconds before retry number attempt+1: the server's Retry-After if it gave one, else
        half of min(max, base * 2**attempt) plus up to the other half at random (jitter spreads the herd)."""
        if retry_after_s is not None:
            return min(max(retry_after_s, 0.0), MAX_RETRY_AFTER_S) + rng.uniform(
                0, 0.05 * self.backoff_base_s
            )
        cap = min(self.backoff_max_s, self.backoff_base_s * 2.0**attempt)
        return cap / 2 + rng.uniform(0, cap / 2)


def retry_after_seconds(headers: Any) -> float | None:
    """Reads `retry-after-ms`, or `retry-after` as seconds or an HTTP date; None if absent or unreadable."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value:
        try:
            return float(value) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        parsed = email.utils.parsedate_tz(value)
        return None if parsed is None else float(email.utils.mktime_tz(parsed) - time.time())


class ChatJudge:
    """Sends one system + user prompt to an OpenAI-compatible chat endpoint and returns the reply text."""

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float = 120.0,
        retry: RetryPolicy = RetryPolicy(),
        stop: threading.Event | None = None,
        seed: int | None = None,
    ) -> None:
        self.model = model
        self.timeout_s = timeout_s
        self.retry = retry
        self.stop = stop or threading.Event()
        key = resolve_api_key(api_key)
        self.redact = redactor(key)
        self._deadline = RequestDeadline()
        self._client = openai.OpenAI(
            api_key=key,
            base_url=base_url,
            timeout=timeout_s,  # per read; the deadline below bounds the whole request
            max_retries=0,
            http_client=self._deadline.http_client(),
        )
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self.requests_sent = 0

    @property
    def base_url(self) -> str:
        """The endpoint, without any user:password part, for logs."""
        url = str(self._client.base_url)
        scheme, sep, rest = url.partition("://")
        return scheme + sep + rest.split("@", 1)[-1] if sep else url

    def complete(self, system_prompt: str, user_prompt: str, *, temperature: float, max_tokens: int) -> str:
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": user_prompt})
        for attempt in range(self.retry.max_retries + 1):
            if self.stop.is_set():
                raise Cancelled("stopping")
            with self._count_lock:
                self.requests_sent += 1
            content, reason, retry_after = self._attempt(messages, temperature, max_tokens)
            if content is not None:
                return content
            if attempt == self.retry.max_retries:
                raise JudgeRequestError(f"gave up after {attempt + 1} attempts; last: {reason}")
            with self._rng_lock:
                delay = self.retry.delay(attempt, retry_after, self._rng)
            logging.warning(
                "judge request %s; retry %d/%d in %.1fs", reason, attempt + 1, self.retry.max_retries, delay
            )
            if self.stop.wait(delay):
                raise Cancelled("stopping")
        raise AssertionError("unreachable")

    def _attempt(
        self, messages: list[dict[str, str]], temperature: float, max_tokens: int
    ) -> tuple[str | None, str, float | None]:
        """One request: (reply, "", None), or (None, why it failed, the server's Retry-After) to retry."""
        with self._deadline.limit(self.timeout_s) as guard:
            try:
                response = self._client.chat.completions.create(
                    model=self.model, messages=messages, temperature=temperature, max_tokens=max_tokens, n=1
                )
                content = response.choices[0].message.content
                if content is None:
                    raise ValueError("reply has no message content")
                return content, "", None
            except openai.APIConnectionError as e:  # APITimeoutError included
                if guard.expired:
                    return None, f"timed out (no complete reply within {self.timeout_s:g} s)", None
                if isinstance(e, openai.APITimeoutError):
                    return None, f"timed out (nothing received for {self.timeout_s:g} s)", None
                return None, f"connection error ({self.redact(str(e.__cause__ or e))})", None
            except openai.APIStatusError as e:
                status = e.status_code
                detail = self.redact(_error_message(e))
                if status in FATAL_STATUS:
                    raise FatalJudgeError(_fatal_hint(status, self.model, self.base_url, detail)) from None
                if status not in RETRY_STATUS and status < 500:
                    raise JudgeRequestError(f"HTTP {status}: {detail}") from None
                return None, f"HTTP {status}: {detail}", retry_after_seconds(e.response.headers)
            except (ValueError, IndexError, AttributeError) as e:  # non-JSON body, no choices
                return None, f"malformed reply ({type(e).__name__}: {self.redact(str(e))[:200]})", None


def _error_message(e: openai.APIStatusError) -> str:
    body = e.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"][:300]
    return str(e.message)[:300]


def _fatal_hint(status: int, model: str, base_url: str, detail: str) -> str:
    if status in (401, 403):
        return (
            f"the judge server at {base_url} rejected the API key (HTTP {status}: {detail}); "
            "check OPENAI_API_KEY"
        )
    return (
        f"HTTP 404 from {base_url} for judge model '{model}' ({detail}); check --judge_model and "
        "OPENAI_BASE_URL / --base_url"
    )
