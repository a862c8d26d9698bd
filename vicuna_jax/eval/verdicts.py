"""Reading scores and verdicts out of a judge's free text, strictly enough that an echoed format never counts.

Judges often restate their instructions ("output [[A]] if assistant A is better, [[B]] if ..."). Such tokens
are not verdicts, so a verdict token is discarded when it
  - is followed by a condition ("[[A]] if ...", "[[C]] for a tie", "[[B]] means ..."),
  - sits in a list of tokens ("[[A]], [[B]] or [[C]]", "[[A]]/[[B]]/[[C]]"), or
  - ends a conditional instruction ("if A is better, output [[A]]").
The tokens left must all name the same letter; otherwise the verdict is "error" (never a silent "A").
Five-level prompts (Arena-Hard style, output_format "[[A>>B]]") are read the same way and give one of
FIVE_LEVELS: A much better, A a little better, equal, B a little better, B much better.
Scores are read on a 0-10 scale: the rubric asks for 1-10, but judges give 0 to an empty or refused answer,
and that is a verdict, not a parse failure. Anything else is recorded as -1 with the judge's text kept.
"""

from __future__ import annotations

import re

ERROR_SCORE = -1.0
MIN_SCORE, MAX_SCORE = 0.0, 10.0

_NUMBER = r"(\d+(?:\.\d+)?)"
_DOUBLE_SCORE_RE = re.compile(r"\[\[\s*" + _NUMBER + r"\s*\]\]")
_SINGLE_SCORE_RE = re.compile(r"(?<!\[)\[\s*" + _NUMBER + r"\s*\](?!\])")
_CONDITION_AFTER_RE = re.compile(
    r"""^\s*["'`”’]?\s*[,:;]?\s*(if|when|whenever|in\s+case|means|meaning|indicates|denotes|signifies|should"""
    r"""|otherwise|for\s+(a\s+)?(tie|draw|equal)|for\s+(assistant\s+|answer\s+|response\s+)?[ABC])\b""",
    re.IGNORECASE,
)
_LIST_GAP_RE = re.compile(r"""^["'`”’“‘\s,;/|]*((or|and)\b)?["'`”’“‘\s,;/|]*$""", re.IGNORECASE)
_SENTENCE_START_RE = re.compile(r"[.!?\n](?=[^.!?\n]*$)")
_INSTRUCTION_RE = re.compile(
    r"\b(if|when|whenever)\b.*\b(output|respond|write|answer with|reply with|format)\b"
    r"|\b(output|respond|write|format)\b.*\b(if|when|whenever)\b",
    re.IGNORECASE,
)


def parse_score(judgment: str) -> float:
    """The 0-10 rating in `[[x]]`, else in `[x]`; -1 when there is none or it is off the scale.

    When several ratings appear the last one wins: judges restate the example before giving their own.
    """
    matches = _DOUBLE_SCORE_RE.findall(judgment) or _SINGLE_SCORE_RE.findall(judgment)
    if not matches:
        return ERROR_SCORE
    score = float(matches[-1])
    return score if MIN_SCORE <= score <= MAX_SCORE else ERROR_SCORE


FIVE_LEVELS = ("A>>B", "A>B", "A=B", "B>A", "B>>A")
_FIVE_LEVEL_RE = re.compile(r"\[\[\s*([AB])\s*(>>|<<|>|<|=)\s*([AB])\s*\]\]")


def is_five_level(output_format: str) -> bool:
    """A prompt asking for Arena-Hard-style verdicts ("[[A>>B]]") rather than [[A]] / [[B]] / [[C]]."""
    return ">" in output_format


def _five_level(m: re.Match[str]) -> str:
    """Canonical form of a five-level token ("B<A" is "A>B"); '' for nonsense such as "A>A"."""
    x, op, y = m.groups()
    if x == y:
        return ""
    if op == "=":
        return "A=B"
    if op.startswith("<"):
        x, op = y, op.replace("<", ">")
    return f"{x}{op}{'B' if x == 'A' else 'A'}"


def _verdict_pattern(output_format: str) -> re.Pattern[str]:
    fmt = output_format.strip()
    if is_five_level(fmt):
        return _FIVE_LEVEL_RE
    if fmt.startswith("[") and not fmt.startswith("[["):  # a prompt that asks for "[A]"
        return re.compile(r"(?<!\[)\[\s*([ABC])\s*\](?!\])")
    return re.compile(r"\[\[\s*([ABC])\s*\]\]")


def five_level_winner(verdict: str) -> str:
    """'A', 'B' or 'tie' for a five-level verdict; 'error' passes through."""
    return "tie" if verdict == "A=B" else verdict[0] if verdict in FIVE_LEVELS else "error"


def parse_verdict(judgment: str, output_format: str = "[[A]]") -> str:
    """'A', 'B', 'tie' (from C), or 'error' when there is no verdict or the verdicts disagree; for a
    five-level output_format, one of FIVE_LEVELS or 'error'."""
    five = is_five_level(output_format)
    tokens = list(_verdict_pattern(output_format).finditer(judgment))
    in_list = set()
    for i in range(len(tokens) - 1):
        if _LIST_GAP_RE.match(judgment[tokens[i].end() : tokens[i + 1].start()]):
            in_list.update((i, i + 1))
    letters = []
    for i, m in enumerate(tokens):
        before = judgment[: m.start()]
        sentence = before[_start_of_sentence(before) :]
        if i in in_list or _CONDITION_AFTER_RE.match(judgment[m.end() :]) or _INSTRUCTION_RE.search(sentence):
            continue
        letters.append(_five_level(m) if five else m.group(1))
    if not letters or len(set(letters)) > 1 or "" in letters:
        return "error"
    if five:
        return letters[0]
    return "tie" if letters[0] == "C" else letters[0]


def _start_of_sentence(text: str) -> int:
    m = _SENTENCE_START_RE.search(text)
    return m.end() if m else 0


_LABEL_RE = re.compile(r"\bassistant\s*[12]\b\s*[:=\-]?|\bscores?\b\s*[:=]?|\b(and|vs\.?)\b|&", re.IGNORECASE)
_OUT_OF_TEN_RE = re.compile(r"\s*(/|out\s+of)\s*10\b", re.IGNORECASE)
_ONLY_NUMBERS_RE = re.compile(r"[\s\d.,;:()\[\]|-]*")
# A later line counts only when it says it gives the scores: "Scores: 7 9", "Final scores: (3, 9)",
# "score 7/10 for Assistant 1 and 9/10 for Assistant 2", "Assistant 1: 7, Assistant 2: 9".
_SCORE_WORD_RE = re.compile(r"\bscores?\b", re.IGNORECASE)
_BOTH_LABELS_RE = re.compile(r"\bassistant\s*1\b.*\bassistant\s*2\b", re.IGNORECASE)
_FILLER_RE = re.compile(
    r"\b(final|overall|the|are|is|of|for|to|and|vs|respectively|assistants?|scores?|given|i|give)\b"
    r"|[\s.,;:()\[\]|*#=&-]",
    re.IGNORECASE,
)
_ASSISTANT_LABEL_RE = re.compile(r"\bassistant\s*[12]\b", re.IGNORECASE)


def parse_review_scores(review: str) -> list[float]:
    """The two scores of an original Vicuna review: the first line's two numbers, else the last line that
    states them explicitly (see _SCORE_WORD_RE). A bare `(x, y)` elsewhere is not a score: in a math review
    it is a point. Returns [-1, -1] when there is none or a score is off the 0-10 scale.
    """
    lines = [line for line in review.splitlines() if line.strip()]
    if lines:
        first = lines[0].replace("*", " ").replace("#", " ")
        first = _OUT_OF_TEN_RE.sub(" ", _LABEL_RE.sub(" ", first))
        numbers = re.findall(_NUMBER, first)
        if len(numbers) == 2 and _ONLY_NUMBERS_RE.fullmatch(first):
            return _on_scale([float(n) for n in numbers])
    for line in reversed(lines):
        scores = _explicit_score_line(line)
        if scores is not None:
            return _on_scale(scores)
    return [ERROR_SCORE, ERROR_SCORE]


def _explicit_score_line(line: str) -> list[float] | None:
    """[s1, s2] when the line is a score statement holding exactly two numbers and only filler words."""
    if not (_SCORE_WORD_RE.search(line) or _BOTH_LABELS_RE.search(line)):
        return None
    text = _OUT_OF_TEN_RE.sub(" ", _ASSISTANT_LABEL_RE.sub(" ", line))
    numbers = re.findall(_NUMBER, text)
    rest = _FILLER_RE.sub("", re.sub(_NUMBER, "", text))
    return [float(n) for n in numbers] if len(numbers) == 2 and not rest else None


def first_line(text: str, limit: int = 120) -> str:
    """The first non-blank line of a judge's text, shortened, for warnings that quote what was seen."""
    line = next((x.strip() for x in text.splitlines() if x.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def last_line(text: str, limit: int = 120) -> str:
    """The last non-blank line, shortened (where ratings and verdicts usually are)."""
    line = next((x.strip() for x in reversed(text.splitlines()) if x.strip()), "")
    return line if len(line) <= limit else "..." + line[-(limit - 3) :]


def _on_scale(scores: list[float]) -> list[float]:
    if all(MIN_SCORE <= s <= MAX_SCORE for s in scores):
        return scores
    return [ERROR_SCORE, ERROR_SCORE]
