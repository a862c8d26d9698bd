"""Reading and writing conversation files: ShareGPT JSON (a list) or JSONL; ShareGPT or OpenAI records.

Every record comes back with where it came from (file and line), so errors and reject reports can point at it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any


class DataFormatError(ValueError):
    """A file that cannot be read at all (malformed JSON array, unreadable file)."""


@dataclass
class RawRecord:
    """One input record before validation: `line` is 1-based (start of the record in a JSON array)."""

    source: str
    line: int
    index: int
    value: Any  # the parsed JSON, or None when `error` is set
    error: str | None = None

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def read_records(path: str | os.PathLike) -> Iterator[RawRecord]:
    """Yield the records of a JSON array or JSONL file, whichever the file is.

    A malformed JSON array raises DataFormatError with the line and column (nothing can be read past it); a
    malformed JSONL line is yielded with `error` set so the caller can count it and go on.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"input file not found: {path}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    stripped = text.lstrip()
    if stripped.startswith("["):
        yield from _read_json_array(path, text)
        return
    for k, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            yield RawRecord(path, k + 1, k, json.loads(line))
        except json.JSONDecodeError as e:
            yield RawRecord(path, k + 1, k, None, error=f"malformed JSON at column {e.colno}: {e.msg}")


def _read_json_array(path: str, text: str) -> Iterator[RawRecord]:
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    line_starts = _LineIndex(text)
    index = 0
    while True:
        pos = _skip_ws(text, pos)
        if pos >= len(text):
            raise DataFormatError(f"{path}:{line_starts.line(pos)}: malformed JSON: unterminated array")
        if text[pos] == "]":
            break
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{path}:{e.lineno}:{e.colno}: malformed JSON: {e.msg}") from None
        yield RawRecord(path, line_starts.line(pos), index, value)
        index += 1
        pos = _skip_ws(text, end)
        if pos < len(text) and text[pos] == ",":
            pos += 1
        elif pos >= len(text) or text[pos] != "]":
            where = line_starts.line(min(pos, len(text) - 1))
            raise DataFormatError(f"{path}:{where}: malformed JSON: expected ',' or ']' after record {index}")
    tail = _skip_ws(text, pos + 1)
    if tail < len(text):
        raise DataFormatError(f"{path}:{line_starts.line(tail)}: malformed JSON: extra data after the array")


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


class _LineIndex:
    """Character position -> 1-based line number; positions are asked in increasing order (C-speed counts)."""

    def __init__(self, text: str):
        self._text = text
        self._pos = 0
        self._line = 1

    def line(self, pos: int) -> int:
        if pos < self._pos:
            self._pos, self._line = 0, 1
        self._line += self._text.count("\n", self._pos, pos)
        self._pos = pos
        return self._line


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Write records atomically (temp file + rename): a crash never leaves half a file behind."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return n


def conversation_turns(record: Any) -> list:
    """The turn list of a ShareGPT (`conversations`) or OpenAI (`messages`) record; ValueError otherwise."""
    if not isinstance(record, dict):
        raise ValueError(f"record is a {type(record).__name__}, not an object")
    for key in ("conversations", "messages"):
        if key in record:
            turns = record[key]
            if not isinstance(turns, list):
                raise ValueError(f"'{key}' is a {type(turns).__name__}, not a list")
            return turns
    raise ValueError(f"no 'conversations' or 'messages' key (keys: {sorted(record)})")
