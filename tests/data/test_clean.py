"""Cleaning: HTML -> Markdown, artefacts, structure checks, filters, dedup, reject accounting, CLI."""

from __future__ import annotations

import json
import os

import pytest

from vicuna_jax.data import clean
from vicuna_jax.data.clean import CleanConfig, Cleaner, clean_file, clean_text, html_to_markdown
from vicuna_jax.data.formats import DataFormatError, RawRecord, read_records

SAMPLE = os.path.join(os.path.dirname(clean.__file__), "..", "assets", "sharegpt_sample.json")


def raw(value, line=1):
    return RawRecord("mem.json", line, line - 1, value)


def rec(*texts, rid="r", roles=("human", "gpt")):
    return {"id": rid, "conversations": [{"from": roles[k % 2], "value": t} for k, t in enumerate(texts)]}


def run(records, config=None):
    cleaner = Cleaner(config)
    rejects: list = []
    out = list(cleaner([raw(r, k + 1) for k, r in enumerate(records)], rejects))
    return out, rejects, cleaner.report


SHAREGPT_HTML = (
    '2 / 2<div class="markdown prose w-full break-words dark:prose-invert light"><p>Use <code>sorted</code> '
    "and <strong>never</strong> mutate:</p><ol><li>first</li><li>second &amp; third</li></ol>"
    '<pre><div class="bg-black mb-4 rounded-md"><div class="flex items-center"><span class="">python</span>'
    '<button class="flex ml-auto gap-2"><svg></svg>Copy code</button></div><div class="p-4">'
    '<code class="!whitespace-pre hljs language-python">def f(xs):\n    return sorted(xs)  # a &lt; b\n\n\n'
    "print(f([2, 1]))</code></div></div></pre><p>Done.</p></div>"
)


def test_sharegpt_html_becomes_markdown():
    fixes = __import__("collections").Counter()
    md = clean_text(SHAREGPT_HTML, fixes)
    assert md == (
        "Use `sorted` and **never** mutate:\n\n1. first\n2. second & third\n\n"
        "```python\ndef f(xs):\n    return sorted(xs)  # a < b\n\n\nprint(f([2, 1]))\n```\n\nDone."
    )
    assert fixes["html_converted"] == 1 and fixes["regenerate_counter_stripped"] == 1
    assert "Copy code" not in html_to_markdown(SHAREGPT_HTML)


@pytest.mark.parametrize(
    "text, want",
    [
        ("```pythonCopy code\nx = 1\n```", "```python\nx = 1\n```"),
        ("Here:```js\nlet a;\n```", "Here:\n```js\nlet a;\n```"),
        ("Unclosed:\n```\ncode", "Unclosed:\n```\ncode\n```"),
        ("a\n\n\n\nb\n```\nx\n\n\n\ny\n```", "a\n\nb\n```\nx\n\n\n\ny\n```"),
        ("1 / 3Sure, here it is.", "Sure, here it is."),
        ("1 / 2 cup of sugar", "1 / 2 cup of sugar"),  # not a regenerate counter
        ("ok\x00\x07 fine\r\nnext", "ok fine\nnext"),
        ("a < b and c > d", "a < b and c > d"),  # no tags: left alone
    ],
)
def test_text_repairs(text, want):
    assert clean_text(text, __import__("collections").Counter()) == want


@pytest.mark.parametrize(
    "record, reason",
    [
        ("just a string", "bad_structure"),
        ({"id": "x"}, "bad_structure"),
        ({"id": "x", "conversations": "hi"}, "bad_structure"),
        ({"id": "x", "conversations": ["hi"]}, "bad_structure"),
        ({"id": "x", "conversations": [{"from": "human", "value": None}]}, "bad_structure"),
        (rec("a", "b", roles=("human", "robot")), "unknown_role"),
        (
            {"id": "x", "conversations": [{"from": "human", "value": "a"}, {"from": "system", "value": "s"}]},
            "misplaced_system",
        ),
        (
            {
                "id": "x",
                "conversations": [
                    {"from": "human", "value": "a"},
                    {"from": "human", "value": "b"},
                    {"from": "gpt", "value": "c"},
                ],
            },
            "not_alternating",
        ),
        (rec(" ", "\u200b\n"), "empty_message"),
        (rec("\x00\x01", "\x02"), "empty_message"),
        (rec("only a question"), "too_short"),
        (rec("Tell me", "As an AI language model, I cannot."), "blocked_word"),
        (rec("Do it", "I'm sorry, but I cannot do that."), "blocked_reply"),
        (rec("Digits", "The answer is 7777777777777777777777777777777777."), "repeated_digits"),
    ],
)
def test_each_reject_reason(record, reason):
    out, rejects, report = run([record])
    assert out == [] and report.rejected == {reason: 1} and report.total == 1 and report.kept == 0
    assert rejects[0]["reason"] == reason and rejects[0]["where"] == "mem.json:1" and rejects[0]["detail"]


def test_html_in_text_or_code_is_not_converted():
    reply = 'Use a div:\n\n```html\n<div class="box"><p>hi</p></div>\n```\n\nThat is <b>all</b>.'
    question = "<div> or <span>, which one?"
    out, _, report = run([rec(question, reply)])
    assert out[0]["conversations"] == rec(question, reply)["conversations"]
    assert report.fixes["html_converted"] == 0
    out, _, _ = run(out)  # cleaning is idempotent
    assert out[0]["conversations"] == rec(question, reply)["conversations"]


def test_fixes_keep_the_record():
    r = {
        "id": "x",
        "conversations": [
            {"from": "gpt", "value": "Welcome!"},
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hey"},
            {"from": "human", "value": " "},
            {"from": "gpt", "value": "Pardon?"},
            {"from": "human", "value": "Bye"},
        ],
    }
    out, rejects, report = run([r])
    assert not rejects
    assert out == [rec("Hi", "Hey", rid="x")]
    assert report.fixes["leading_assistant_dropped"] == 1 and report.fixes["trailing_user_dropped"] == 1
    assert report.fixes["empty_exchange_dropped"] == 1


def test_dedup_by_id_and_first_exchange_and_flags():
    records = [
        rec("Hi", "Hello", rid="a"),
        rec("Other", "Thing", rid="a"),
        rec("  hi ", "HELLO", rid="b"),
        rec("Hi", "Hello there", rid="c"),
    ]
    out, _, report = run(records)
    assert [r["id"] for r in out] == ["a", "c"]
    assert report.rejected == {"duplicate_id": 1, "duplicate_exchange": 1}
    out, _, _ = run(records, CleanConfig(dedup=False))
    assert len(out) == 4
    out, _, _ = run([rec("Digits", "1" * 40)], CleanConfig(max_repeated_digits=0))
    assert len(out) == 1
    out, _, report = run(
        [rec("Tell me about bananas", "Bananas are yellow.")], CleanConfig(blocked_words=("banana",))
    )
    assert report.rejected == {"blocked_word": 1}


def test_openai_messages_and_system_are_kept():
    r = {
        "messages": [
            {"role": "system", "content": "Terse."},
            {"role": "user", "content": "Q"},
            {"role": "assistant", "content": "A"},
        ]
    }
    out, _, _ = run([r])
    assert out[0]["conversations"] == [
        {"from": "system", "value": "Terse."},
        {"from": "human", "value": "Q"},
        {"from": "gpt", "value": "A"},
    ]
    assert out[0]["id"] == "mem.json:1"  # records without an id are named by where they came from


def test_language_filter():
    pytest.importorskip("langid")
    records = [
        rec(
            "Can you explain how photosynthesis works in plants?",
            "Plants use light to make sugar from water.",
            rid="en",
        ),
        rec(
            "Kannst du mir erklären, wie die Photosynthese bei Pflanzen funktioniert?",
            "Pflanzen nutzen Licht, um aus Wasser und Kohlendioxid Zucker herzustellen.",
            rid="de",
        ),
    ]
    out, _, report = run(records, CleanConfig(keep_languages=("en",)))
    assert [r["id"] for r in out] == ["en"] and report.rejected == {"language": 1}


def test_malformed_record_in_a_json_array_is_one_reject(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[\n {"id": "a", "conversations": [{"from": "human", "value": "Q"}, '
                   '{"from": "gpt", "value": "A"}]},\n {"id": "b",\n  oops}\n]\n')
    out, rej = tmp_path / "out.jsonl", tmp_path / "rej.jsonl"
    report = clean_file(str(bad), str(out), rejects_path=str(rej))
    assert report.kept == 1 and report.rejected == {"malformed_json": 1}
    (reject,) = [json.loads(x) for x in open(rej)]
    assert reject["where"] == f"{bad}:3" and reject["detail"].startswith("line 4: malformed JSON")
    assert reject["text"] == '{"id": "b",\n  oops}'


def test_truncated_json_array_names_line_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[\n {"id": "a", "conversations": []},\n {"id": "b", "conversations": [{"from": "hum')
    out = tmp_path / "out.jsonl"
    with pytest.raises(DataFormatError, match=r"bad.json:3: malformed JSON array: .*starts at line 3"):
        clean_file(str(bad), str(out))
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(DataFormatError, match="input file not found: .*missing.json"):
        list(read_records(tmp_path / "missing.json"))


def test_jsonl_with_bad_lines_is_counted_not_fatal(tmp_path):
    src = tmp_path / "in.jsonl"
    lines = [
        json.dumps(rec("Q1", "A1", rid="1")),
        "{not json",
        "",
        json.dumps(rec("Q2", "A2", rid="2")),
        "[1,",
    ]
    src.write_text("\n".join(lines) + "\n")
    report = clean_file(str(src), str(tmp_path / "o.jsonl"), rejects_path=str(tmp_path / "rej.jsonl"))
    assert report.kept == 2 and report.rejected == {"malformed_json": 2}
    rejects = [json.loads(x) for x in open(tmp_path / "rej.jsonl")]
    assert [r["where"] for r in rejects] == [f"{src}:2", f"{src}:5"]


def test_bundled_sample_rejects_exactly_the_planted_bad_records(tmp_path, capsys):
    out, rej = tmp_path / "clean.jsonl", tmp_path / "rejects.jsonl"
    assert clean.main([f"--input={SAMPLE}", f"--output={out}", f"--rejects={rej}"]) == 0
    table = capsys.readouterr().out
    assert "rejected: unknown_role" in table and "fixed: html_converted" in table
    reasons = {json.loads(x)["id"]: json.loads(x)["reason"] for x in open(rej)}
    assert reasons == {
        "bad_role": "unknown_role",
        "bad_empty_turn": "empty_message",
        "bad_not_alternating": "not_alternating",
        "bad_only_assistant": "too_short",
        "bad_no_conversations": "bad_structure",
        "bad_value_type": "bad_structure",
        "bad_blocked": "blocked_word",
        "bad_digits": "repeated_digits",
        "bad_nonprintable": "empty_message",
        "sample_0000": "duplicate_id",
        "bad_duplicate_exchange": "duplicate_exchange",
    }
    kept = [json.loads(x) for x in open(out)]
    assert len(kept) > 900 and any(r["id"] == "fix_leading_gpt" for r in kept)
    text = "\n".join(t["value"] for r in kept for t in r["conversations"])
    for artefact in ("<div", "<p>", "Copy code", "&lt;", "&amp;"):
        assert artefact not in text
    assert "```python\n" in text and "Привет" in text and "你好" in text
    assert list(Cleaner()(read_records(out))) == kept  # cleaning cleaned data changes nothing
