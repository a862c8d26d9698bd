"""Reading and writing conversation files: ShareGPT JSON (a list) or JSONL; ShareGPT or OpenAI records.

Records are streamed: a JSONL file is read line by line and a JSON array element by element (`_ArrayReader`),
so memory holds one record (and one read block), never the file. A record that cannot be read (not UTF-8,
malformed, nested too deeply for Python's parser, over `max_record_bytes`, holding an integer longer than
Python converts) comes back with `error` and a
`reason` set, so the caller counts it and goes on; only a file whose framing is broken (no array closing
bracket, an unterminated record, text between records) stops reading, with a `DataFormatError` naming the
file and line. A UTF-8 byte-order mark is skipped, at the start of the file and of any JSONL line (files
joined with `cat`). Every record says where it came from (file and line), for errors and reject reports.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from vicuna_jax.cli import UserError
from vicuna_jax.fileio import atomic_open

BOM = b"\xef\xbb\xbf"
_OTHER_BOMS = {b"\xff\xfe": "UTF-16 (little-endian)", b"\xfe\xff": "UTF-16 (big-endian)"}
MAX_RECORD_BYTES = 16 << 20  # one record's JSON text; larger ones are skipped unread (reason too_large)
_BLOCK = 1 << 20


class DataFormatError(UserError):
    """A file that cannot be read at all (missing, a directory, broken JSON array framing)."""


@dataclass
class RawRecord:
    """One input record before validation: `line` is 1-based (start of the record in a JSON array)."""

    source: str
    line: int
    index: int  # 0-based position among the file's records
    value: Any  # the parsed JSON, or None when `error` is set
    error: str | None = None
    reason: str = "malformed_json"  # why the record could not be read (when `error` is set)
    text: str | None = None  # the raw text of an unreadable record (for the rejects file)

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def check_input_file(path: str | os.PathLike) -> str:
    """The path, if it names a readable file; a DataFormatError saying what is wrong otherwise."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataFormatError(f"input file not found: {path}")
    if os.path.isdir(path):
        raise DataFormatError(f"input {path} is a directory, not a data file")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise DataFormatError(f"cannot read {path}: {e.strerror}") from None
    return path


def check_output_dir(directory: str | os.PathLike) -> str:
    """Create `directory` if needed and check that files can be written in it (UserError otherwise)."""
    directory = os.path.abspath(os.fspath(directory))
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise UserError(f"cannot write to the output directory {directory}: {e.strerror or e}") from None
    return directory


def os_error_message(e: OSError) -> str:
    """One line for an OSError met while reading or writing data files."""
    name = e.filename if e.filename is not None else ""
    return f"{name}: {e.strerror}" if name and e.strerror else str(e)


def read_records(path: str | os.PathLike, max_record_bytes: int = MAX_RECORD_BYTES) -> Iterator[RawRecord]:
    """Yield the records of a JSON array or JSONL file, whichever the file is (a first non-blank `[` means
    an array), one at a time."""
    path = check_input_file(path)
    with open(path, "rb") as f:
        first = _first_byte(path, f)
        f.seek(0)
        if first == b"[":
            yield from _ArrayReader(path, f, max_record_bytes).records()
        elif first:
            yield from _read_jsonl(path, f, max_record_bytes)


def _first_byte(path: str, f: IO[bytes]) -> bytes:
    """The first byte that is not whitespace or a UTF-8 BOM (b"" for an empty file)."""
    head = f.read(4)
    for bom, name in _OTHER_BOMS.items():
        if head.startswith(bom):
            raise DataFormatError(f"{path} is {name} text; convert it to UTF-8")
    f.seek(len(BOM) if head.startswith(BOM) else 0)
    while block := f.read(_BLOCK):
        stripped = block.lstrip(b" \t\r\n")
        if stripped:
            return stripped[:1]
    return b""


def _read_jsonl(path: str, f: IO[bytes], limit: int) -> Iterator[RawRecord]:
    index = 0
    lineno = 0
    while line := f.readline(limit + 1):
        lineno += 1
        if len(line) > limit and not line.endswith(b"\n"):
            size = len(line) + _skip_line(f)
            yield _too_large(path, lineno, index, size, limit)
            index += 1
            continue
        if line.startswith(BOM):
            line = line[len(BOM) :]
        if not line.strip():
            continue
        yield parse_record(path, lineno, index, line)
        index += 1


def _skip_line(f: IO[bytes]) -> int:
    skipped = 0
    while block := f.readline(_BLOCK):
        skipped += len(block)
        if block.endswith(b"\n"):
            break
    return skipped


def _too_large(path: str, line: int, index: int, size: int, limit: int) -> RawRecord:
    error = f"record is {size:,} bytes, over the {limit:,}-byte limit"
    return RawRecord(path, line, index, None, error=error, reason="too_large")


def parse_record(path: str, line: int, index: int, data: bytes) -> RawRecord:
    """Decode and parse one record's bytes, which start on `line` of `path`; failures become errors."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        bad_line = line + data.count(b"\n", 0, e.start)
        return RawRecord(path, line, index, None, error=f"line {bad_line}: byte 0x{data[e.start]:02x} is not "
                         "UTF-8", reason="not_utf8", text=data.decode("utf-8", "replace"))  # fmt: skip
    try:
        return RawRecord(path, line, index, json.loads(text))
    except json.JSONDecodeError as e:
        error, reason = f"line {line + e.lineno - 1}: malformed JSON: {e.msg}", "malformed_json"
    except RecursionError:
        error = f"JSON nested too deeply (Python parses about {sys.getrecursionlimit()} levels)"
        reason = "too_deep"
    except ValueError:  # valid JSON, but an integer longer than Python converts (sys.get_int_max_str_digits)
        error, reason = _long_number(text, line), "number_too_long"
    except MemoryError:
        error, reason = f"record of {len(data):,} bytes does not fit in memory when parsed", "too_large"
    return RawRecord(path, line, index, None, error=error, reason=reason, text=text)


def _long_number(text: str, line: int) -> str:
    """Where the first integer over Python's int-string limit (4,300 digits by default) is, and its size."""
    limit = sys.get_int_max_str_digits()
    m = re.search(rf"\d{{{limit + 1},}}", text) if limit else None
    if m is None:
        return f"line {line}: a number Python cannot convert"
    return (f"line {line + text.count(chr(10), 0, m.start())}: a number of {len(m.group()):,} digits (Python "
            f"reads integers of at most {limit:,})")


_STRUCTURE = re.compile(rb'[][{}"]')
_STRING_BODY = re.compile(rb'(?:[^"\\]++|\\.)*+', re.S)  # stops at the closing quote, or where bytes run out
_SCALAR_END = re.compile(rb"[,\]\s]")
_WHITESPACE_RUN = re.compile(rb"[ \t\r\n]*")
_TRUNCATED = "the file ends inside the JSON array (no closing ']'); truncated?"


class _ArrayReader:
    """Cuts a top-level JSON array into its elements' bytes without parsing them, reading block by block.

    Only strings and bracket depth are tracked (a counter, not recursion), so a malformed or deeply nested
    element is still delimited and `parse_record` rejects just that element. An element over `limit` bytes
    is scanned to its end but not kept.
    """

    def __init__(self, path: str, f: IO[bytes], limit: int):
        self.path, self.f, self.limit = path, f, limit
        self.buf = bytearray()
        self.pos = 0  # next unread byte of buf
        self.line = 1  # line number at buf[self.counted]
        self.counted = 0

    def records(self) -> Iterator[RawRecord]:
        if self.f.read(len(BOM)) != BOM:
            self.f.seek(0)
        self._skip_whitespace()
        self.pos += 1  # the "[" (read_records checked it)
        index = 0
        while True:
            if not self._skip_whitespace():
                raise self._error(self.pos, _TRUNCATED)
            if self.buf[self.pos] == ord("]"):
                self.pos += 1
                break
            if self.pos > _BLOCK:
                self._drop(self.pos)
            start, start_line = self.pos, self._line_at(self.pos)
            end, size = self._scan_element(start, start_line)
            if size > self.limit:
                yield _too_large(self.path, start_line, index, size, self.limit)
            else:
                yield parse_record(self.path, start_line, index, bytes(self.buf[start:end]))
            index += 1
            self.pos = end
            if not self._skip_whitespace():
                raise self._error(self.pos, _TRUNCATED)
            sep = self.buf[self.pos]
            if sep == ord(","):
                self.pos += 1
            elif sep == ord("]"):
                self.pos += 1
                break
            else:
                raise self._error(self.pos, f"expected ',' or ']' after the record that starts at line "
                                  f"{start_line}, found {chr(sep)!r}")  # fmt: skip
        if self._skip_whitespace():
            raise self._error(self.pos, "extra data after the JSON array")

    def _scan_element(self, start: int, start_line: int) -> tuple[int, int]:
        """(end, size) of the element starting at buf[start]: end is exclusive; when size > limit the
        element's bytes were dropped as they were scanned (end is then where it ends in the current buf)."""
        buf = self.buf
        first = buf[start]
        depth, in_string, scan, dropped = 0, first == ord('"'), start + 1, 0
        if first in b"{[":
            depth = 1
        elif not in_string:  # a number, true, false, null (or garbage): up to the next separator
            while not (m := _SCALAR_END.search(buf, scan)):
                scan = len(buf)
                if not self._read():
                    return len(buf), len(buf) - start
            return m.start(), m.start() - start
        while True:
            if in_string:
                scan = _STRING_BODY.match(buf, scan).end()
                if scan < len(buf) and buf[scan] == ord('"'):
                    in_string, scan = False, scan + 1
                    if depth == 0:
                        return scan, dropped + scan - start
                    continue
            elif m := _STRUCTURE.search(buf, scan):
                scan = m.end()
                c = buf[m.start()]
                if c == ord('"'):
                    in_string = True
                elif c in b"{[":
                    depth += 1
                else:
                    depth -= 1
                    if depth == 0:
                        return scan, dropped + scan - start
                continue
            else:
                scan = len(buf)
            if dropped + scan - start > self.limit:  # too large: keep scanning, stop keeping
                dropped += scan - start
                self._drop(scan)
                start = scan = 0
            if not self._read():
                what = "a string" if in_string else "an object or array"
                raise self._error(len(buf), f"the file ends inside {what} of the record that starts at line "
                                  f"{start_line}; truncated?")  # fmt: skip

    def _read(self) -> bool:
        block = self.f.read(_BLOCK)
        self.buf += block
        return bool(block)

    def _skip_whitespace(self) -> bool:
        """Advance past whitespace; False at the end of the file."""
        while True:
            self.pos = _WHITESPACE_RUN.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return True
            self._drop(self.pos)
            if not self._read():
                return False

    def _line_at(self, pos: int) -> int:
        self.line += self.buf.count(b"\n", self.counted, pos)
        self.counted = pos
        return self.line

    def _drop(self, upto: int) -> None:
        """Forget buf[:upto] (already scanned), keeping line numbers right."""
        self._line_at(upto)
        del self.buf[:upto]
        self.counted = 0
        self.pos = max(0, self.pos - upto)

    def _error(self, pos: int, message: str) -> DataFormatError:
        return DataFormatError(f"{self.path}:{self._line_at(pos)}: malformed JSON array: {message}")


class JsonlWriter:
    """Appends records as JSON lines to an open text file (see `open_jsonl`); `count` says how many."""

    def __init__(self, f: IO[str]):
        self._f = f
        self.count = 0

    def append(self, record: Any) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        try:
            self._f.write(line)
        except UnicodeEncodeError:  # a lone surrogate (from a "\udXXX" escape): escape it, as JSON allows
            self._f.write(json.dumps(record) + "\n")
        self.count += 1


@contextlib.contextmanager
def open_jsonl(path: str | os.PathLike) -> Iterator[JsonlWriter]:
    """`with open_jsonl(path) as w: w.append(rec)`: streamed to a temporary file in the same directory and
    renamed over `path` at the end (never half a file; an exception leaves `path` untouched). The file gets
    the umask's mode, as `open()` would give it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_open(path) as f:
        yield JsonlWriter(f)


def write_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> int:
    """Write records (streamed, atomically: see `open_jsonl`); returns how many."""
    with open_jsonl(path) as w:
        for rec in records:
            w.append(rec)
    return w.count


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
