"""Clean raw ShareGPT / OpenAI conversations into training records, counting every reject by reason.

    python -m vicuna_jax.data.clean --input=raw.json --output=clean.jsonl [--rejects=rejects.jsonl] [flags]

Steps (in order): validate structure and roles; HTML -> Markdown with repaired code fences; strip ShareGPT
page artefacts ("1 / 2" regenerate counters, "Copy code"); remove control characters; drop a leading
assistant turn and a trailing user turn; require alternating roles; drop exchanges with an empty message;
filter blocked words / replies, repeated digits and (optionally) languages; de-duplicate by id and by first
exchange.
A bad record is never fatal: it is counted, reported in the summary table and written to `--rejects`.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from vicuna_jax.data.formats import RawRecord, conversation_turns, read_records, write_jsonl
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
    "malformed_json", "bad_structure", "unknown_role", "misplaced_system", "not_alternating", "empty_message",
    "too_short", "blocked_word", "blocked_reply", "repeated_digits", "language", "duplicate_id",
    "duplicate_exchange",
)  # fmt: skip


class Rejected(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


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


# ------------------------------------------------------------------------------------------- text fixes
# ShareGPT stored assistant replies as page HTML starting with a block tag. Only such messages are converted:
# a Markdown reply that merely shows HTML in a code block, or a user asking about <div>, must stay as it is.
_HTML_MESSAGE = re.compile(r"^\s*<(?:div|p|pre|ol|ul|h[1-6]|table|blockquote)\b[^>]*>", re.I)
_COUNTER = re.compile(r"^\s*\d+ / \d+(?=<|\n|[A-Z]|$)")
_COPY_CODE = re.compile(r"(```[\w+#.-]*)[ \t]*Copy code[ \t]*\n?")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_FENCE_LINE = re.compile(r"^[ \t]*```", re.M)


def html_to_markdown(text: str) -> str:
    """ShareGPT HTML -> Markdown: code blocks become fenced blocks with their language; buttons go."""
    from bs4 import BeautifulSoup
    from markdownify import markdownify

    soup = BeautifulSoup(text, "html.parser")
    blocks: dict[str, str] = {}
    for k, pre in enumerate(soup.find_all("pre")):
        code = pre.find("code")
        lang = ""
        for cls in (code.get("class") or []) if code is not None else []:
            if cls.startswith("language-"):
                lang = cls[len("language-") :]
        body = (code if code is not None else pre).get_text()
        if code is None:
            body = body.replace("Copy code", "")
        key = f"VJXCODEBLOCK{k}X"
        blocks[key] = f"```{lang}\n{body.strip(chr(10))}\n```"
        para = soup.new_tag("p")
        para.string = key
        pre.replace_with(para)
    for tag in soup.find_all(["button", "svg"]):
        tag.decompose()
    md = markdownify(
        str(soup), heading_style="ATX", bullets="-", escape_asterisks=False, escape_underscores=False,
        escape_misc=False, newline_style="spaces",
    )  # fmt: skip
    md = re.sub(r"[ \t]+\n", "\n", md)
    for key, block in blocks.items():
        md = md.replace(key, "\n\n" + block + "\n\n")
    return md


def repair_fences(text: str) -> str:
    """Put every ``` fence on its own line and close a block left open at the end."""
    text = re.sub(r"(?<=[^\n])```(?=[\w+#.-]*\n)", "\n```", text)
    if len(_FENCE_LINE.findall(text)) % 2 == 1:
        text = text.rstrip("\n") + "\n```"
    return text


def collapse_blank_lines(text: str) -> str:
    """At most one blank line in a row, outside code blocks (code keeps its own spacing)."""
    parts = re.split(r"(^[ \t]*```.*?^[ \t]*```[ \t]*$)", text, flags=re.M | re.S)
    return "".join(p if k % 2 else re.sub(r"\n{3,}", "\n\n", p) for k, p in enumerate(parts))


def clean_text(text: str, fixes: Counter, convert_html: bool = True) -> str:
    """All message-level repairs (HTML conversion only if `convert_html`). Counts what changed in `fixes`."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    counter = _COUNTER.match(text)
    if counter:
        text = text[counter.end() :]
        fixes["regenerate_counter_stripped"] += 1
    if convert_html and _HTML_MESSAGE.match(text):
        text = html_to_markdown(text)
        fixes["html_converted"] += 1
    if "Copy code" in text:
        text = _COPY_CODE.sub(r"\1\n", text)
        text = re.sub(r"^[ \t]*Copy code[ \t]*$\n?", "", text, flags=re.M)
        fixes["copy_code_stripped"] += 1
    if _CONTROL.search(text):
        text = _CONTROL.sub("", text)
        fixes["control_chars_removed"] += 1
    if "```" in text:
        fixed = repair_fences(text)
        if fixed != text:
            fixes["fences_repaired"] += 1
        text = fixed
    return collapse_blank_lines(text).strip()


def _printable(text: str) -> bool:
    return any(not unicodedata.category(ch).startswith(("C", "Z")) for ch in text)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


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
        self._langid = None

    def clean_one(self, raw: RawRecord) -> dict:
        """The cleaned record, or raise Rejected. Counts fixes on the report."""
        if raw.error:
            raise Rejected("malformed_json", raw.error)
        try:
            turns = conversation_turns(raw.value)
        except ValueError as e:
            raise Rejected("bad_structure", str(e)) from None
        rec_id = raw.value.get("id")
        rec_id = str(rec_id) if rec_id not in (None, "") else f"{raw.source.rsplit('/', 1)[-1]}:{raw.line}"
        fixes = self.report.fixes
        messages: list[tuple[str, str]] = []
        for k, t in enumerate(turns):
            if not isinstance(t, dict):
                raise Rejected("bad_structure", f"turn {k} is a {type(t).__name__}, not an object")
            role_key, text_key = ("from", "value") if "from" in t else ("role", "content")
            raw_role, text = t.get(role_key), t.get(text_key)
            role = ROLE_ALIASES.get(raw_role.lower()) if isinstance(raw_role, str) else None
            if role is None:
                raise Rejected("unknown_role", f"turn {k}: role {raw_role!r}")
            if not isinstance(text, str):
                raise Rejected("bad_structure", f"turn {k}: text is {type(text).__name__}, not a string")
            if role == SYSTEM and messages:
                raise Rejected("misplaced_system", f"turn {k}: system message after the first turn")
            html = self.config.convert_html and role == ASSISTANT
            messages.append((role, clean_text(text, fixes, html)))
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
        self._check_content(kept)
        if self.config.dedup:
            if rec_id in self._seen_ids:
                raise Rejected("duplicate_id", f"id {rec_id!r} seen before")
            key = hashlib.sha1((_norm(kept[0][0]) + "\x00" + _norm(kept[0][1])).encode()).digest()
            if key in self._seen_exchanges:
                raise Rejected("duplicate_exchange", "first exchange seen before")
            self._seen_ids.add(rec_id)
            self._seen_exchanges.add(key)
        convo = [{"from": SYSTEM, "value": system}] if system else []
        for q, a in kept:
            convo += [{"from": HUMAN, "value": q}, {"from": GPT, "value": a}]
        return {"id": rec_id, "conversations": convo}

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

    def _detect_language(self, text: str) -> str:
        if self._langid is None:
            try:
                from langid.langid import LanguageIdentifier, model
            except ImportError as e:
                raise ImportError("the language filter needs `pip install langid`") from e
            self._langid = LanguageIdentifier.from_modelstring(model, norm_probs=False)
        return self._langid.classify(text)[0]

    def __call__(self, raws: Iterable[RawRecord], rejects: list | None = None) -> Iterator[dict]:
        """Clean a stream; rejects (reason, detail, source line) are appended to `rejects` if given."""
        for raw in raws:
            self.report.total += 1
            try:
                rec = self.clean_one(raw)
            except Rejected as r:
                self.report.rejected[r.reason] += 1
                if rejects is not None:
                    rid = raw.value.get("id") if isinstance(raw.value, dict) else None
                    rejects.append(
                        {
                            "reason": r.reason,
                            "detail": r.detail,
                            "where": raw.where,
                            "id": rid,
                            "record": raw.value,
                        }
                    )
                continue
            self.report.kept += 1
            yield rec


def clean_file(
    input_path: str, output_path: str, config: CleanConfig | None = None, rejects_path: str | None = None
) -> CleanReport:
    """Clean one file into JSONL (written atomically); returns the report."""
    cleaner = Cleaner(config)
    rejects: list = []
    write_jsonl(output_path, cleaner(read_records(input_path), rejects))
    if rejects_path:
        write_jsonl(rejects_path, rejects)
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
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", required=True, help="ShareGPT JSON/JSONL or OpenAI-messages JSONL")
    ap.add_argument("--output", required=True, help="cleaned JSONL")
    ap.add_argument("--rejects", default=None, help="write rejected records with their reason here (JSONL)")
    add_clean_flags(ap)
    args = ap.parse_args(argv)
    report = clean_file(args.input, args.output, config_from_flags(args), args.rejects)
    print(report.table())
    print(f"wrote {report.kept} records to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
