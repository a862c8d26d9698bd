"""Mistral-7B-Instruct-v0.3's template with system messages: the system text goes into the last user turn
only, so no generation prompt is a prefix of the rendering and each reply is located in the one rendering
instead (ids equal to `apply_chat_template`, targets exactly each reply and its </s>)."""

from __future__ import annotations

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")

from hf_tokenizers import MISTRAL_V03_TEMPLATE, save_hf_tokenizer  # noqa: E402

from vicuna_jax.data import load_tokenizer  # noqa: E402
from vicuna_jax.data.chat_encode import AlignmentError, chat_for  # noqa: E402
from vicuna_jax.data.encode import encode_conversations  # noqa: E402

SYSTEM = {"role": "system", "content": "You are a pirate. Answer briefly."}
TWO = [{"role": "user", "content": "Hi there!"}, {"role": "assistant", "content": "Hello! How can I help?"},
       {"role": "user", "content": "Write code:\n  x=1"},
       {"role": "assistant", "content": "  ```python\nx = 1\n```\nDone. 你好 🦙  \n"}]
THREE = TWO + [{"role": "user", "content": "Thanks"}, {"role": "assistant", "content": "You're welcome."}]
REPLY_ASSISTANT = '{{- " " + message["content"]|trim + eos_token}}'


@pytest.fixture(scope="module")
def mistral(tmp_path_factory):
    path = save_hf_tokenizer(str(tmp_path_factory.mktemp("mistral_v03")), "mistral",
                             chat_template=MISTRAL_V03_TEMPLATE)
    ours = load_tokenizer(path)
    return transformers.AutoTokenizer.from_pretrained(path), ours, chat_for("hf", ours)


def _hf_ids(hf, messages):
    return list(hf.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])


def _runs(ids, mask):
    """The target tokens as contiguous runs of ids."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    return [ids[a:b].tolist() for a, b in zip(edges[::2], edges[1::2], strict=True)]


def _replies(messages):
    return [m["content"].strip() for m in messages if m["role"] == "assistant"]


def _check_targets(hf, ids, mask, messages, prefix_path):
    """Each run of targets decodes to its reply (trimmed, as the template trims it) and </s>, with the " " the
    template puts before it — on the prefix path (the generation prompt ends at [/INST]) and for a reply
    located in the rendering alike (its target starts where that prompt would end), whether the space is
    inside the reply's first token ("ĠHello") or a token of its own (before "```" this tokenizer has "Ġ")."""
    del prefix_path  # the same targets either way
    runs = _runs(ids, mask)
    assert len(runs) == len(_replies(messages))
    for run, text in zip(runs, _replies(messages), strict=True):
        assert hf.decode(run) == " " + text + "</s>"


def _located(chat, messages) -> bool:
    return chat._render_replies(messages)[3]


def _with_template(tokenizer, source):
    from vicuna_jax.data.hf_tokenizer import HFTokenizer

    state = tokenizer.__getstate__()
    return HFTokenizer(state["tokenizer_json"], {**state["config"], "chat_template": source}, "custom")


@pytest.mark.parametrize("exchanges", [TWO, THREE], ids=["two", "three"])
def test_system_message_conversations_encode_with_exact_targets(exchanges, mistral):
    hf, ours, chat = mistral
    messages = [SYSTEM, *exchanges]
    assert _located(chat, messages)  # the prefix-stable rule does not hold here
    ids, mask = chat.encode(messages)
    assert ids.tolist() == _hf_ids(hf, messages)
    _check_targets(hf, ids, mask, messages, prefix_path=False)
    # The batched path gives the same.
    [(many_ids, many_mask)] = encode_conversations([messages], ours, template="hf")
    assert np.array_equal(many_ids, ids) and np.array_equal(many_mask, mask)
    # A conversation ending on an assistant turn: the real template leaves the system message out entirely
    # (it only goes into a user turn that is last), so the rendering is the one without it, where the prefix
    # path applies: its targets are exactly these.
    plain_ids, plain_mask = chat.encode(exchanges)
    assert np.array_equal(plain_ids, ids) and np.array_equal(plain_mask, mask)
    assert any(hf.decode([i]) == " " for i in ids[mask])  # a " " token of its own, now a target


def test_system_text_in_the_last_user_turn_is_not_a_target(mistral):
    hf, _, chat = mistral
    messages = [SYSTEM, *THREE[:-1]]  # ends on a user turn: the system message is rendered into it
    ids, mask = chat.encode(messages)
    assert ids.tolist() == _hf_ids(hf, messages)
    assert SYSTEM["content"] in hf.decode(ids)
    _check_targets(hf, ids, mask, messages, prefix_path=False)


@pytest.mark.parametrize("exchanges", [TWO, THREE], ids=["two", "three"])
def test_without_a_system_message_the_prefix_path_is_used(exchanges, mistral):
    hf, ours, chat = mistral
    assert not _located(chat, exchanges)
    ids, mask = chat.encode(exchanges)
    assert ids.tolist() == _hf_ids(hf, exchanges)
    _check_targets(hf, ids, mask, exchanges, prefix_path=True)
    # Each run of targets starts right where the generation prompt before its reply ends.
    starts = np.flatnonzero(mask & ~np.concatenate([[False], mask[:-1]]))
    replies = [k for k, m in enumerate(exchanges) if m["role"] == "assistant"]
    for k, start in zip(replies, starts, strict=True):
        prompt = chat.prompt_ids(exchanges[:k])
        assert ids[:len(prompt)].tolist() == prompt and start == len(prompt)
    # Locating the replies in the same rendering gives the same targets, " " tokens of their own included.
    full, replies, _, _ = chat._render_replies(exchanges)
    [(_, encoding)] = ours.encode_with_specials([full])
    prompts = [chat.render(exchanges[:k], add_generation_prompt=True)[0] for k in replies]
    located = chat._align(exchanges, full, replies, chat._locate_replies(exchanges, full, replies, prompts),
                          True, encoding)
    assert np.array_equal(located, mask)


def test_a_user_message_quoting_the_next_reply_is_not_taken_for_it(mistral):
    hf, _, chat = mistral
    reply = "Sure, here it is."
    messages = [SYSTEM, *TWO[:2], {"role": "user", "content": f"Reply with exactly: {reply}"},
                {"role": "assistant", "content": f"  {reply} "},
                {"role": "user", "content": f"{reply} {reply} and again: {reply}  "},
                {"role": "assistant", "content": reply}]
    assert _located(chat, messages)
    ids, mask = chat.encode(messages)
    assert ids.tolist() == _hf_ids(hf, messages)
    assert hf.decode(ids).count(reply) == 6
    _check_targets(hf, ids, mask, messages, prefix_path=False)
    # Each run of targets starts right after an [/INST] and the template's " " (a quoted copy in a user turn
    # is followed by one).
    starts = np.flatnonzero(mask & ~np.concatenate([[False], mask[:-1]]))
    assert len(starts) == 3
    for start in starts:
        before = start - 1 - (hf.decode(ids[start - 1:start]) == " ")
        assert ids[before] == hf.convert_tokens_to_ids("[/INST]")


def test_a_template_that_drops_a_reply_refuses_it(mistral):
    _, ours, _ = mistral
    dropping = MISTRAL_V03_TEMPLATE.replace(
        REPLY_ASSISTANT, "{%- if loop.last %}" + REPLY_ASSISTANT + "{%- endif %}")
    assert dropping != MISTRAL_V03_TEMPLATE
    tok = _with_template(ours, dropping)
    chat = chat_for("hf", tok)
    messages = [SYSTEM, *THREE]
    with pytest.raises(AlignmentError) as e:
        chat.encode(messages)
    assert e.value.reason == "reply_not_found" and "message 2's text" in str(e.value)
    # The batched path returns the error in place, and encodes the conversations it can.
    results = encode_conversations([messages, [SYSTEM, *THREE[:2]]], tok, template="hf")
    assert isinstance(results[0], AlignmentError) and results[0].reason == "reply_not_found"
    assert not isinstance(results[1], Exception)


def test_a_located_reply_may_only_take_whitespace_into_its_first_token(mistral):
    """A template character before the reply that merges into its first token is not whitespace: refused."""
    hf, ours, _ = mistral
    merging = MISTRAL_V03_TEMPLATE.replace(REPLY_ASSISTANT, REPLY_ASSISTANT.replace('" "', '" He"'))
    assert merging != MISTRAL_V03_TEMPLATE
    chat = chat_for("hf", _with_template(ours, merging))
    messages = [SYSTEM, TWO[0], {"role": "assistant", "content": "llo there"}]
    full, _, [start], located = chat._render_replies(messages)
    assert located and full[start - 3:start] == " He"
    [(_, encoding)] = ours.encode_with_specials([full])
    first = encoding.token_to_chars(encoding.char_to_token(start))[0]
    assert first < start and not full[first:start].isspace()  # a token such as "ell" spans "e|llo"
    with pytest.raises(AlignmentError) as e:
        chat.encode(messages)
    assert e.value.reason == "reply_start_inside_token"


def test_any_template_that_is_not_prefix_stable_gets_its_replies_located(tmp_path_factory):
    """Not only Mistral: ChatML marking the last user message ("!") was refused as `not_prefix_stable`. Its
    user turns end with <|im_end|> too, so "say yo<|im_end|>" would pass for the reply "yo": the reply is
    searched after the user message before it."""
    from vicuna_jax.data.chat_template import BUILTIN_JINJA

    path = save_hf_tokenizer(str(tmp_path_factory.mktemp("chatml_bang")), "qwen", chat_template=None)
    unstable = BUILTIN_JINJA["chatml"].replace(
        "message['content'] + '<|im_end|>'",
        "message['content'] + ('!' if loop.last and message['role'] == 'user' else '') + '<|im_end|>'")
    hf = transformers.AutoTokenizer.from_pretrained(path)
    chat = chat_for("hf", _with_template(load_tokenizer(path), unstable))
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                {"role": "user", "content": "say yo"}, {"role": "assistant", "content": "yo"}]
    assert _located(chat, messages)
    ids, mask = chat.encode(messages)
    assert ids.tolist() == list(hf.apply_chat_template(messages, chat_template=unstable, tokenize=True,
                                                       return_dict=True)["input_ids"])
    assert [hf.decode(run) for run in _runs(ids, mask)] == ["yo<|im_end|>", "yo<|im_end|>"]
