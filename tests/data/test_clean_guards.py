"""Cleaner guards: linear-time repairs, size and time limits per record, bad HTML, OpenAI list-of-parts."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter

import pytest

from vicuna_jax.data import repair
from vicuna_jax.data.clean import CleanConfig, Cleaner, clean_text
from vicuna_jax.data.formats import RawRecord
from vicuna_jax.data.repair import collapse_blank_lines


def run(records, config=None):
    cleaner = Cleaner(config)
    rejects: list = []
    out = list(cleaner([RawRecord("mem.json", k + 1, k, r) for k, r in enumerate(records)], rejects))
    return out, rejects, cleaner.report


def rec(q, a, rid="r"):
    return {"id": rid, "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}


def returns_within(seconds: float, fn, *args):
    """fn(*args) if it returns within `seconds` (run in a daemon thread, so a hang fails the test instead of
    stalling the suite)."""
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(value=fn(*args)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{getattr(fn, '__name__', fn)} did not return within {seconds} s"
    return result["value"]


@pytest.mark.parametrize(
    "text",
    [
        "```x\n" * 40_000,  # every line opens a block that never closes: the old split regex was quadratic
        "```\n" + "```x\n" * 39_000 + "```\n",
        "a```python\n" * 18_000,
        ("text\n\n\n\n```\ncode\n\n\n\n```\n" * 8_000),
    ],
    ids=["unclosed", "one-block", "inline", "blank-runs"],
)
def test_fence_repairs_are_linear(text):
    assert len(text) <= CleanConfig().max_message_chars
    returns_within(20, clean_text, text, Counter())  # seconds quadratic before; milliseconds now


def test_html_with_many_code_blocks_and_buttons_is_linear():
    html = "<div>" + "<pre><code>x = 1</code></pre><button>Copy code</button>" * 3000 + "</div>"
    md = returns_within(20, repair.html_to_markdown, html)
    assert md.count("```\nx = 1\n```") == 3000 and "Copy code" not in md


def _collapse_by_regex(text: str) -> str:
    """The previous (quadratic) definition, as the reference for what the linear version must return."""
    parts = re.split(r"(^[ \t]*```.*?^[ \t]*```[ \t]*$)", text, flags=re.M | re.S)
    return "".join(p if k % 2 else re.sub(r"\n{3,}", "\n\n", p) for k, p in enumerate(parts))


def test_linear_collapse_matches_the_regex_definition():
    import random

    rng = random.Random(0)
    pieces = ["\n", "\n", "\n", "```", "```py", " ```", "``` ", "````", "x", "  ", "\t"]
    for _ in range(3000):
        text = "".join(rng.choices(pieces, k=rng.randint(0, 14)))
        assert collapse_blank_lines(text) == _collapse_by_regex(text), repr(text)


def test_fence_bomb_message_is_rejected_as_too_large():
    bomb = "```x\n" * 200_000
    out, rejects, report = returns_within(20, run, [rec("q", bomb, "bomb"), rec("Q", "A", "good")])
    assert [r["id"] for r in out] == ["good"] and report.rejected == {"too_large": 1}
    assert rejects[0]["detail"] == "turn 1 has 1,000,000 characters (limit 200,000)"


def test_record_size_limit_counts_all_messages():
    many = {"id": "m", "conversations": [{"from": "human" if k % 2 == 0 else "gpt", "value": "x" * 100_000}
                                        for k in range(12)]}  # fmt: skip
    out, rejects, report = run([many])
    assert report.rejected == {"too_large": 1} and "over 1,000,000 characters" in rejects[0]["detail"]
    out, _, report = run([many], CleanConfig(max_record_chars=0))  # 0 turns the guard off
    assert report.kept == 1


def test_slow_record_is_rejected_and_the_next_one_kept(monkeypatch):
    def slow(text):
        time.sleep(30)  # stands in for html.parser on hostile input (minutes on 100 KB of "<a <a <a")
        return text

    monkeypatch.setattr(repair, "html_to_markdown", slow)
    t0 = time.monotonic()
    out, rejects, report = run([rec("q", "<div>hi</div>", "slow"), rec("Q", "A", "good")],
                               CleanConfig(max_record_seconds=0.5))  # fmt: skip
    assert time.monotonic() - t0 < 20
    assert [r["id"] for r in out] == ["good"] and report.rejected == {"too_slow": 1}
    assert rejects[0]["detail"] == "cleaning took over 0.5 s" and rejects[0]["id"] == "slow"


HOSTILE_HTML = {  # each ~5-25 s in Python 3.11's html.parser (quadratic on an unterminated tag)
    "open_tags": "<div>" + "<a " * 8_000,
    "quoted_gt": "<div>" + "<a x='>' " * 4_000,
    "double_quoted_gt": "<div>" + '<a x=">" ' * 4_000,
    "equals": "<div>" + "<a =" * 8_000,
    "comments": "<div>" + "<!--" * 16_000,
}


@pytest.mark.parametrize("name", sorted(HOSTILE_HTML))
def test_hostile_html_costs_milliseconds_not_the_time_limit(name):
    """An unterminated tag is text (as html.parser made it at the end), found in one pass, not by rescanning
    the rest of the message from every '<'."""
    hostile = HOSTILE_HTML[name]
    t0 = time.perf_counter()
    text = returns_within(30, repair.html_to_markdown, hostile)
    assert time.perf_counter() - t0 < 0.5, name
    assert text.count("<") == hostile.count("<") - 1  # the tail is text; only the <div> was a tag
    out, _, report = run([rec("q", hostile, "h"), rec("Q", "A", "good")], CleanConfig(max_record_seconds=10))
    assert [r["id"] for r in out] == ["h", "good"] and not report.rejected


def test_a_reply_cut_off_inside_a_tag_keeps_its_text():
    assert repair.html_to_markdown("<div><p>Here is the list:</p><ul><li>one</li><li") == (
        "Here is the list:\n\n- one\n<li")
    assert repair.html_to_markdown("<div><p>x &lt; y</p><p title='a>b' <b") == "x < y\n\n<p title='a>b' <b"


@pytest.mark.parametrize("depth", [150, 1000, 15_000])
def test_deeply_nested_html_is_rejected_not_fatal(depth):
    deep = "<div>" * depth + "x" + "</div>" * depth
    out, rejects, report = run([rec("q", deep, "deep"), rec("Q", "A", "good")])
    assert [r["id"] for r in out] == ["good"] and report.rejected == {"bad_html": 1}
    assert rejects[0]["detail"].startswith(f"turn 1: HTML nested {depth} tags deep")


def test_unclosed_inline_tags_are_rejected_not_fatal():
    out, _, report = run([rec("q", "<div>" + "<b>x" * 20_000, "b"), rec("Q", "A", "good")])
    assert [r["id"] for r in out] == ["good"] and report.rejected == {"bad_html": 1}


def test_nested_pre_blocks_do_not_crash():
    out, _, report = run([rec("q", "<div><pre><pre><code>x</code></pre></pre><p>end</p></div>")])
    assert report.kept == 1 and "end" in out[0]["conversations"][1]["value"]


def test_openai_text_parts_are_joined():
    r = {"messages": [
        {"role": "user", "content": [{"type": "text", "text": "Look at this:"},
                                     {"type": "text", "text": "x=1"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Fine."}]},
    ]}  # fmt: skip
    out, _, report = run([r])
    assert out[0]["conversations"][0] == {"from": "human", "value": "Look at this:\nx=1"}
    assert out[0]["conversations"][1] == {"from": "gpt", "value": "Fine."}
    assert report.fixes["text_parts_joined"] == 2


@pytest.mark.parametrize(
    "content, reason, detail",
    [
        ([{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}],
         "unsupported_content",
         "turn 0: content part 1 has type 'image_url'; only 'text' parts can be trained on"),
        ([{"type": "input_audio"}], "unsupported_content", "turn 0: content part 0 has type 'input_audio'"),
        (["plain string part"], "bad_structure", "turn 0: content part 0 is not an object with a 'type'"),
        ([{"type": "text"}], "bad_structure", "turn 0: text part 0 has no string 'text'"),
        ({"type": "text", "text": "a"}, "bad_structure", "turn 0: text is dict, not a string"),
    ],
)  # fmt: skip
def test_other_content_parts_are_rejected_with_a_reason(content, reason, detail):
    r = {"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": "ok"}]}
    out, rejects, report = run([r])
    assert out == [] and report.rejected == {reason: 1} and rejects[0]["detail"].startswith(detail)


def test_lone_surrogates_are_removed_and_counted():
    out, _, report = run([rec("broken \ud83d emoji", "fine")])
    assert out[0]["conversations"][0]["value"] == "broken  emoji"
    assert report.fixes["lone_surrogates_removed"] == 1


def test_an_unforeseen_error_in_one_record_rejects_only_that_record(monkeypatch):
    from vicuna_jax.data import clean

    real = clean.clean_text

    def flaky(text, fixes, html=True):
        if text == "boom":
            raise TypeError("something no check foresaw")
        return real(text, fixes, html)

    monkeypatch.setattr(clean, "clean_text", flaky)
    out, rejects, report = run([rec("q", "boom", "bad"), rec("Q", "A", "good")])
    assert [r["id"] for r in out] == ["good"] and report.rejected == {"failed": 1}
    assert rejects[0]["detail"] == "TypeError: something no check foresaw"
