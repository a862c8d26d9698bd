"""Clean raw ShareGPT / OpenAI conversations into training records, counting every reject by reason.

    python -m vicuna_jax.data.clean --input=raw.json --output=clean.jsonl [--rejects=rejects.jsonl] [flags]

Steps (in order): validate structure and roles (OpenAI list-of-parts content: text parts are joined, any
other part type rejects the record); cap the size of every message and record; HTML -> Markdown with repaired
code fences; strip ShareGPT page artefacts ("1 / 2" regenerate counters, "Copy code"); remove control
characters; drop a leading assistant turn and a trailing user turn; require alternating roles; drop exchanges
with an empty message; filter blocked words / replies, repeated digits and (optionally) languages;
de-duplicate by id and by first exchange. Each record gets `max_record_seconds` (see `guard.py`).
A bad record is never fatal: it is counted, reported in the summary table and streamed to `--rejects`. Input
in which nothing survives is an error (exit 2) that lists the reject counts.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from vicuna_jax.cli import ArgumentParser, UserError, run_argparse
from vicuna_jax.data.formats import (
    RawRecord,
    check_input_file,
    check_output_dir,
    conversation_turns,
    open_jsonl,
    os_error_message,
    read_records,
)
from vicuna_jax.data.guard import RecordTimeout, time_limit
from vicuna_jax.data.repair import (  # noqa: F401  (clean_text, html_to_markdown: public here too)
    HtmlError,
    clean_text,
    html_to_markdown,
    load_html_converter,
)
from vicuna_jax.data.template import ASSISTANT, ROLE_ALIASES, SYSTEM, USER

HUMAN, GPT = "human", "gpt"
_SHAREGPT_ROLE = {USER: HUMAN, ASSISTANT: GPT, SYSTEM: SYSTEM}

DEFAULT_BLOCKED_WORDS = ("as an ai language model",)
DEFAULT_BLOCKED_REPLIES = (
    "i'm sorry, but i cannot",
    "i'm sorry, but i can't",
    "i am sorry, but i cannot",
)

# Reject reasons (a record is dropped) and fixes (a record is repaired and kept).
REJECT_REASONS = (
    "malformed_json", "not_utf8", "too_deep", "number_too_long", "too_large", "too_slow", "bad_structure",
    "unsupported_content", "unknown_role", "misplaced_system", "bad_html", "not_alternating", "empty_message",
    "too_short", "blocked_word", "blocked_reply", "repeated_digits", "language", "duplicate_id",
    "duplicate_exchange", "failed",
)  # fmt: skip


class Rejected(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail

    def __reduce__(self):  # workers send these back to the main process
        return Rejected, (self.reason, self.detail)


@dataclass
class CleanConfig:
    """What the cleaner keeps. Defaults follow FastChat's ShareGPT cleaning where it had one."""

    min_exchanges: int = 1
    blocked_words: tuple[str, ...] = DEFAULT_BLOCKED_WORDS
    blocked_replies: tuple[str, ...] = DEFAULT_BLOCKED_REPLIES
    max_repeated_digits: int = 32  # a run of more identical digits rejects the record; 0 = off
    keep_languages: tuple[str, ...] = ()  # ISO 639-1 codes (langid); empty = keep all
    dedup: bool = True
    convert_html: bool = True
    # Guards (0 = off). 200K characters is ~50K LLaMA tokens, far past any training length here.
    max_message_chars: int = 200_000
    max_record_chars: int = 1_000_000
    max_record_seconds: float = 10.0


@dataclass
class CleanReport:
    total: int = 0
    kept: int = 0
    rejected: Counter = field(default_factory=Counter)
    fixes: Counter = field(default_factory=Counter)

    def table(self) -> str:
        """Human-readable summary: every reject reason and fix with its count."""
        rows = [("read", self.total), ("kept", self.kept)]
        rows += [(f"rejected: {r}", n) for r, n in sorted(self.rejected.items(), key=lambda x: -x[1])]
        rows += [(f"fixed: {r}", n) for r, n in sorted(self.fixes.items(), key=lambda x: -x[1])]
        width = max(len(r) for r, _ in rows)
        lines = [f"{'':{width}}  {'records':>8}  {'%':>6}"]
        for name, n in rows:
            pct = 100.0 * n / self.total if self.total else 0.0
            lines.append(f"{name:{width}}  {n:8d}  {pct:6.2f}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "total": self.total,
            "kept": self.kept,
            "rejected": dict(self.rejected),
            "fixes": dict(self.fixes),
        }

    def nothing_kept_error(self, input_path: str, rejects_path: str | None = None) -> UserError:
        """The error for input in which no conversation survived, with the reject counts."""
        if not self.total:
            return UserError(f"{input_path}: no usable conversation: the file holds no records")
        counts = ", ".join(f"{r} {n}" for r, n in sorted(self.rejected.items(), key=lambda x: (-x[1], x[0])))
        see = f"; see {rejects_path}" if rejects_path else "; --rejects=FILE lists them"
        return UserError(f"{input_path}: no usable conversation: all {self.total} records were rejected "
                         f"({counts}){see}")  # fmt: skip


def _printable(text: str) -> bool:
    return any(not unicodedata.category(ch).startswith(("C", "Z")) for ch in text)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _message_text(k: int, content: Any, fixes: Counter) -> str:
    """A turn's text: a string, or OpenAI list-of-parts content whose text parts are joined by newlines."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise Rejected("bad_structure", f"turn {k}: text is {type(content).__name__}, not a string")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind is None:
            raise Rejected("bad_structure", f"turn {k}: content part {j} is not an object with a 'type'")
        if kind != "text":
            raise Rejected("unsupported_content", f"turn {k}: content part {j} has type {kind!r}; only "
                           "'text' parts can be trained on")  # fmt: skip
        if not isinstance(part.get("text"), str):
            raise Rejected("bad_structure", f"turn {k}: text part {j} has no string 'text'")
        texts.append(part["text"])
    fixes["text_parts_joined"] += 1
    return "\n".join(texts)


# ------------------------------------------------------------------------------------------- records
class Cleaner:
    """Stateful cleaner (it remembers ids and first exchanges for de-duplication)."""

    def __init__(self, config: CleanConfig | None = None):
        self.config = config or CleanConfig()
        self.report = CleanReport()
        self._seen_ids: set[str] = set()
        self._seen_exchanges: set[bytes] = set()
        self._digits = (
            re.compile(rf"(\d)\1{{{self.config.max_repeated_digits},}}")
            if self.config.max_repeated_digits
            else None
        )
        self._blocked_words = tuple(w.lower() for w in self.config.blocked_words)
        self._blocked_replies = tuple(_norm(r) for r in self.config.blocked_replies)
        # Load what the timed part of a record needs now, so no record's time limit pays for an import.
        self._langid = self._load_langid() if self.config.keep_languages else None
        if self.config.convert_html:
            load_html_converter()

    def clean_one(self, raw: RawRecord) -> dict:
        """The cleaned record, or raise Rejected. Counts fixes on the report."""
        return self.deduplicate(self.transform(raw))

    def transform(self, raw: RawRecord) -> dict:
        """`clean_one` without de-duplication (what worker processes run; see `workers.py`). Any error one
        record causes rejects that record: one we did not foresee is counted as `failed`, with its type."""
        try:
            return self._transform(raw)
        except Rejected:
            raise
        except Exception as e:  # noqa: BLE001 - per-record isolation: nothing one record holds stops the run
            raise Rejected("failed", f"{type(e).__name__}: {e}"[:500]) from None

    def _transform(self, raw: RawRecord) -> dict:
        if raw.error:
            raise Rejected(raw.reason, raw.error)
        try:
            turns = conversation_turns(raw.value)
        except ValueError as e:
            raise Rejected("bad_structure", str(e)) from None
        rec_id = raw.value.get("id")
        rec_id = str(rec_id) if rec_id not in (None, "") else f"{raw.source.rsplit('/', 1)[-1]}:{raw.line}"
        messages = self._read_turns(turns)
        try:
            with time_limit(self.config.max_record_seconds) as limit:
                system, kept = self._clean_messages(messages, limit.check)
        except RecordTimeout:
            raise Rejected("too_slow", f"cleaning took over {self.config.max_record_seconds:g} s") from None
        convo = [{"from": SYSTEM, "value": system}] if system else []
        for q, a in kept:
            convo += [{"from": HUMAN, "value": q}, {"from": GPT, "value": a}]
        return {"id": rec_id, "conversations": convo}

    def deduplicate(self, rec: dict) -> dict:
        """`rec`, or raise Rejected when its id or its first exchange was seen before (in stream order)."""
        if not self.config.dedup:
            return rec
        rec_id, convo = rec["id"], rec["conversations"]
        if rec_id in self._seen_ids:
            raise Rejected("duplicate_id", f"id {rec_id!r} seen before")
        first = convo[1:3] if convo[0]["from"] == SYSTEM else convo[0:2]
        key = hashlib.sha1((_norm(first[0]["value"]) + "\x00" + _norm(first[1]["value"])).encode()).digest()
        if key in self._seen_exchanges:
            raise Rejected("duplicate_exchange", "first exchange seen before")
        self._seen_ids.add(rec_id)
        self._seen_exchanges.add(key)
        return rec

    def _read_turns(self, turns: list) -> list[tuple[str, str]]:
        """(role, raw text) per turn, after the structure, role and size checks."""
        c = self.config
        messages: list[tuple[str, str]] = []
        total = 0
        for k, t in enumerate(turns):
            if not isinstance(t, dict):
                raise Rejected("bad_structure", f"turn {k} is a {type(t).__name__}, not an object")
            role_key, text_key = ("from", "value") if "from" in t else ("role", "content")
            raw_role = t.get(role_key)
            role = ROLE_ALIASES.get(raw_role.lower()) if isinstance(raw_role, str) else None
            if role is None:
                raise Rejected("unknown_role", f"turn {k}: role {raw_role!r}")
            text = _message_text(k, t.get(text_key), self.report.fixes)
            if role == SYSTEM and messages:
                raise Rejected("misplaced_system", f"turn {k}: system message after the first turn")
            if c.max_message_chars and len(text) > c.max_message_chars:
                raise Rejected("too_large", f"turn {k} has {len(text):,} characters (limit "
                               f"{c.max_message_chars:,})")  # fmt: skip
            total += len(text)
            if c.max_record_chars and total > c.max_record_chars:
                raise Rejected("too_large", f"over {c.max_record_chars:,} characters of text")
            messages.append((role, text))
        return messages

    def _clean_messages(self, messages: list[tuple[str, str]], check) -> tuple[str | None, list]:
        """(system message, [(question, answer)]) after every text repair and content filter."""
        fixes = self.report.fixes
        cleaned = []
        for k, (role, text) in enumerate(messages):
            check()
            try:
                html = self.config.convert_html and role == ASSISTANT
                cleaned.append((role, clean_text(text, fixes, html)))
            except HtmlError as e:
                raise Rejected("bad_html", f"turn {k}: {e}") from None
        check()
        messages = cleaned
        system = messages.pop(0)[1] if messages and messages[0][0] == SYSTEM else None
        while messages and messages[0][0] == ASSISTANT:
            messages.pop(0)
            fixes["leading_assistant_dropped"] += 1
        while messages and messages[-1][0] == USER:
            messages.pop()
            fixes["trailing_user_dropped"] += 1
        for k, (role, _) in enumerate(messages):
            if role != (USER if k % 2 == 0 else ASSISTANT):
                raise Rejected("not_alternating", f"message {k} is {role!r} after {messages[k - 1][0]!r}")

        exchanges = [(messages[k][1], messages[k + 1][1]) for k in range(0, len(messages), 2)]
        kept = [ex for ex in exchanges if _printable(ex[0]) and _printable(ex[1])]
        if len(kept) < len(exchanges):
            fixes["empty_exchange_dropped"] += len(exchanges) - len(kept)
            if not kept:
                raise Rejected("empty_message", "every exchange has an empty or non-printable message")
        if len(kept) < self.config.min_exchanges:
            raise Rejected("too_short", f"{len(kept)} exchange(s) < {self.config.min_exchanges}")
        if not kept:
            raise Rejected("too_short", "no exchange")  # min_exchanges=0 and nothing at all
        self._check_content(kept)
        return system, kept

    def _check_content(self, exchanges: list[tuple[str, str]]) -> None:
        for q, a in exchanges:
            for text in (q, a):
                low = text.lower()
                for w in self._blocked_words:
                    if w in low:
                        raise Rejected("blocked_word", f"contains {w!r}")
            if self._blocked_replies and _norm(a).startswith(self._blocked_replies):
                raise Rejected("blocked_reply", f"reply starts with a blocked phrase: {a[:60]!r}")
            if self._digits is not None:
                m = self._digits.search(a)
                if m:
                    raise Rejected("repeated_digits", f"run of {len(m.group(0))} identical digits")
        if self.config.keep_languages:
            lang = self._detect_language(" ".join(q + " " + a for q, a in exchanges)[:2000])
            if lang not in self.config.keep_languages:
                raise Rejected(
                    "language", f"detected {lang!r}, keeping {','.join(self.config.keep_languages)}"
                )

    @staticmethod
    def _load_langid():
        try:
            from langid.langid import LanguageIdentifier, model
        except ImportError as e:
            raise ImportError("the language filter needs `pip install langid`") from e
        return LanguageIdentifier.from_modelstring(model, norm_probs=False)

    def _detect_language(self, text: str) -> str:
        return self._langid.classify(text)[0]

    def __call__(self, raws: Iterable[RawRecord], rejects: Any = None, pool: Any = None) -> Iterator[dict]:
        """Clean a stream. Each reject (reason, detail, where, id, the record or its raw text) is passed to
        `rejects.append` if given: a list, or a `formats.JsonlWriter` to stream them to a file. With a
        `workers.WorkerPool` of several processes, records are transformed there (same output, same order;
        the pool is handed in, so this module never imports `workers`, which imports it)."""
        if pool is not None and pool.workers > 1:
            yield from self._parallel(raws, rejects, pool)
            return
        for raw in raws:
            self.report.total += 1
            try:
                rec = self.clean_one(raw)
            except Rejected as r:
                self._reject(raw, r, rejects)
                continue
            self.report.kept += 1
            yield rec


    def _reject(self, raw: RawRecord, r: Rejected, rejects: Any) -> None:
        """Counts a rejected record under its reason and writes it to the rejects file, if there is one."""
        self.report.rejected[r.reason] += 1
        if rejects is not None:
            _append_reject(rejects, raw, r)

    def _parallel(self, raws: Iterable[RawRecord], rejects: Any, pool: Any) -> Iterator[dict]:
        for chunk, results, fixes in pool.clean_chunks(raws, 64):
            self.report.fixes.update(fixes)
            for raw, result in zip(chunk, results, strict=True):
                self.report.total += 1
                try:
                    if isinstance(result, Rejected):
                        raise result
                    rec = self.deduplicate(result)
                except Rejected as r:
                    self._reject(raw, r, rejects)
                    continue
                self.report.kept += 1
                yield rec


def _append_reject(rejects: Any, raw: RawRecord, r: Rejected) -> None:
    rid = raw.value.get("id") if isinstance(raw.value, dict) else None
    entry = {"reason": r.reason, "detail": r.detail, "where": raw.where, "id": rid, "record": raw.value}
    if raw.text is not None:
        entry["text"] = raw.text
    try:
        rejects.append(entry)
    except (ValueError, TypeError, RecursionError) as e:  # a value JSON cannot write back (e.g. too deep)
        entry.update(id=None, record=None, unwritable=f"{type(e).__name__}: {e}")
        rejects.append(entry)


class _NothingKept(Exception):
    pass


def clean_file(
    input_path: str, output_path: str, config: CleanConfig | None = None, rejects_path: str | None = None
) -> CleanReport:
    """Clean one file into JSONL, streaming (memory holds one record); returns the report.

    Output and rejects are written atomically. Raises UserError (DataFormatError) when the input cannot be
    read or no record survives (the output is then not written; the rejects are)."""
    check_input_file(input_path)
    for path in (output_path, rejects_path):
        if path:
            check_output_dir(os.path.dirname(os.path.abspath(path)))
    cleaner = Cleaner(config)
    with open_jsonl(rejects_path) if rejects_path else contextlib.nullcontext() as rejects:
        try:
            with open_jsonl(output_path) as out:
                for rec in cleaner(read_records(input_path), rejects):
                    out.append(rec)
                if not out.count:
                    raise _NothingKept
        except _NothingKept:
            pass
    if not cleaner.report.kept:
        raise cleaner.report.nothing_kept_error(input_path, rejects_path)
    return cleaner.report


def add_clean_flags(ap: argparse.ArgumentParser) -> None:
    d = CleanConfig()
    ap.add_argument("--min_exchanges", type=int, default=d.min_exchanges)
    ap.add_argument(
        "--blocked_words", default="|".join(d.blocked_words), help="'|'-separated, case-insensitive"
    )
    ap.add_argument(
        "--blocked_replies", default="|".join(d.blocked_replies), help="'|'-separated reply prefixes"
    )
    ap.add_argument("--max_repeated_digits", type=int, default=d.max_repeated_digits, help="0 disables")
    ap.add_argument(
        "--keep_languages", default="", help="comma-separated ISO codes, e.g. en,de (needs langid)"
    )
    ap.add_argument("--no_dedup", action="store_true")
    ap.add_argument("--no_html", action="store_true", help="do not convert HTML to Markdown")
    ap.add_argument("--max_message_chars", type=int, default=d.max_message_chars, help="0 disables")
    ap.add_argument("--max_record_chars", type=int, default=d.max_record_chars, help="0 disables")
    ap.add_argument("--max_record_seconds", type=float, default=d.max_record_seconds, help="0 disables")


def config_from_flags(args: argparse.Namespace) -> CleanConfig:
    def split(s: str, sep: str) -> tuple[str, ...]:
        return tuple(x.strip() for x in s.split(sep) if x.strip())

    return CleanConfig(
        min_exchanges=args.min_exchanges,
        blocked_words=split(args.blocked_words, "|"),
        blocked_replies=split(args.blocked_replies, "|"),
        max_repeated_digits=args.max_repeated_digits,
        keep_languages=split(args.keep_languages, ","),
        dedup=not args.no_dedup,
        convert_html=not args.no_html,
        max_message_chars=args.max_message_chars,
        max_record_chars=args.max_record_chars,
        max_record_seconds=args.max_record_seconds,
    )


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", required=True, help="ShareGPT JSON/JSONL or OpenAI-messages JSONL")
    ap.add_argument("--output", required=True, help="cleaned JSONL")
    ap.add_argument("--rejects", default=None, help="write rejected records with their reason here (JSONL)")
    add_clean_flags(ap)
    args = ap.parse_args(argv)
    try:
        report = clean_file(args.input, args.output, config_from_flags(args), args.rejects)
    except OSError as e:
        raise UserError(os_error_message(e)) from None
    print(report.table())
    print(f"wrote {report.kept} records to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_argparse(main)
