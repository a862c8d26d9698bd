"""Jinja chat templates: ids equal to `apply_chat_template`, exact assistant-only masks (against
`return_assistant_tokens_mask` with generation blocks, hand-checked spans without), rejections by reason."""

from __future__ import annotations

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")

from hf_tokenizers import (  # noqa: E402
    CHATML_GENERATION_TEMPLATE,
    LLAMA3_TEMPLATE,
    QWEN3_TEMPLATE,
    save_hf_tokenizer,
)

from vicuna_jax.data import encode_conversation, encode_prompt, get_template, load_tokenizer  # noqa: E402
from vicuna_jax.data.chat_encode import AlignmentError, chat_for, stop_token_ids  # noqa: E402
from vicuna_jax.data.chat_template import BUILTIN_JINJA, ChatTemplateError, JinjaTemplate  # noqa: E402

CONVERSATIONS = [
    [{"role": "user", "content": "Hi there!"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Write code:\n  x=1"},
     {"role": "assistant", "content": "```python\nx = 1\n```\nDone. 你好 🦙"}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}],
    [{"role": "user", "content": "List two things"},
     {"role": "assistant", "content": "  Sure.\n\nHere:\n- a\n- b  "},
     {"role": "user", "content": "Thanks"}, {"role": "assistant", "content": "You're welcome."},
     {"role": "user", "content": "One more: ünïcødé"}, {"role": "assistant", "content": "Привет мир!"}],
]


def _tok(tmp_path_factory, style, template="default", name="t"):
    path = save_hf_tokenizer(str(tmp_path_factory.mktemp(name)), style, chat_template=template)
    return transformers.AutoTokenizer.from_pretrained(path), load_tokenizer(path)


def _hf_ids(hf, messages, **kw):
    out = hf.apply_chat_template(messages, tokenize=True, return_dict=True, **kw)
    return out


def _runs(ids, mask):
    """The target tokens as contiguous runs of ids."""
    runs, current = [], []
    for i, m in zip(ids.tolist(), mask.tolist(), strict=True):
        if m:
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


# (tokenizer style, template, expected target text of each assistant reply, given (content, is_last))
CASES = {
    "llama3": ("llama3", LLAMA3_TEMPLATE, lambda c, last: c.strip() + "<|eot_id|>"),
    "qwen2.5": ("qwen", "default", lambda c, last: c + "<|im_end|>"),
    "qwen3": ("qwen", QWEN3_TEMPLATE,
              lambda c, last: ("<think>\n\n</think>\n\n" if last else "") + c + "<|im_end|>"),
    "mistral": ("mistral", "default", lambda c, last: c + "</s>"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_ids_prompts_and_masks_without_generation_blocks(case, tmp_path_factory):
    style, template, expected = CASES[case]
    hf, ours = _tok(tmp_path_factory, style, template, case)
    for messages in CONVERSATIONS:
        if case == "mistral" and messages[0]["role"] == "system":
            with pytest.raises(AlignmentError, match="template_error: .*roles must alternate") as e:
                encode_conversation(messages, ours, template="hf")
            assert e.value.reason == "template_error"
            continue
        ids, mask = encode_conversation(messages, ours, template="hf")
        assert ids.tolist() == _hf_ids(hf, messages)["input_ids"]
        replies = [m["content"] for m in messages if m["role"] == "assistant"]
        runs = _runs(ids, mask)
        assert len(runs) == len(replies)
        for k, (run, content) in enumerate(zip(runs, replies, strict=True)):
            assert hf.decode(run) == expected(content, k == len(replies) - 1), (case, k)
        # The generation prompt of every prefix is what apply_chat_template gives, and a prefix of the ids.
        for k, m in enumerate(messages):
            if m["role"] == "assistant":
                prompt = encode_prompt(messages[:k], ours, template="hf")
                ref = hf.apply_chat_template(messages[:k], tokenize=True, add_generation_prompt=True)
                assert prompt == list(ref["input_ids"] if hasattr(ref, "keys") else ref)
                assert ids[:len(prompt)].tolist() == prompt


def test_generation_block_masks_equal_transformers(tmp_path_factory):
    hf, ours = _tok(tmp_path_factory, "qwen", CHATML_GENERATION_TEMPLATE)
    for messages in CONVERSATIONS:
        ids, mask = encode_conversation(messages, ours, template="hf")
        ref = _hf_ids(hf, messages, return_assistant_tokens_mask=True)
        assert ids.tolist() == ref["input_ids"]
        assert mask.astype(int).tolist() == ref["assistant_masks"]
        assert mask.sum() > 0


@pytest.mark.parametrize("variant", ["short", "long"])
def test_generation_blocks_that_miss_or_overrun_the_end_of_turn(variant, tmp_path_factory):
    """A block without its <|im_end|> gets it added; a block running past it loses the extra tokens."""
    inner = "message.content" if variant == "short" else "message.content + '<|im_end|>\n'"
    after = "'<|im_end|>\n'" if variant == "short" else "''"
    template = CHATML_GENERATION_TEMPLATE.replace("message.content + '<|im_end|>'", inner).replace(
        "{{- '\n' }}", "{{- " + after + " }}")
    assert template != CHATML_GENERATION_TEMPLATE
    hf, ours = _tok(tmp_path_factory, "qwen", template, variant)
    messages = CONVERSATIONS[0]
    ids, mask = encode_conversation(messages, ours, template="hf")
    ref = _hf_ids(hf, messages, return_assistant_tokens_mask=True)
    assert ids.tolist() == ref["input_ids"]
    theirs = np.asarray(ref["assistant_masks"], bool)
    im_end = ours.piece_to_id("<|im_end|>")
    after_im_end = np.roll(ids == im_end, 1)
    if variant == "short":
        assert np.array_equal(mask, theirs | ((ids == im_end) & np.roll(theirs, 1)))
    else:
        assert np.array_equal(mask, theirs & ~after_im_end) and (theirs & after_im_end).any()
    assert [hf.decode(r) for r in _runs(ids, mask)] == [m["content"] + "<|im_end|>" for m in messages
                                                        if m["role"] == "assistant"]


@pytest.mark.parametrize("name,style", [("llama-3", "llama3"), ("chatml", "qwen"), ("mistral", "mistral")])
def test_builtin_templates_for_base_models(name, style, tmp_path_factory):
    """A base model's tokenizer has no template: the built-in one renders as transformers renders it."""
    hf, ours = _tok(tmp_path_factory, style, None, name)
    assert ours.chat_template is None
    messages = CONVERSATIONS[1]
    ids, mask = encode_conversation(messages, ours, template=name)
    ref = hf.apply_chat_template(messages, chat_template=BUILTIN_JINJA[name], tokenize=True, return_dict=True)
    assert ids.tolist() == ref["input_ids"]
    eot = {"llama-3": "<|eot_id|>", "chatml": "<|im_end|>", "mistral": "</s>"}[name]
    assert [hf.decode(r) for r in _runs(ids, mask)] == ["4" + eot]
    assert ours.piece_to_id(eot) in stop_token_ids(ours, name)
    if name == "mistral":  # the system message goes before the first user message
        assert "[INST] Be terse.\n\n2+2? [/INST]4</s>" in hf.decode(ids)
    with pytest.raises(ChatTemplateError, match="'hf': .*has no chat_template"):
        encode_conversation(messages, ours, template="hf")
    # auto: the tokenizer's own template when it has one, else vicuna_v1.1.
    assert chat_for("auto", ours) == get_template("vicuna_v1.1")


def test_builtin_template_needs_its_tokens(tmp_path_factory):
    _, ours = _tok(tmp_path_factory, "qwen", None, "q")
    with pytest.raises(ChatTemplateError, match=r"'llama-3' uses tokens \['<\|start_header_id\|>'"):
        chat_for("llama-3", ours)


def test_vicuna_template_with_an_hf_tokenizer_equals_its_exported_jinja(tmp_path_factory):
    for style in ("llama3", "qwen"):
        hf, ours = _tok(tmp_path_factory, style, None, style)
        exported = get_template("vicuna_v1.1").hf_chat_template(bos=True)
        messages = CONVERSATIONS[0]
        ids, mask = encode_conversation(messages, ours, template="vicuna_v1.1")
        assert ids.tolist() == _hf_ids(hf, messages, chat_template=exported)["input_ids"]
        assert (ids[0] == ours.bos_id) == (style == "llama3")  # Qwen has no BOS: none is rendered either
        assert hf.decode(_runs(ids, mask)[0], skip_special_tokens=False).startswith(" Hello! How")


def test_auto_uses_the_tokenizers_template(tmp_path_factory):
    _, ours = _tok(tmp_path_factory, "llama3")
    auto = encode_conversation(CONVERSATIONS[0], ours, template="auto")
    hf_mode = encode_conversation(CONVERSATIONS[0], ours, template="hf")
    assert all(np.array_equal(a, b) for a, b in zip(auto, hf_mode, strict=True))
    assert get_template("auto") == JinjaTemplate("auto") and get_template("hf").stop_strings == ()


def test_rejections_name_their_reason(tmp_path_factory):
    _, ours = _tok(tmp_path_factory, "qwen", None, "rej")
    injected = [{"role": "user", "content": "say <|im_end|> please"}, {"role": "assistant", "content": "ok"}]
    with pytest.raises(AlignmentError, match="special_token_text: message 0 contains '<\\|im_end\\|>'"):
        encode_conversation(injected, ours, template="chatml")
    # ChatML's generation prompt ends with "\n": a reply starting with "\n" merges with it into one token.
    straddle = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\nHello"}]
    with pytest.raises(AlignmentError) as e:
        encode_conversation(straddle, ours, template="chatml")
    assert e.value.reason == "reply_start_inside_token"
    # A template that renders the last user message differently is not prefix-stable: the reply is located
    # in the full rendering instead (tests/data/test_mistral_system.py has the cases).
    unstable = BUILTIN_JINJA["chatml"].replace(
        "message['content'] + '<|im_end|>'",
        "message['content'] + ('!' if loop.last and message['role'] == 'user' else '') + '<|im_end|>'")
    chat = chat_for(JinjaTemplate("hf"), _with_template(ours, unstable))
    ids, mask = chat.encode([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    assert ours.decode(ids[mask].tolist()) == "yo"


def test_templates_without_an_end_of_turn_token_are_refused(tmp_path_factory):
    _, ours = _tok(tmp_path_factory, "qwen", None, "noeot")
    plain = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
    with pytest.raises(ChatTemplateError, match="cannot find its end-of-turn token.*no special token"):
        chat_for("hf", _with_template(ours, plain))
    with pytest.raises(ChatTemplateError, match="does not compile"):
        chat_for("hf", _with_template(ours, "{% for %}"))


def test_sentencepiece_tokenizer_refuses_jinja_templates_it_lacks_tokens_for():
    from vicuna_jax.data import bundled_tokenizer_path

    sp = load_tokenizer(bundled_tokenizer_path())
    with pytest.raises(ChatTemplateError, match="'llama-3' uses tokens .*<\\|eot_id\\|>.* does not have"):
        encode_conversation(CONVERSATIONS[0], sp, template="llama-3")
    assert chat_for("auto", sp) == get_template("vicuna_v1.1")  # no template of its own


def _with_template(tokenizer, source):
    from vicuna_jax.data.hf_tokenizer import HFTokenizer

    state = tokenizer.__getstate__()
    return HFTokenizer(state["tokenizer_json"], {**state["config"], "chat_template": source}, "custom")
