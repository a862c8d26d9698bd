"""Chat templates: exact FastChat prompt strings, registry, turn formats, and the HF Jinja export."""

from __future__ import annotations

import pytest

from vicuna_jax.data import encode_conversation, encode_prompt, get_template, template_names
from vicuna_jax.data.template import VICUNA_SYSTEM, normalize_turns

SHAREGPT = [
    {"from": "human", "value": "Hi"},
    {"from": "gpt", "value": "Hello!"},
    {"from": "human", "value": "2+2?"},
    {"from": "gpt", "value": "4"},
]
OPENAI = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
]


def test_vicuna_v11_exact_string():
    t = get_template("vicuna_v1.1")
    assert t.name == "vicuna_v1.1" and t.system_message == VICUNA_SYSTEM
    assert VICUNA_SYSTEM == (
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, "
        "detailed, and polite answers to the user's questions."
    )
    assert t.render(SHAREGPT) == VICUNA_SYSTEM + " USER: Hi ASSISTANT: Hello!</s>USER: 2+2? ASSISTANT: 4</s>"
    assert t.render(SHAREGPT[:3], add_generation_prompt=True) == (
        VICUNA_SYSTEM + " USER: Hi ASSISTANT: Hello!</s>USER: 2+2? ASSISTANT:"
    )
    assert (
        t.render(SHAREGPT[:1], system="Be brief.", add_generation_prompt=True)
        == "Be brief. USER: Hi ASSISTANT:"
    )
    # FastChat writes system + sep even for an empty system message.
    assert t.render(SHAREGPT[:2], system="") == " USER: Hi ASSISTANT: Hello!</s>"
    assert t.stop_strings == () and t.generation_cue == "ASSISTANT:"


def test_vicuna_v0_and_llama2_exact_strings():
    v0 = get_template("vicuna_v0")
    assert (
        v0.render(SHAREGPT, system="S")
        == "S\n### Human: Hi\n### Assistant: Hello!\n### Human: 2+2?\n### Assistant: 4\n### "
    )
    assert (
        v0.render(SHAREGPT[:1], system="S", add_generation_prompt=True) == "S\n### Human: Hi\n### Assistant:"
    )
    assert v0.stop_strings == ("###",)
    l2 = get_template("llama-2")
    assert l2.render(SHAREGPT) == "[INST] Hi [/INST] Hello! </s><s>[INST] 2+2? [/INST] 4 </s><s>"
    assert l2.render(SHAREGPT[:3], system="Be kind.", add_generation_prompt=True) == (
        "[INST] <<SYS>>\nBe kind.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] 2+2? [/INST]"
    )


def test_openai_and_sharegpt_turns_are_equivalent():
    for name in template_names():
        t = get_template(name)
        assert t.render(OPENAI) == t.render(SHAREGPT)
    with_system = [{"role": "system", "content": "Be brief."}, *OPENAI[:1]]
    assert (
        get_template("vicuna_v1.1").render(with_system, add_generation_prompt=True)
        == "Be brief. USER: Hi ASSISTANT:"
    )
    # an explicit system argument wins over a system turn
    assert normalize_turns(with_system, system="X")[0] == "X"


def test_registry_errors_list_known_names():
    with pytest.raises(ValueError) as e:
        get_template("alpaca")
    for name in ("vicuna_v1.1", "vicuna_v0", "llama-2"):
        assert name in str(e.value)


@pytest.mark.parametrize(
    "turns, match",
    [
        ([{"from": "robot", "value": "x"}], "turn 0: unknown role 'robot'"),
        ([{"from": "human", "value": 3}], "turn 0: message text must be a string"),
        ([{"speaker": "human"}], "turn 0: no 'from' or 'role' key"),
        ([{"from": "human", "value": "a"}, {"from": "system", "value": "s"}], "turn 1: a system message"),
        (
            [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}],
            "message 1: expected role 'assistant'",
        ),
        ([{"from": "gpt", "value": "a"}], "message 0: expected role 'user'"),
    ],
)
def test_bad_turns_raise_with_position(turns, match):
    with pytest.raises(ValueError, match=match):
        get_template("vicuna_v1.1").render(turns)


@pytest.mark.parametrize("name", ["vicuna_v1.1", "vicuna_v0", "llama-2"])
def test_hf_chat_template_renders_exactly(name, small_tok, hf_auto, tmp_path_factory):
    t = get_template(name)
    hf = hf_auto(small_tok, str(tmp_path_factory.mktemp("hf")))
    cases = [
        (SHAREGPT, None, False),
        (SHAREGPT[:3], None, True),
        (SHAREGPT, "Be brief.", False),
        (SHAREGPT[:1], "", True),
        ([{"from": "human", "value": 'Say </s> and ASSISTANT: "quoted"\n\tok'}], "Multi\nline", True),
    ]
    for turns, system, gen in cases:
        messages = ([{"role": "system", "content": system}] if system is not None else []) + [
            {"role": "user" if x["from"] == "human" else "assistant", "content": x["value"]} for x in turns
        ]
        got = hf.apply_chat_template(
            messages, chat_template=t.hf_chat_template(), tokenize=False, add_generation_prompt=gen
        )
        assert got == t.render(turns, system=system, add_generation_prompt=gen)
        with_bos = hf.apply_chat_template(
            messages, chat_template=t.hf_chat_template(bos=True), tokenize=False, add_generation_prompt=gen
        )
        assert with_bos == "<s>" + got
    with pytest.raises(Exception, match="alternate"):
        hf.apply_chat_template(
            [{"role": "assistant", "content": "x"}], chat_template=t.hf_chat_template(), tokenize=False
        )


def _hf_ids(hf, messages, template, gen):
    out = hf.apply_chat_template(messages, chat_template=template, tokenize=True, add_generation_prompt=gen)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.mark.parametrize("which", ["small", "llama"])
def test_hf_chat_template_token_ids_match_ours(which, small_tok, request, hf_auto, tmp_path_factory):
    """With `bos=True`, HF's tokenized chat template gives exactly our training and generation ids."""
    tok = small_tok if which == "small" else request.getfixturevalue("llama_tok")
    hf = hf_auto(tok, str(tmp_path_factory.mktemp("hf")))
    template = get_template("vicuna_v1.1").hf_chat_template(bos=True)
    conv = [
        {"from": "human", "value": "Write a haiku about autumn, please."},
        {
            "from": "gpt",
            "value": "Leaves drift on cold wind,\nred and gold on quiet paths.\nThe year exhales slow.",
        },
        {"from": "human", "value": "Now translate it to German: Übersetzung!"},
        {"from": "gpt", "value": "Blätter im kalten Wind, rot und golden."},
    ]
    messages = [
        {"role": "user" if x["from"] == "human" else "assistant", "content": x["value"]} for x in conv
    ]
    ids, _ = encode_conversation(conv, tok)
    assert _hf_ids(hf, messages, template, False) == ids.tolist()
    assert _hf_ids(hf, messages[:3], template, True) == encode_prompt(conv[:3], tok)
