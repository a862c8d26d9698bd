"""Reading scores and verdicts out of a judge's free text, strictly enough that an echoed format never counts.

Judges often restate their instructions ("output [[A]] if assistant A is better, [[B]] if ..."). Such tokens
are not verdicts, so a verdict token is discarded when it
  - is followed by a condition ("[[A]] if ...", "[[C]] for a tie", "[[B]] means ..."),
  - sits in a list of tokens ("[[A]], [[B]] or [[C]]", "[[A]]/[[B]]/[[C]]"), or
  - ends a conditional instruction ("if A is better, output [[A]]").
The tokens left must all name the same letter; otherwise the verdict is "error" (never a silent "A").
Scores follow the rubric's 1-10 scale; anything else is recorded as -1 with the judge's text kept.
"""

from __future__ import annotations

import re

ERROR_SCORE = -1.0
MIN_SCORE, MAX_SCORE = 1.0, 10.0

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
    """The 1-10 rating in `[[x]]`, else in `[x]`; -1 when there is none or it is off the scale.

    When several ratings appear the last one wins: judges restate the example before giving their own.
    """
    matches = _DOUBLE_SCORE_RE.findall(judgment) or _SINGLE_SCORE_RE.findall(judgment)
    if not matches:
        return ERROR_SCORE
    score = float(matches[-1])
    return score if MIN_SCORE <= score <= MAX_SCORE else ERROR_SCORE


def _verdict_pattern(output_format: str) -> re.Pattern[str]:
    fmt = output_format.strip()
    if fmt.startswith("[") and not fmt.startswith("[["):  # a prompt that asks for "[A]"
        return re.compile(r"(?<!\[)\[\s*([ABC])\s*\](?!\])")
    return re.compile(r"\[\[\s*([ABC])\s*\]\]")


def parse_verdict(judgment: str, output_format: str = "[[A]]") -> str:
    """'A', 'B', 'tie' (from C), or 'error' when there is no verdict or the verdicts disagree."""
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
        letters.append(m.group(1))
    if not letters or len(set(letters)) > 1:
        return "error"
    return "tie" if letters[0] == "C" else letters[0]


def _start_of_sentence(text: str) -> int:
    m = _SENTENCE_START_RE.search(text)
    return m.end() if m else 0


_LABEL_RE = re.compile(r"\bassistant\s*[12]\b\s*[:=\-]?|\bscores?\b\s*[:=]?|\b(and|vs\.?)\b|&", re.IGNORECASE)
_OUT_OF_TEN_RE = re.compile(r"\s*/\s*10\b")
_ONLY_NUMBERS_RE = re.compile(r"[\s\d.,;:()\[\]|-]*")
_TUPLE_RE = re.compile(r"\(\s*" + _NUMBER + r"\s*,\s*" + _NUMBER + r"\s*\)")


def parse_review_scores(review: str) -> list[float]:
    """The two scores of an original Vicuna review: the first line's two numbers, else the last `(x, y)`.

    Returns [-1, -1] when neither is there or a score is off the 1-10 scale.
    """
    lines = [line for line in review.splitlines() if line.strip()]
    if lines:
        first = lines[0].replace("*", " ").replace("#", " ")
        first = _OUT_OF_TEN_RE.sub(" ", _LABEL_RE.sub(" ", first))
        numbers = re.findall(_NUMBER, first)
        if len(numbers) == 2 and _ONLY_NUMBERS_RE.fullmatch(first):
            return _on_scale([float(n) for n in numbers])
    tuples = _TUPLE_RE.findall(review)
    if tuples:
        return _on_scale([float(x) for x in tuples[-1]])
    return [ERROR_SCORE, ERROR_SCORE]


def _on_scale(scores: list[float]) -> list[float]:
    if all(MIN_SCORE <= s <= MAX_SCORE for s in scores):
        return scores
    return [ERROR_SCORE, ERROR_SCORE]
