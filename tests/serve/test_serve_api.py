"""The OpenAI API of the server through the official `openai` client: chat, completions, streaming, stop
strings, n/seed, usage, and API-key checks; greedy replies must equal `vicuna_jax.generate`."""

from __future__ import annotations

import json

import openai
import pytest
from serve_utils import MODEL_NAME, SERVE_KEY, raw_request

from vicuna_jax.data import encode_prompt
from vicuna_jax.generate import SamplingParams

CONVERSATIONS = [
    [{"role": "user", "content": "Tell me about the Vicuna chatbot."}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "Hello. How can I help?"},
     {"role": "user", "content": "Name three llamas."}],
]


def test_models_and_health(served, client):
    assert [m.id for m in client.models.list().data] == [MODEL_NAME]
    assert client.models.retrieve(MODEL_NAME).id == MODEL_NAME
    health = served.health()
    assert health["status"] == "ok" and health["model"] == MODEL_NAME and health["context_len"] == 512
    # Like vLLM, each model entry says its context length, so clients can size their requests.
    status, models = raw_request(served, "GET", "/v1/models")
    assert status == 200 and [m["max_model_len"] for m in models["data"]] == [512]
    assert raw_request(served, "GET", f"/v1/models/{MODEL_NAME}")[1]["max_model_len"] == 512


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["one-turn", "system+multi-turn"])
def test_chat_greedy_equals_generate(client, served, reference, messages):
    ids = encode_prompt(messages, served.tokenizer)
    want = reference.generate([ids], SamplingParams(max_new_tokens=24))[0]
    got = client.chat.completions.create(model=MODEL_NAME, messages=messages, temperature=0, max_tokens=24)
    assert got.object == "chat.completion" and got.model == MODEL_NAME and got.id.startswith("chatcmpl-")
    choice = got.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == want.text
    assert choice.finish_reason == want.finish_reason
    assert got.usage.prompt_tokens == len(ids)
    assert got.usage.completion_tokens == len(want.token_ids) + (want.finish_reason == "stop")


def test_completions_greedy_equals_generate(client, served, reference):
    texts = ["Once upon a time", "The capital of France is"]
    ids = [served.tokenizer.encode(t, bos=True) for t in texts]
    want = [c.text for c in reference.generate(ids, SamplingParams(max_new_tokens=20))]
    got = client.completions.create(model=MODEL_NAME, prompt=texts, temperature=0, max_tokens=20)
    assert got.object == "text_completion"
    assert [c.index for c in got.choices] == [0, 1]
    assert [c.text for c in got.choices] == want
    assert got.usage.prompt_tokens == sum(len(x) for x in ids)
    # Token-id prompts are the same request.
    by_ids = client.completions.create(model=MODEL_NAME, prompt=ids[1], temperature=0, max_tokens=20)
    assert by_ids.choices[0].text == want[1]


def test_chat_stream_chunks(client):
    messages = CONVERSATIONS[0]
    whole = client.chat.completions.create(model=MODEL_NAME, messages=messages, temperature=0, max_tokens=30)
    chunks = list(client.chat.completions.create(model=MODEL_NAME, messages=messages, temperature=0,
                                                 max_tokens=30, stream=True,
                                                 stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) > 1, "the reply should arrive in several chunks"
    assert "".join(content) == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()


def test_completion_stream_and_sse_framing(served, client):
    kw = dict(model=MODEL_NAME, prompt="Hello there", temperature=0, max_tokens=16)
    whole = client.completions.create(**kw).choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(**kw, stream=True) if c.choices)
    assert streamed == whole
    status, raw = raw_request(served, "POST", "/v1/completions", json.dumps({**kw, "stream": True}).encode())
    events = raw.decode().split("\n\n")
    assert status == 200 and events[-2:] == ["data: [DONE]", ""]
    assert all(e.startswith("data: ") for e in events[:-1])


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings(client, stream):
    messages = CONVERSATIONS[0]
    full = client.chat.completions.create(model=MODEL_NAME, messages=messages, temperature=0,
                                          max_tokens=40).choices[0].message.content
    mid = len(full) // 2
    stop = full[mid:mid + 3]
    assert stop.strip() and "\ufffd" not in stop, full
    kw = dict(model=MODEL_NAME, messages=messages, temperature=0, max_tokens=40, stop=["zzz-never", stop])
    if stream:
        chunks = list(client.chat.completions.create(**kw, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        reason = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason][0]
    else:
        got = client.chat.completions.create(**kw)
        text, reason = got.choices[0].message.content, got.choices[0].finish_reason
        assert got.usage.completion_tokens < 40
    assert text == full[:full.find(stop)]
    assert reason == "stop"
    # Text completions take `stop` as a plain string too.
    raw = client.completions.create(model=MODEL_NAME, prompt="Hello", temperature=0, max_tokens=30).choices[0]
    stop2 = raw.text[10:12]
    cut = client.completions.create(model=MODEL_NAME, prompt="Hello", temperature=0, max_tokens=30,
                                    stop=stop2)
    assert cut.choices[0].text == raw.text[:raw.text.find(stop2)] and cut.choices[0].finish_reason == "stop"


def test_max_tokens_and_length(client):
    got = client.chat.completions.create(model=MODEL_NAME, messages=CONVERSATIONS[1], temperature=0,
                                         max_tokens=7, extra_body={"ignore_eos": True})
    assert got.choices[0].finish_reason == "length" and got.usage.completion_tokens == 7


@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_beyond_the_context_is_clamped(client, stream):
    """The judge asks for 2048 tokens whatever the model: a 512-token context gives what the prompt leaves,
    and the reply ends with "length"."""
    prompt = [1] + [7] * 480  # 31 tokens left
    kw = dict(model=MODEL_NAME, prompt=prompt, max_tokens=2048, temperature=0,
              extra_body={"ignore_eos": True})
    if stream:
        chunks = list(client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
        reason = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert reason == ["length"] and chunks[-1].usage.completion_tokens == 31
    else:
        got = client.completions.create(**kw)
        assert got.choices[0].finish_reason == "length" and got.usage.completion_tokens == 31
        # Without max_tokens the budget is the same.
        kw["max_tokens"] = None
        assert client.completions.create(**kw).usage.completion_tokens == 31


def test_max_completion_tokens_beyond_the_context_in_chat(client, served):
    words = 400
    messages = [{"role": "user", "content": "word " * words}]
    while len(encode_prompt(messages, served.tokenizer)) > 490:
        words -= 10
        messages = [{"role": "user", "content": "word " * words}]
    got = client.chat.completions.create(model=MODEL_NAME, messages=messages, temperature=0,
                                         max_completion_tokens=4096, extra_body={"ignore_eos": True})
    prompt_tokens = len(encode_prompt(messages, served.tokenizer))
    assert got.usage.prompt_tokens == prompt_tokens
    assert got.usage.completion_tokens <= 512 - prompt_tokens
    if got.choices[0].finish_reason == "length":  # not a template stop string first
        assert got.usage.completion_tokens == 512 - prompt_tokens


def test_default_valued_features_are_accepted(client):
    """Unsupported features are refused (tests/serve/test_serve_errors.py) unless they ask for the default."""
    got = client.chat.completions.create(model=MODEL_NAME, messages=CONVERSATIONS[0], max_tokens=3,
                                         response_format={"type": "text"}, tool_choice="none", logprobs=False,
                                         presence_penalty=0, frequency_penalty=0, n=1,
                                         extra_body={"min_p": 0.0, "repetition_penalty": 1.0})
    assert got.choices[0].finish_reason in ("length", "stop")


def test_n_choices_and_seed(client):
    kw = dict(model=MODEL_NAME, messages=CONVERSATIONS[0], temperature=1.0, top_p=0.95, max_tokens=12, n=3,
              seed=1234)
    first = client.chat.completions.create(**kw)
    again = client.chat.completions.create(**kw)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert len(set(texts)) == 3, "the choices of one request are sampled independently"
    assert [c.message.content for c in again.choices] == texts, "a seed makes sampling reproducible"
    other = client.chat.completions.create(**{**kw, "seed": 99, "n": 1})
    assert other.choices[0].message.content != texts[0]


def test_api_key_is_checked(served):
    for key, message in [("sk-wrong-key-123456", "Incorrect API key"), (None, "Missing API key")]:
        status, body = raw_request(served, "POST", "/v1/chat/completions", b"{}", key=key)
        assert status == 401 and message in body["error"]["message"]
        assert body["error"]["code"] == "invalid_api_key" and set(body["error"]) == {"message", "type",
                                                                                      "param", "code"}
    bad = openai.OpenAI(base_url=served.base_url, api_key="sk-wrong-key-123456", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.models.list()
    assert e.value.status_code == 401 and "sk-wrong" not in str(e.value)  # the key is never echoed
    # The page itself needs no key (it asks for one); the API behind it does.
    status, page = raw_request(served, "GET", "/", key=None)
    assert status == 200 and b'id="input"' in page
    status, script = raw_request(served, "GET", "/static/chat.js", key=None)
    assert status == 200 and b"/v1/chat/completions" in script
    assert SERVE_KEY.encode() not in page + script
