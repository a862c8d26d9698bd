"""What to judge: one Match per (question, turn, model or model pair), each with its prompt chosen up front.

Everything that can be wrong with the inputs (a missing answer, a prompt that cannot show a turn) surfaces
here, before the first paid request. Each match has a key that also identifies its output row, which is how
a rerun knows what is already done.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

from absl import logging

from vicuna_jax.eval.jsonl import EvalInputError
from vicuna_jax.eval.prompts import JudgePrompt, check_turn_supported, select_prompt
from vicuna_jax.eval.questions import ERROR_ANSWER, Question
from vicuna_jax.eval.verdicts import ERROR_SCORE

MODES = ("single", "pairwise_baseline", "pairwise_all", "vicuna")
DEFAULT_REFERENCE_CATEGORIES = ("math", "coding", "reasoning")

Answers = dict[str, dict[str, tuple[str, ...]]]  # model -> question key -> turns


def mode_kind(mode: str) -> str:
    """The kind of judgment rows a mode writes."""
    return "vicuna" if mode == "vicuna" else "single" if mode == "single" else "pairwise"


@dataclasses.dataclass(frozen=True)
class Match:
    kind: str  # "single" | "pairwise" | "vicuna"
    question: Question
    models: tuple[str, ...]  # (model,) or (model_1, model_2)
    answers: tuple[tuple[str, ...], ...]  # answer turns, aligned with models
    prompt: JudgePrompt
    turn: int = 1
    reference: tuple[str, ...] | None = None

    def key(self, judge_model: str) -> tuple[Any, ...]:
        return match_key(self.kind, self.question.key, self.models, self.turn, judge_model)

    def failed_answers(self) -> list[str]:
        """The models whose answer shown to the judge (turns up to this one) is FastChat's $ERROR$."""
        shown = zip(self.models, self.answers, strict=True)
        return [m for m, turns in shown if ERROR_ANSWER in turns[: self.turn]]


def match_key(
    kind: str, question_key: str, models: Sequence[str], turn: int, judge_model: str
) -> tuple[Any, ...]:
    """Pairs are unordered for pairwise (both orders are judged anyway) but ordered for Vicuna reviews."""
    if kind == "single":
        return ("single", question_key, models[0], int(turn), judge_model)
    if kind == "pairwise":
        return ("pairwise", question_key, tuple(sorted(models)), int(turn), judge_model)
    return ("vicuna", question_key, models[0], models[1], judge_model)


def row_kind(row: dict[str, Any]) -> str:
    """The kind of a judgment row: 'single', 'pairwise' or 'vicuna'; EvalInputError for anything else."""
    if "g1_winner" in row:
        return "pairwise"
    if "model_1" in row and isinstance(row.get("score"), list):
        return "vicuna"
    if "model" in row and "score" in row:
        return "single"
    raise EvalInputError(f"not a judgment row (keys: {', '.join(sorted(row))})")


def row_judge(row: dict[str, Any]) -> str:
    """The judge model of a row ('' for FastChat's older review rows, which do not say)."""
    judge = row.get("judge", "")
    return str(judge[0]) if isinstance(judge, list) and judge else str(judge)


def row_judge_identity(row: dict[str, Any]) -> str:
    """Who judged: the model, and the endpoint when the row records it ("gpt-4 @ api.openai.com")."""
    host = row.get("judge_host")
    return f"{row_judge(row)} @ {host}" if host else row_judge(row)


def row_prompt(row: dict[str, Any]) -> tuple[str, str]:
    """(prompt name, prompt text hash); either is '' when the row does not record it."""
    judge = row.get("judge")
    name = str(judge[1]) if isinstance(judge, list) and len(judge) > 1 else ""
    return name, str(row.get("judge_prompt_sha256", ""))


def is_unparsed(row: dict[str, Any]) -> bool:
    """True for a row whose judgment could not be read (score -1 or verdict 'error')."""
    if "g1_winner" in row:
        return "error" in (row["g1_winner"], row["g2_winner"])
    score = row["score"]
    return (score[0] if isinstance(score, list) else score) == ERROR_SCORE


def row_verdict_levels(row: dict[str, Any]) -> int:
    """5 for a pairwise row with Arena-Hard-style verdicts (it has g1_verdict), else 3."""
    return 5 if "g1_verdict" in row else 3


def row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    kind = row_kind(row)
    qid = str(row["question_id"])
    if kind == "single":
        return match_key(kind, qid, (row["model"],), row.get("turn", 1), row_judge(row))
    return match_key(kind, qid, (row["model_1"], row["model_2"]), row.get("turn", 1), row_judge(row))


def model_pairs(mode: str, models: list[str], baseline: str | None) -> list[tuple[str, str]]:
    """Who meets whom. Against a baseline, the baseline is model_2 (pairwise) or Assistant 1 (Vicuna review,
    as in the original blog, where ChatGPT's answer came first)."""
    if mode == "pairwise_all" or (mode == "vicuna" and baseline is None):
        if len(models) < 2:
            raise EvalInputError(f"--mode={mode} needs answers from at least two models, got {models}")
        return list(itertools.combinations(models, 2))
    if baseline is None:
        raise EvalInputError(f"--mode={mode} needs --baseline_model")
    others = [m for m in models if m != baseline]
    if not others:
        raise EvalInputError(f"--mode={mode}: no model to compare with the baseline '{baseline}'")
    if mode == "vicuna":
        return [(baseline, m) for m in others]
    return [(m, baseline) for m in others]


def _reference_for(
    question: Question,
    turn: int,
    references: dict[str, tuple[str, ...]] | None,
    categories: Sequence[str],
    missing: list[Any],
) -> tuple[str, ...] | None:
    if question.category not in categories:
        return None
    ref = (references or {}).get(question.key)
    if ref is None or len(ref) < turn:
        if references is not None:
            missing.append(question.question_id)
        return None
    return ref


def build_matches(
    mode: str,
    questions: list[Question],
    answers: Answers,
    prompts: list[JudgePrompt],
    *,
    models: list[str],
    baseline: str | None = None,
    references: dict[str, tuple[str, ...]] | None = None,
    reference_categories: Sequence[str] = DEFAULT_REFERENCE_CATEGORIES,
    verdict_levels: int = 3,
) -> list[Match]:
    """All matches of a mode, question-major so an interrupted run has covered every model evenly."""
    if mode not in MODES:
        raise EvalInputError(f"--mode={mode}: expected one of {', '.join(MODES)}")
    for m in [*models, *([baseline] if baseline else [])]:
        if m not in answers:
            raise EvalInputError(f"no answer file for model '{m}' (have: {', '.join(sorted(answers))})")
    missing_refs: list[Any] = []
    matches: list[Match] = []
    if mode == "single":
        for q in questions:
            for turn in range(1, len(q.turns) + 1):
                ref = _reference_for(q, turn, references, reference_categories, missing_refs)
                prompt = select_prompt(prompts, "single", multi_turn=turn > 1, reference=ref is not None)
                check_turn_supported(prompt, turn)
                for m in models:
                    matches.append(Match("single", q, (m,), (answers[m][q.key],), prompt, turn, ref))
    elif mode == "vicuna":
        if any(len(q.turns) > 1 for q in questions):
            logging.warning(
                "--mode=vicuna reviews the first turn only; use single or pairwise for later turns"
            )
        for q in questions:
            prompt = select_prompt(prompts, "vicuna", category=q.category)
            for m1, m2 in model_pairs(mode, models, baseline):
                matches.append(Match("vicuna", q, (m1, m2), (answers[m1][q.key], answers[m2][q.key]), prompt))
    else:
        pairs = model_pairs(mode, models, baseline)
        for q in questions:
            for turn in range(1, len(q.turns) + 1):
                ref = _reference_for(q, turn, references, reference_categories, missing_refs)
                prompt = select_prompt(
                    prompts,
                    "pairwise",
                    multi_turn=turn > 1,
                    reference=ref is not None,
                    verdict_levels=verdict_levels,
                )
                check_turn_supported(prompt, turn)
                for m1, m2 in pairs:
                    pair_answers = (answers[m1][q.key], answers[m2][q.key])
                    matches.append(Match("pairwise", q, (m1, m2), pair_answers, prompt, turn, ref))
    if missing_refs:
        shown = sorted(set(map(str, missing_refs)))
        logging.warning("no reference answer for question_id %s; judging those without one", ", ".join(shown))
    return matches
