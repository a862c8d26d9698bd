"""The OpenAI wire format: request validation with OpenAI-style errors, and response / chunk bodies.

Validation is strict about types (a bool is not a number, a string is not a list) because a silently coerced
parameter gives a client answers to a question it did not ask; every failure names the parameter.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import uuid
from typing import Any

MAX_STOP_STRINGS = 4
MAX_BODY_BYTES = 8 << 20  # the server's default; `limits.RequestLimits` enforces it while the body arrives
MAX_TOKENS = (1 << 31) - 1  # sanity bound; what the context leaves is the real limit (api clamps to it)


class APIError(Exception):
    """An error reply: HTTP status plus OpenAI's `{"error": {message, type, param, code}}` body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def require_json(content_type: str | None) -> None:
    """415 unless the body is declared `application/json` (parameters such as charset allowed). What a web
    page may POST to another origin without a CORS preflight (text/plain, forms, no type) is never read."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        got = repr(content_type[:100]) if content_type else "none"
        raise APIError(415, f"Content-Type must be application/json, got {got}",
                       code="unsupported_media_type")


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object; invalid UTF-8, bad JSON, nesting too deep for the parser,
    non-objects and strings UTF-8 cannot encode (lone surrogate escapes such as "\\ud800", named by their
    field) are 400s. (The size limit is checked while the body arrives: `limits.RequestLimits`.)"""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        message = f"request body is not valid UTF-8 ({e.reason} at byte {e.start})"
        raise bad(message, code="invalid_encoding") from None
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    except (json.JSONDecodeError, ValueError) as e:
        raise bad(f"request body is not valid JSON: {e}", code="invalid_json") from None
    except RecursionError:
        raise bad("request body is nested too deeply", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad(f"request body must be a JSON object, got {type(body).__name__}", code="invalid_json")
    _refuse_lone_surrogates(body)
    return body


def _refuse_lone_surrogates(body: dict[str, Any]) -> None:
    """JSON's `\\uXXXX` escapes can spell half of a surrogate pair, which no UTF-8 text holds: the
    tokenizer (and the reply encoder) would fail on it. Walks the body iteratively (any depth the parser
    took) in document order; a 400 naming the first such field, e.g. `messages[0].content`."""
    stack: list[tuple[Any, str]] = [(body, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            where = _surrogate_at(value)
            if where is not None:
                code_point = f"\\u{ord(value[where]):04x}"
                raise bad(f"'{path}' is not valid Unicode: it holds a lone surrogate ({code_point} at "
                          f"character {where}); send text as UTF-8 or as escaped surrogate pairs", path,
                          "invalid_encoding")
        elif isinstance(value, dict):
            for key in value:
                if _surrogate_at(key) is not None:
                    raise bad(f"a key in '{path or 'the request body'}' holds a lone surrogate", path or None,
                              "invalid_encoding")
            stack.extend((v, f"{path}.{k}" if path else k) for k, v in reversed(value.items())
                         if isinstance(v, str | list | dict))
        elif isinstance(value, list):
            stack.extend((value[i], f"{path}[{i}]") for i in reversed(range(len(value)))
                         if isinstance(value[i], str | list | dict))


def _surrogate_at(text: str) -> int | None:
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _brief(value: Any) -> str:
    """A value for an error message, without recursing into containers (a deeply nested one would raise
    RecursionError)."""
    if isinstance(value, dict) and isinstance(value.get("type"), str):
        return f'an object of type "{value["type"][:40]}"'
    if isinstance(value, list | dict):
        return "an array" if isinstance(value, list) else "an object"
    return json.dumps(value)[:40]


# ------------------------------------------------------------ typed field readers


def get_number(body: dict, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad(f"'{name}' must be a number, got {_brief(value)}", name, "invalid_type")
    if value > hi or value < lo or (lo_open and value == lo):
        left = "(" if lo_open else "["
        raise bad(f"'{name}' must be in {left}{lo:g}, {hi:g}], got {value}", name)
    return float(value)


def get_int(body: dict, name: str, default: int | None, lo: int, hi: int) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"'{name}' must be an integer, got {_brief(value)}", name, "invalid_type")
    if not lo <= value <= hi:
        raise bad(f"'{name}' must be between {lo} and {hi}, got {value}", name)
    return value


def get_bool(body: dict, name: str, default: bool = False) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(f"'{name}' must be true or false, got {_brief(value)}", name, "invalid_type")
    return value


def get_stop(body: dict) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad("'stop' must be a string or a list of strings", "stop", "invalid_type")
    if len(stops) > MAX_STOP_STRINGS:
        raise bad(f"'stop' takes at most {MAX_STOP_STRINGS} strings, got {len(stops)}", "stop")
    return tuple(s for s in stops if s)


@dataclasses.dataclass(frozen=True)
class Sampling:
    """The generation parameters common to chat and text completions."""

    max_tokens: int | None  # None: up to the context
    temperature: float
    top_p: float
    top_k: int
    n: int
    stop: tuple[str, ...]
    seed: int | None
    stream: bool
    include_usage: bool
    ignore_eos: bool


# OpenAI features (and vLLM extensions) this server does not implement, each with the values that mean
# "not used": any other value is refused with a 400 naming it, never silently ignored.
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "response_format": (None, {"type": "text"}),
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),  # "auto" without tools calls none
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "logprobs": (None, False),  # completions take a count: 0 still returns the sampled tokens' logprobs
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "suffix": (None, ""),
    "logit_bias": (None, {}),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "min_p": (None, 0),
    "repetition_penalty": (None, 1),
    "min_tokens": (None, 0),
    "use_beam_search": (None, False),
    "guided_json": (None,),
    "guided_regex": (None,),
    "guided_choice": (None,),
    "guided_grammar": (None,),
}


def refuse_unsupported(body: dict) -> None:
    for name, unused in UNSUPPORTED.items():
        value = body.get(name)
        # `==` alone would take True for 1 and False for 0; a bool must match a bool.
        if not any(value == u and isinstance(value, bool) == isinstance(u, bool) for u in unused):
            raise bad(f"'{name}' is not supported by this server (got {_brief(value)})", name,
                      "unsupported_parameter")
    best_of = body.get("best_of")
    if best_of is not None and best_of != body.get("n", 1):
        raise bad("'best_of' other than n is not supported by this server", "best_of",
                  "unsupported_parameter")
    for name in ("presence_penalty", "frequency_penalty"):
        if get_number(body, name, 0.0, -2.0, 2.0) != 0.0:
            raise bad(f"'{name}' other than 0 is not supported by this server", name, "unsupported_parameter")


def parse_sampling(body: dict, *, max_n: int) -> Sampling:
    """Reads and checks the sampling fields; unsupported features are refused rather than ignored.
    `max_tokens` is only checked to be positive here: the API clamps it to what each prompt leaves."""
    refuse_unsupported(body)
    max_tokens = get_int(body, "max_tokens", None, 1, MAX_TOKENS)
    max_tokens = get_int(body, "max_completion_tokens", max_tokens, 1, MAX_TOKENS)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad("'stream_options' must be an object", "stream_options", "invalid_type")
    stream = get_bool(body, "stream")
    return Sampling(
        max_tokens=max_tokens,
        temperature=get_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=get_number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        top_k=max(get_int(body, "top_k", 0, -1, 1 << 30), 0),  # vLLM extension; -1 also means "all"
        n=get_int(body, "n", 1, 1, max_n),
        stop=get_stop(body),
        seed=get_int(body, "seed", None, -(1 << 63), (1 << 63) - 1),
        stream=stream,
        include_usage=stream and get_bool(options or {}, "include_usage"),
        ignore_eos=get_bool(body, "ignore_eos"),  # vLLM extension, for benchmarks
    )


def parse_messages(body: dict) -> list[dict[str, str]]:
    """OpenAI chat messages as {"role", "content"} with text content (parts of type "text" are joined)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("'messages' must be a non-empty list", "messages", "invalid_type")
    out = []
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise bad(f"messages[{k}] must be an object with a string 'role'", f"messages[{k}]",
                      "invalid_type")
        content = m.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise bad(f"messages[{k}].content: only text parts are supported", f"messages[{k}].content",
                          "unsupported_content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise bad(f"messages[{k}].content must be a string", f"messages[{k}].content", "invalid_type")
        out.append({"role": m["role"], "content": content})
    return out


def parse_prompts(body: dict) -> list[str | list[int]]:
    """`prompt` of /v1/completions: a string, a list of strings, token ids, or a list of token-id lists."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return [list(prompt)]
        if all(isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p)
               for p in prompt):
            return [list(p) for p in prompt]
    raise bad("'prompt' must be a string, a list of strings, or token ids", "prompt", "invalid_type")


# ------------------------------------------------------------ response bodies


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_choice(index: int, text: str, finish_reason: str) -> dict[str, Any]:
    return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": None,
            "finish_reason": finish_reason}


def text_choice(index: int, text: str, finish_reason: str) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}


def completion_body(kind: str, rid: str, model: str, choices: list[dict], use: dict) -> dict[str, Any]:
    obj = "chat.completion" if kind == "chat" else "text_completion"
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": choices,
            "usage": use, "system_fingerprint": None}


def chunk_body(kind: str, rid: str, model: str, created: int, index: int | None, *, text: str | None = None,
               first: bool = False, finish_reason: str | None = None,
               use: dict | None = None) -> dict[str, Any]:
    """One streamed chunk. `index` None makes the final usage-only chunk (empty `choices`)."""
    choices: list[dict[str, Any]] = []
    if index is not None:
        if kind == "chat":
            delta: dict[str, Any] = {"role": "assistant", "content": text or ""} if first else {}
            if not first and text:
                delta["content"] = text
            choices = [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
        else:
            choices = [{"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason}]
    body: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk" if kind == "chat" else
                            "text_completion", "created": created, "model": model, "choices": choices,
                            "system_fingerprint": None}
    if use is not None:
        body["usage"] = use
    return body


def sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()
