"""Reading and writing data files: BOMs, one bad record never fatal, streaming, framing errors, file modes."""

from __future__ import annotations

import json
import os
import random
import tracemalloc

import pytest

from vicuna_jax.cli import UserError
from vicuna_jax.data import formats
from vicuna_jax.data.clean import clean_file
from vicuna_jax.data.formats import DataFormatError, read_records, write_jsonl
from vicuna_jax.data.repair import load_html_converter


def conv(rid: str, q: str = "Question?", a: str = "Answer.") -> dict:
    return {"id": rid, "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}


def read(path, **kw) -> list:
    return list(read_records(path, **kw))


def good_ids(records) -> list:
    return [r.value["id"] for r in records if r.error is None]


@pytest.mark.parametrize("layout", ["array", "jsonl"])
def test_utf8_bom_is_skipped(tmp_path, layout):
    rows = [conv("a"), conv("b")]
    text = json.dumps(rows, indent=1) if layout == "array" else "\n".join(json.dumps(r) for r in rows)
    path = tmp_path / f"bom.{layout}"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    records = read(path)
    assert [r.error for r in records] == [None, None] and good_ids(records) == ["a", "b"]
    assert records[0].line == (2 if layout == "array" else 1)


def test_bom_on_every_joined_jsonl_file(tmp_path):
    bom = b"\xef\xbb\xbf"
    path = tmp_path / "joined.jsonl"  # `cat a.jsonl b.jsonl` of two files saved with a BOM
    path.write_bytes(b"".join(bom + json.dumps(conv(x)).encode() + b"\n" for x in "ab"))
    assert good_ids(read(path)) == ["a", "b"]


def test_utf16_file_is_refused_by_name(tmp_path):
    path = tmp_path / "u16.json"
    path.write_bytes("[]".encode("utf-16"))
    with pytest.raises(DataFormatError, match="u16.json is UTF-16"):
        read(path)


@pytest.mark.parametrize("layout", ["array", "jsonl"])
def test_one_non_utf8_byte_rejects_only_its_record(tmp_path, layout):
    rows = [json.dumps(conv(x)).encode() for x in "abc"]
    rows[1] = rows[1].replace(b"Answer.", b"Answer \xff.")
    path = tmp_path / f"latin.{layout}"
    path.write_bytes(b"[\n" + b",\n".join(rows) + b"\n]" if layout == "array" else b"\n".join(rows))
    records = read(path)
    assert good_ids(records) == ["a", "c"]
    bad = records[1]
    assert bad.reason == "not_utf8" and "byte 0xff is not UTF-8" in bad.error
    assert bad.where == f"{path}:{3 if layout == 'array' else 2}" and "Answer \ufffd." in bad.text


@pytest.mark.parametrize("layout", ["array", "jsonl"])
def test_deep_nesting_rejects_only_its_record(tmp_path, layout):
    deep = '{"id": "deep", "conversations": ' + "[" * 100_000 + "]" * 100_000 + "}"
    rows = [json.dumps(conv("a")), deep, json.dumps(conv("b"))]
    path = tmp_path / f"deep.{layout}"
    path.write_text("[" + ",\n".join(rows) + "]" if layout == "array" else "\n".join(rows))
    records = read(path)
    assert good_ids(records) == ["a", "b"]
    assert records[1].reason == "too_deep" and records[1].line == 2


@pytest.mark.parametrize("layout", ["array", "jsonl"])
def test_oversized_record_is_skipped_unread(tmp_path, monkeypatch, layout):
    monkeypatch.setattr(formats, "_BLOCK", 64)  # the big record spans many read blocks
    big = conv("big", a="x" * 5000)
    rows = [conv("a"), big, conv("b")]
    path = tmp_path / f"big.{layout}"
    text = json.dumps(rows, indent=1) if layout == "array" else "\n".join(json.dumps(r) for r in rows)
    path.write_text(text)
    records = read(path, max_record_bytes=1000)
    assert good_ids(records) == ["a", "b"]
    assert records[1].reason == "too_large" and "over the 1,000-byte limit" in records[1].error
    assert records[2].line == (text.count("\n", 0, text.index('"id": "b"')) + (0 if layout == "array" else 1))


@pytest.mark.parametrize("block", [1, 3, 7, 64, 1 << 20])
def test_array_reader_matches_json_load_across_block_boundaries(tmp_path, monkeypatch, block):
    monkeypatch.setattr(formats, "_BLOCK", block)
    rng = random.Random(block)
    alphabet = ['"', "\\", "[", "]", "{", "}", ",", "\n", " ", "é", "漢", "😀", "a", "\u2028"]
    rows = [conv(f"r{k}", q="".join(rng.choices(alphabet, k=rng.randint(0, 30)))) for k in range(40)]
    rows += [1, "two", None, [3, [4]], {"x": {}}]
    text = json.dumps(rows, ensure_ascii=False, indent=rng.choice([None, 2]))
    path = tmp_path / "a.json"
    path.write_text(text, encoding="utf-8")
    records = read(path)
    assert [r.value for r in records] == rows and all(r.error is None for r in records)
    assert [r.index for r in records] == list(range(len(rows)))


@pytest.mark.parametrize(
    "text, message",
    [
        ('[{"id": "a"},\n {"id": "b"', r"x.json:2: .*ends inside an object or array of the record .* line 2"),
        ('[{"id": "a"},\n {"id": "b', r"x.json:2: .*ends inside a string of the record .* line 2"),
        ('[{"id": "a"},\n', r"x.json:2: .*no closing"),
        ('[{"id": "a"}\n {"id": "b"}]', r"x.json:2: .*expected ',' or ']' after the record .* at line 1"),
        ('[{"id": "a"}]\n\n[]', r"x.json:3: .*extra data after the JSON array"),
    ],
)
def test_broken_array_framing_is_fatal_and_names_the_line(tmp_path, text, message):
    path = tmp_path / "x.json"
    path.write_text(text)
    with pytest.raises(DataFormatError, match=message):
        read(path)


def test_trailing_comma_and_whitespace_are_tolerated(tmp_path):
    path = tmp_path / "t.json"
    path.write_text('\n\n  [ {"id": "a"} ,\n {"id": "b"},\n ]  \n\n')
    assert [(r.value["id"], r.line) for r in read(path)] == [("a", 3), ("b", 4)]


@pytest.mark.parametrize("content", [b"", b"\n \n", b"[]", b"\xef\xbb\xbf[ ]\n"])
def test_files_without_records(tmp_path, content):
    path = tmp_path / "empty.json"
    path.write_bytes(content)
    assert read(path) == []


def test_missing_and_directory_inputs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="input file not found"):
        read(tmp_path / "nope.json")
    with pytest.raises(UserError, match="is a directory"):
        read(tmp_path)


@pytest.mark.parametrize("layout", ["array", "jsonl"])
def test_cleaning_streams_input_and_rejects(tmp_path, layout):
    """Peak memory stays far below the file size: records are read one at a time and rejects are written
    as they come, not collected (half the records here are rejected)."""
    n, reply = 80, ("lorem ipsum dolor sit amet " * 5600).strip()  # ~150 KB per record, 12 MB in all
    path = tmp_path / f"big.{layout}"
    with open(path, "w") as f:
        f.write("[\n" if layout == "array" else "")
        for k in range(n):
            a = reply + (" as an AI language model" if k % 2 else f" {k}")
            row = conv(f"r{k}", q=f"Question {k}?", a=a)
            f.write(json.dumps(row) + (",\n" if layout == "array" and k < n - 1 else "\n"))
        f.write("]\n" if layout == "array" else "")
    assert os.path.getsize(path) > 12e6
    load_html_converter()  # its imports are not the cleaning's memory
    tracemalloc.start()
    try:
        report = clean_file(str(path), str(tmp_path / "out.jsonl"), rejects_path=str(tmp_path / "rej.jsonl"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.kept == n // 2 and report.rejected == {"blocked_word": n // 2}
    assert peak < 6e6, f"peak {peak / 1e6:.1f} MB of Python allocations while cleaning a 12 MB file"
    assert sum(1 for _ in open(tmp_path / "rej.jsonl")) == n // 2


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_jsonl(tmp_path / "a.jsonl", [{"x": 1}])
        mode = os.stat(tmp_path / "a.jsonl").st_mode & 0o777
    finally:
        os.umask(old)
    assert mode == 0o644


def test_lone_surrogate_is_written_as_an_escape(tmp_path):
    path = tmp_path / "s.jsonl"
    assert write_jsonl(path, [{"t": "half \ud83d emoji"}, {"t": "ok é"}]) == 2
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines == ['{"t": "half \\ud83d emoji"}', '{"t": "ok é"}']
    assert [r.value for r in read(path)] == [{"t": "half \ud83d emoji"}, {"t": "ok é"}]
