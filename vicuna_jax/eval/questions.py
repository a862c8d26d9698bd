"""Question and answer files in FastChat's formats, checked before a judging run spends anything.

Questions: MT-bench style `{"question_id", "category", "turns": [...]}` or the older Vicuna style
`{"question_id", "text", "category"}`; an optional `required_temperature` (FastChat's newer files) fixes the
sampling temperature of that question's answers. Answers (and reference answers): `{"question_id",
"answer_id", "model_id", "choices": [{"index", "turns": [...]}], "tstamp"}`, or the older
`{"question_id", "text", ...}`.
Question ids may be ints or strings; they are matched as strings so "7" in one file finds 7 in another.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from vicuna_jax.eval.jsonl import EvalInputError, iter_jsonl, require

ERROR_ANSWER = "$ERROR$"  # FastChat's marker for an answer that could not be produced


@dataclasses.dataclass(frozen=True)
class Question:
    question_id: int | str  # as written in the question file; echoed into every output row
    category: str
    turns: tuple[str, ...]
    required_temperature: float | None = None  # answers to this question must be sampled at it

    @property
    def key(self) -> str:
        return str(self.question_id)


def _check_turns(turns: Any, path: str, lineno: int, key: str) -> tuple[str, ...]:
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
        raise EvalInputError(f"{path}:{lineno}: key '{key}' should be a non-empty list of strings")
    return tuple(turns)


def load_questions(path: str) -> list[Question]:
    """Reads a question file (either format); raises EvalInputError on duplicates or missing keys."""
    questions: list[Question] = []
    seen: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        qid = require(obj, "question_id", path, lineno, (int, str))
        category = require(obj, "category", path, lineno, str)
        if "turns" in obj:
            turns = _check_turns(obj["turns"], path, lineno, "turns")
        elif "text" in obj:
            turns = (require(obj, "text", path, lineno, str),)
        else:
            raise EvalInputError(
                f"{path}:{lineno}: missing key 'turns' (or 'text' for the older Vicuna format)"
            )
        required = obj.get("required_temperature")
        if required is not None and (isinstance(required, bool) or not isinstance(required, int | float)
                                     or required < 0):
            raise EvalInputError(f"{path}:{lineno}: key 'required_temperature' should be a number >= 0")
        if str(qid) in seen:
            raise EvalInputError(
                f"{path}:{lineno}: duplicate question_id {qid!r} (first on line {seen[str(qid)]})"
            )
        seen[str(qid)] = lineno
        questions.append(Question(qid, category, turns, None if required is None else float(required)))
    if not questions:
        raise EvalInputError(f"{path}: no questions")
    return questions


def _answer_turns(obj: dict[str, Any], path: str, lineno: int) -> tuple[str, ...]:
    if "choices" in obj:
        choices = obj["choices"]
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise EvalInputError(f"{path}:{lineno}: key 'choices' should be a non-empty list of objects")
        if "turns" not in choices[0]:
            raise EvalInputError(f"{path}:{lineno}: missing key 'choices[0].turns'")
        return _check_turns(choices[0]["turns"], path, lineno, "choices[0].turns")
    if "text" in obj:
        return (require(obj, "text", path, lineno, str),)
    raise EvalInputError(f"{path}:{lineno}: missing key 'choices' (or 'text' for the older Vicuna format)")


def load_answers(path: str) -> tuple[str, dict[str, tuple[str, ...]]]:
    """Reads one model's answer file; returns (model id, {question id: answer turns}).

    The model id comes from the rows' `model_id` (one per file) or, when absent, the file name.
    """
    answers: dict[str, tuple[str, ...]] = {}
    model_ids: set[str] = set()
    for lineno, obj in iter_jsonl(path):
        qid = str(require(obj, "question_id", path, lineno, (int, str)))
        if qid in answers:
            raise EvalInputError(f"{path}:{lineno}: duplicate answer for question_id {qid}")
        if "model_id" in obj:
            model_ids.add(str(require(obj, "model_id", path, lineno, str)))
        answers[qid] = _answer_turns(obj, path, lineno)
    if not answers:
        raise EvalInputError(f"{path}: no answers")
    if len(model_ids) > 1:
        raise EvalInputError(
            f"{path}: answers from several models {sorted(model_ids)}; use one file per model"
        )
    model = model_ids.pop() if model_ids else os.path.splitext(os.path.basename(path))[0]
    return model, answers


def load_answer_files(paths: list[str]) -> dict[str, dict[str, tuple[str, ...]]]:
    """Reads several answer files; {model id: {question id: turns}}. Two files for one model is an error."""
    by_model: dict[str, dict[str, tuple[str, ...]]] = {}
    origin: dict[str, str] = {}
    for path in paths:
        model, answers = load_answers(path)
        if model in by_model:
            raise EvalInputError(f"{path}: model '{model}' already came from {origin[model]}")
        by_model[model] = answers
        origin[model] = path
    return by_model


def load_references(path: str) -> dict[str, tuple[str, ...]]:
    """Reads reference answers (answer format, any model id); {question id: reference turns}."""
    _, answers = load_answers(path)
    return answers


def check_answers_cover(
    questions: list[Question],
    answers: dict[str, dict[str, tuple[str, ...]]],
    models: list[str],
    *,
    first_turn_only: bool = False,
) -> None:
    """Fails before any request when a model lacks an answer (or turns) for a question to be judged."""
    problems = []
    for model in models:
        got = answers[model]
        missing = [q.question_id for q in questions if q.key not in got]
        need = (lambda q: 1) if first_turn_only else (lambda q: len(q.turns))
        short = [q.question_id for q in questions if q.key in got and len(got[q.key]) < need(q)]
        if missing:
            problems.append(f"model '{model}' has no answer for question_id {_few(missing)}")
        if short:
            problems.append(f"model '{model}' answered fewer turns than asked for question_id {_few(short)}")
    if problems:
        raise EvalInputError("; ".join(problems))


def _few(items: list[Any], limit: int = 8) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f" (and {len(items) - limit} more)" if len(items) > limit else "")
