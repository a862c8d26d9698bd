"""Bad input gets a 4xx with OpenAI's error body naming the parameter, and the server keeps serving."""

from __future__ import annotations

import json

import openai
import pytest
from serve_utils import MODEL_NAME, raw_request

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
USER = [{"role": "user", "content": "Hi"}]


def chat(**fields) -> bytes:
    return json.dumps({"model": MODEL_NAME, "messages": USER, "max_tokens": 4, **fields}).encode()


def completion(**fields) -> bytes:
    return json.dumps({"model": MODEL_NAME, "max_tokens": 4, **fields}).encode()


# (path, body, status, param, code)
CASES = {
    "malformed json": (CHAT, b'{"model": "tiny-vicuna", "messages": [', 400, None, "invalid_json"),
    "empty body": (CHAT, b"", 400, None, "invalid_json"),
    "not an object": (CHAT, b"[1, 2]", 400, None, "invalid_json"),
    "NaN": (CHAT, chat()[:-1] + b', "temperature": NaN}', 400, None, "invalid_json"),
    "invalid utf-8": (CHAT, chat().replace(b'"Hi"', b'"\xff\xfeHi"'), 400, None, "invalid_encoding"),
    "unknown model": (CHAT, chat(model="gpt-4"), 404, "model", "model_not_found"),
    "model missing": (CHAT, json.dumps({"messages": USER}).encode(), 400, "model", "invalid_type"),
    "negative max_tokens": (CHAT, chat(max_tokens=-1), 400, "max_tokens", "invalid_value"),
    "zero max_tokens": (CHAT, chat(max_tokens=0), 400, "max_tokens", "invalid_value"),
    "absurd max_tokens": (CHAT, chat(max_tokens=10**30), 400, "max_tokens", "invalid_value"),
    "string max_tokens": (CHAT, chat(max_tokens="12"), 400, "max_tokens", "invalid_type"),
    "bool max_tokens": (CHAT, chat(max_tokens=True), 400, "max_tokens", "invalid_type"),
    "fractional max_tokens": (CHAT, chat(max_tokens=2.5), 400, "max_tokens", "invalid_type"),
    "string temperature": (CHAT, chat(temperature="hot"), 400, "temperature", "invalid_type"),
    "temperature too high": (CHAT, chat(temperature=5), 400, "temperature", "invalid_value"),
    "top_p zero": (CHAT, chat(top_p=0), 400, "top_p", "invalid_value"),
    "n zero": (CHAT, chat(n=0), 400, "n", "invalid_value"),
    "n above the batch": (CHAT, chat(n=1000), 400, "n", "invalid_value"),
    "stop not strings": (CHAT, chat(stop=[1, 2]), 400, "stop", "invalid_type"),
    "too many stops": (CHAT, chat(stop=list("abcde")), 400, "stop", "invalid_value"),
    "stream not bool": (CHAT, chat(stream="yes"), 400, "stream", "invalid_type"),
    "logprobs": (CHAT, chat(logprobs=True), 400, "logprobs", "unsupported_parameter"),
    "completion logprobs 0": (COMPLETIONS, completion(prompt="Hi", logprobs=0), 400, "logprobs",
                              "unsupported_parameter"),
    "top_logprobs": (CHAT, chat(top_logprobs=2), 400, "top_logprobs", "unsupported_parameter"),
    "json mode": (CHAT, chat(response_format={"type": "json_object"}), 400, "response_format",
                  "unsupported_parameter"),
    "json schema": (CHAT, chat(response_format={"type": "json_schema", "json_schema": {"name": "x"}}), 400,
                    "response_format", "unsupported_parameter"),
    "tools": (CHAT, chat(tools=[{"type": "function", "function": {"name": "f"}}]), 400, "tools",
              "unsupported_parameter"),
    "tool_choice required": (CHAT, chat(tool_choice="required"), 400, "tool_choice", "unsupported_parameter"),
    "functions": (CHAT, chat(functions=[{"name": "f"}]), 400, "functions", "unsupported_parameter"),
    "logit_bias": (CHAT, chat(logit_bias={"5": 10}), 400, "logit_bias", "unsupported_parameter"),
    "best_of": (COMPLETIONS, completion(prompt="Hi", best_of=3), 400, "best_of", "unsupported_parameter"),
    "echo": (COMPLETIONS, completion(prompt="Hi", echo=True), 400, "echo", "unsupported_parameter"),
    "audio output": (CHAT, chat(modalities=["text", "audio"]), 400, "modalities", "unsupported_parameter"),
    "vllm min_p": (CHAT, chat(min_p=0.1), 400, "min_p", "unsupported_parameter"),
    "vllm guided_json": (CHAT, chat(guided_json={"type": "object"}), 400, "guided_json",
                         "unsupported_parameter"),
    "no messages": (CHAT, chat(messages=[]), 400, "messages", "invalid_type"),
    "message not an object": (CHAT, chat(messages=["hi"]), 400, "messages[0]", "invalid_type"),
    "content not text": (CHAT, chat(messages=[{"role": "user", "content": 3}]), 400, "messages[0].content",
                         "invalid_type"),
    "image content": (CHAT, chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}]), 400,
                      "messages[0].content", "unsupported_content"),
    "unknown role": (CHAT, chat(messages=[{"role": "robot", "content": "x"}]), 400, "messages",
                     "invalid_value"),
    "ends with assistant": (CHAT, chat(messages=USER + [{"role": "assistant", "content": "x"}]), 400,
                            "messages", "invalid_value"),
    "roles do not alternate": (CHAT, chat(messages=USER + USER), 400, "messages", "invalid_value"),
    "chat prompt too long": (CHAT, chat(messages=[{"role": "user", "content": "word " * 700}]), 400,
                             "messages", "context_length_exceeded"),
    "completion prompt too long": (COMPLETIONS, completion(prompt=[5] * 512), 400, "prompt",
                                   "context_length_exceeded"),
    "token id out of range": (COMPLETIONS, completion(prompt=[1, 10**6]), 400, "prompt", "invalid_value"),
    "prompt wrong type": (COMPLETIONS, completion(prompt={"a": 1}), 400, "prompt", "invalid_type"),
    "unknown route": ("/v1/embeddings", b"{}", 404, None, "not_found"),
    "body too large": (CHAT, b" " * (9 << 20), 413, None, "request_too_large"),
    # Nesting past the parser's recursion limit: a 400, not a 500 with a RecursionError traceback.
    "deeply nested json": (CHAT, chat()[:-1] + b', "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, None,
                           "invalid_json"),
    "deeply nested messages": (CHAT, chat(messages=None)[:-1].replace(b'"messages": null', b'"messages": ' +
                                                                        b"{\"a\": " * 50_000 + b"1" +
                                                                        b"}" * 50_000) + b"}",
                               400, None, "invalid_json"),
    # Nesting the parser takes, in a field whose error message shows the value.
    "nested max_tokens": (CHAT, chat(max_tokens=None).replace(b'"max_tokens": null', b'"max_tokens": ' +
                                                               b"[" * 900 + b"]" * 900), 400, "max_tokens",
                          "invalid_type"),
    # A lone surrogate (a JSON escape UTF-8 cannot encode) is bad input naming its field, not a 500.
    "lone surrogate in a message": (CHAT, chat(messages=[{"role": "user", "content": "\ud800 hi"}]), 400,
                                    "messages[0].content", "invalid_encoding"),
    "lone surrogate in a system message": (CHAT, chat(messages=[{"role": "system", "content": "be \udfff"},
                                                                *USER]), 400, "messages[0].content",
                                           "invalid_encoding"),
    "lone surrogate in a content part": (CHAT, chat(messages=[{"role": "user", "content": [
        {"type": "text", "text": "\ud83d"}]}]), 400, "messages[0].content[0].text", "invalid_encoding"),
    "lone surrogate in a prompt": (COMPLETIONS, completion(prompt="\ud800 hi"), 400, "prompt",
                                   "invalid_encoding"),
    "lone surrogate in a prompt list": (COMPLETIONS, completion(prompt=["ok", "x\udc00"]), 400, "prompt[1]",
                                        "invalid_encoding"),
    "lone surrogate in the model": (CHAT, chat(model="\ud800"), 400, "model", "invalid_encoding"),
    "lone surrogate in a stop": (CHAT, chat(stop=["\udbff"]), 400, "stop[0]", "invalid_encoding"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_request_gets_openai_error(served, case):
    path, body, status, param, code = CASES[case]
    got_status, got = raw_request(served, "POST", path, body)
    assert got_status == status, got
    assert set(got) == {"error"} and set(got["error"]) == {"message", "type", "param", "code"}
    assert got["error"]["type"] == "invalid_request_error"
    assert (got["error"]["param"], got["error"]["code"]) == (param, code)
    assert isinstance(got["error"]["message"], str) and got["error"]["message"]


def test_lone_surrogate_escape_is_what_the_cases_send():
    assert b'"\\ud800 hi"' in CASES["lone surrogate in a message"][1]  # the escape itself, not UTF-8 bytes


@pytest.mark.parametrize("content_type", ["text/plain", "text/plain;charset=UTF-8", None,
                                          "application/x-www-form-urlencoded", "multipart/form-data; b=x",
                                          "application/jsonp"])
def test_body_must_be_declared_json(served, content_type):
    """What a web page may POST cross-origin without a CORS preflight (text/plain, a form, no type) is
    refused with 415 before the body is parsed; only application/json is read."""
    headers = {"Content-Type": content_type} if content_type else {}
    status, got = raw_request(served, "POST", COMPLETIONS, completion(prompt="Hi"), headers=headers,
                              content_type=None)
    assert status == 415, got
    assert (got["error"]["code"], got["error"]["param"]) == ("unsupported_media_type", None)
    assert "application/json" in got["error"]["message"]


def test_json_content_type_with_charset_is_served(served):
    status, got = raw_request(served, "POST", COMPLETIONS, completion(prompt="Hi", max_tokens=1),
                              headers={"Content-Type": "Application/JSON; charset=utf-8"})
    assert status == 200, got


def test_wrong_method(served):
    status, got = raw_request(served, "GET", CHAT)
    assert status == 405 and got["error"]["code"] == "method_not_allowed"


def test_openai_client_sees_typed_errors_and_server_keeps_serving(served, client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4", messages=USER)
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "x " * 900}])
    assert e.value.code == "context_length_exceeded" and "512" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL_NAME, prompt="hi", max_tokens=-3)
    assert e.value.param == "max_tokens"
    # A long prompt still fits when the reply budget is clamped to what the context leaves.
    long = client.completions.create(model=MODEL_NAME, prompt=[1] + [7] * 500, max_tokens=512, temperature=0,
                                     extra_body={"ignore_eos": True})
    assert long.choices[0].finish_reason == "length" and long.usage.completion_tokens == 11
    ok = client.chat.completions.create(model=MODEL_NAME, messages=USER, max_tokens=3)
    assert ok.choices[0].message.role == "assistant"
    health = served.wait_idle()
    assert health["active"] == 0 and health.get("errors", 0) == 0
