"""JSON-lines reading with errors that name file and line, and a crash-safe appender for results.

Judgments cost money, so the appender writes and flushes one line per result as it arrives: an interrupted
run keeps everything answered so far, and a line cut short by a kill is set aside (never silently dropped)
before new lines are appended after it.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Self

from absl import logging

from vicuna_jax.cli import UserError
from vicuna_jax.fileio import atomic_open


class EvalInputError(UserError):
    """Bad user input (a file, line, key or flag); the message says exactly where."""


def iter_jsonl(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields (line number, object) for each non-blank line; raises EvalInputError naming file:line."""
    if not os.path.exists(path):
        raise EvalInputError(f"{path}: file not found")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise EvalInputError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise EvalInputError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def require(obj: dict[str, Any], key: str, path: str, lineno: int, kind: type | tuple[type, ...]) -> Any:
    """Returns obj[key], or raises EvalInputError naming file, line and key when missing or mistyped."""
    if key not in obj:
        raise EvalInputError(f"{path}:{lineno}: missing key '{key}'")
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = "/".join(t.__name__ for t in kinds)
        raise EvalInputError(f"{path}:{lineno}: key '{key}' should be {names}, got {type(value).__name__}")
    return value


def write_jsonl(path: str, rows: Iterable[dict[str, Any]]) -> None:
    """Writes rows atomically (temp file + rename), so a crash never leaves a half-written file."""
    with atomic_open(path) as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


class JsonlAppender:
    """Thread-safe append-and-flush writer; reads back what an earlier run already wrote."""

    def __init__(self, path: str, *, redact: Callable[[str], str] = lambda s: s) -> None:
        self.path = path
        self.redact = redact  # applied to every line written
        self._lock = threading.Lock()
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        self.existing = self._load_and_repair()
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the run; see close()

    def _load_and_repair(self) -> list[dict[str, Any]]:
        if not os.path.exists(self.path):
            return []
        with open(self.path, "rb") as f:
            data = f.read()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            tail = data[cut:]
            try:
                json.loads(tail)
                with open(self.path, "ab") as f:  # a complete row that only lacks its newline
                    f.write(b"\n")
            except ValueError:
                side = f"{self.path}.partial"
                with open(side, "ab") as f:
                    f.write(tail + b"\n")
                with open(self.path, "r+b") as f:
                    f.truncate(cut)
                logging.warning(
                    "%s: the last line was cut short (an interrupted write); moved it to %s", self.path, side
                )
        return [row for _, row in iter_jsonl(self.path)]

    def append(self, row: dict[str, Any]) -> None:
        line = self.redact(json.dumps(row, ensure_ascii=False)) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
