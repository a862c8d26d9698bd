"""Figures from a judgment file: mean scores, win / loss / tie with adjusted win rate, relative total scores.

Conventions (FastChat's, stated so the numbers can be checked by hand):
  - single: rows scored -1 (unreadable) are left out of means and counted as errors.
  - pairwise: a pair judged twice with swapped positions counts as a win only when both games agree;
    disagreeing games (position bias) count as a tie, and a game with no verdict drops the row as an error.
  - adjusted win rate = (win + 0.5 * tie) / (win + loss + tie).
  - relative total = sum of a model's scores / sum of the baseline's, over the items both were scored on
    (the Vicuna blog's "92% of ChatGPT").
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable
from typing import Any

from vicuna_jax.eval.jsonl import EvalInputError, iter_jsonl
from vicuna_jax.eval.matches import is_unparsed, row_judge, row_judge_identity, row_key, row_kind, row_prompt
from vicuna_jax.eval.verdicts import ERROR_SCORE

ALL = "(all)"


@dataclasses.dataclass
class Judgments:
    kind: str  # "single" | "pairwise" | "vicuna"
    rows: list[dict[str, Any]]
    judge: str | None  # "model @ host", or several joined by "; " when mixing was asked for
    duplicates: int = 0
    mixed: bool = False  # rows of several judges (or prompt texts) are in one table, as asked
    prompts: dict[str, str] = dataclasses.field(default_factory=dict)  # prompt name -> text hash


def load_judgments(path: str, judge_model: str | None = None, *, mix_judges: bool = False) -> Judgments:
    """Reads a judgment file, detects its kind, keeps one judge's rows, drops repeated keys.

    A judge is the model and the endpoint it was reached at; rows of several judges, or of one prompt name
    with different texts, are refused unless `mix_judges`. Of repeated keys a readable judgment wins over
    an unreadable one (a --rejudge_errors run appends the redo), otherwise the first.
    """
    kinds: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    for lineno, row in iter_jsonl(path):
        try:
            kind = row_kind(row)
        except EvalInputError as e:
            raise EvalInputError(f"{path}:{lineno}: {e}") from None
        kinds.setdefault(kind, lineno)
        if len(kinds) > 1:
            raise EvalInputError(
                f"{path}:{lineno}: a {kind} judgment in a file of {next(iter(kinds))} judgments"
            )
        rows.append(row)
    if not rows:
        raise EvalInputError(f"{path}: no judgments")
    kind = next(iter(kinds))
    if judge_model is not None:
        kept = [r for r in rows if judge_model in (row_judge(r), row_judge_identity(r))]
        if not kept:
            raise EvalInputError(
                f"{path}: no judgments by '{judge_model}' (judges here: {', '.join(_judges(rows))})"
            )
        rows = kept
    judges = _judges(rows)
    prompts = _prompt_versions(rows)
    clashes = {name: hashes for name, hashes in prompts.items() if len(hashes) > 1}
    if not mix_judges:
        if len(judges) > 1:
            raise EvalInputError(
                f"{path}: judgments by several judges ({', '.join(judges)}); pick one with --judge_model, "
                "or pass --mix_judges to put them in one table anyway"
            )
        if clashes:
            name, hashes = next(iter(clashes.items()))
            raise EvalInputError(
                f"{path}: judge prompt '{name}' appears with {len(hashes)} different texts (sha256 "
                f"{', '.join(h[:12] for h in sorted(hashes))}); judge again with one prompt file, or pass "
                "--mix_judges to put them in one table anyway"
            )
    unique: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        key = row_key(r)
        if key not in unique or (is_unparsed(unique[key]) and not is_unparsed(r)):
            unique[key] = r
    judge = "; ".join(judges) if judges else None
    mixed = len(judges) > 1 or bool(clashes)
    versions = {name: ",".join(sorted(h[:12] for h in hashes)) for name, hashes in prompts.items()}
    return Judgments(kind, list(unique.values()), judge, len(rows) - len(unique), mixed, versions)


def _judges(rows: list[dict[str, Any]]) -> list[str]:
    return sorted({row_judge_identity(r) for r in rows} - {""})


def _prompt_versions(rows: list[dict[str, Any]]) -> dict[str, set[str]]:
    versions: dict[str, set[str]] = {}
    for r in rows:
        name, digest = row_prompt(r)
        if name and digest:
            versions.setdefault(name, set()).add(digest)
    return versions


# ---------------------------------------------------------------------------------------------- single scores
@dataclasses.dataclass
class MeanScore:
    model: str
    mean: float
    n: int
    errors: int
    per_turn: dict[int, float]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def single_means(rows: list[dict[str, Any]]) -> list[MeanScore]:
    """Mean score per model (overall and per turn), best first."""
    scores: dict[str, list[float]] = collections.defaultdict(list)
    by_turn: dict[tuple[str, int], list[float]] = collections.defaultdict(list)
    errors: collections.Counter[str] = collections.Counter()
    for r in rows:
        if r["score"] == ERROR_SCORE:
            errors[r["model"]] += 1
            scores.setdefault(r["model"], [])
            continue
        scores[r["model"]].append(float(r["score"]))
        by_turn[r["model"], int(r.get("turn", 1))].append(float(r["score"]))
    table = []
    for model, values in scores.items():
        turns = sorted(t for m, t in by_turn if m == model)
        per_turn = {t: _mean(by_turn[model, t]) for t in turns}
        table.append(MeanScore(model, _mean(values), len(values), errors[model], per_turn))
    return sorted(table, key=lambda s: (-s.mean if s.n else float("inf"), s.model))


def single_category_means(
    rows: list[dict[str, Any]], categories: dict[str, str]
) -> dict[str, dict[str, float]]:
    """{model: {category: mean score}} over readable scores."""
    values: dict[str, dict[str, list[float]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for r in rows:
        if r["score"] != ERROR_SCORE:
            values[r["model"]][_category(r, categories)].append(float(r["score"]))
    return {m: {c: _mean(v) for c, v in cats.items()} for m, cats in values.items()}


def _category(row: dict[str, Any], categories: dict[str, str]) -> str:
    return categories.get(str(row["question_id"]), "unknown")


# ------------------------------------------------------------------------------------------------ outcomes
@dataclasses.dataclass(frozen=True)
class Outcome:
    """One comparison from `model`'s side: result is "win", "loss" or "tie"."""

    model: str
    opponent: str
    question_key: str
    turn: int
    result: str
    inconsistent: bool = False


def _flip(result: str) -> str:
    return {"win": "loss", "loss": "win"}.get(result, result)


def against_baseline(outcomes: list[Outcome], baseline: str) -> list[Outcome]:
    """Outcomes seen from the model facing the baseline; comparisons without the baseline are dropped."""
    out = []
    for o in outcomes:
        if o.opponent == baseline:
            out.append(o)
        elif o.model == baseline:
            out.append(dataclasses.replace(o, model=o.opponent, opponent=baseline, result=_flip(o.result)))
    return out


def pairwise_outcomes(rows: list[dict[str, Any]]) -> tuple[list[Outcome], int]:
    """Outcomes from model_1's side, plus the count of rows dropped for a missing verdict."""
    outcomes, errors = [], 0
    for r in rows:
        g1, g2 = r["g1_winner"], r["g2_winner"]
        if "error" in (g1, g2):
            errors += 1
            continue
        inconsistent = g1 != g2
        if inconsistent or g1 == "tie":
            result = "tie"
        else:
            result = "win" if g1 == "model_1" else "loss"
        outcomes.append(
            Outcome(
                r["model_1"], r["model_2"], str(r["question_id"]), int(r.get("turn", 1)), result, inconsistent
            )
        )
    return outcomes, errors


ScorePair = tuple[
    str, str, str, int, float, float
]  # model, baseline, question key, turn, own score, baseline's


def score_outcomes(pairs: Iterable[ScorePair]) -> list[Outcome]:
    """Outcomes from graded pairs: the higher score wins, equal scores tie."""
    out = []
    for model, opponent, qkey, turn, own, other in pairs:
        result = "win" if own > other else "loss" if own < other else "tie"
        out.append(Outcome(model, opponent, qkey, turn, result))
    return out


def vicuna_score_pairs(rows: list[dict[str, Any]], baseline: str | None) -> tuple[list[ScorePair], int]:
    """Score pairs from reviews, seen from the model that is not the baseline, and the unreadable count.

    The baseline defaults to each review's Assistant 1; a review with the baseline second is turned around.
    """
    out, errors = [], 0
    for r in rows:
        m1, m2, (s1, s2) = r["model_1"], r["model_2"], r["score"]
        if baseline is not None and m2 == baseline:
            m1, m2, s1, s2 = m2, m1, s2, s1
        elif baseline is not None and m1 != baseline:
            continue
        if ERROR_SCORE in (s1, s2):
            errors += 1
            continue
        out.append((m2, m1, str(r["question_id"]), 1, float(s2), float(s1)))
    return out, errors


def single_score_pairs(rows: list[dict[str, Any]], baseline: str) -> list[ScorePair]:
    """Each model's grade next to the baseline's on the same question and turn (items both were graded on)."""
    grade = {
        (r["model"], str(r["question_id"]), int(r.get("turn", 1))): float(r["score"])
        for r in rows
        if r["score"] != ERROR_SCORE
    }
    out = []
    for (model, qkey, turn), score in grade.items():
        if model != baseline and (baseline, qkey, turn) in grade:
            out.append((model, baseline, qkey, turn, score, grade[baseline, qkey, turn]))
    return out


@dataclasses.dataclass
class WinLoss:
    model: str
    opponent: str
    win: int = 0
    loss: int = 0
    tie: int = 0
    inconsistent: int = 0

    @property
    def n(self) -> int:
        return self.win + self.loss + self.tie

    @property
    def win_rate(self) -> float:
        return self.win / self.n if self.n else float("nan")

    @property
    def loss_rate(self) -> float:
        return self.loss / self.n if self.n else float("nan")

    @property
    def adjusted_win_rate(self) -> float:
        return (self.win + 0.5 * self.tie) / self.n if self.n else float("nan")


def win_loss(
    outcomes: list[Outcome],
    *,
    both_sides: bool,
    per_opponent: bool = False,
    categories: dict[str, str] | None = None,
) -> dict[tuple[str, str], WinLoss]:
    """Tallies keyed by (model, opponent or ALL) or, with categories, (model, category).

    both_sides: also count each outcome from the opponent's side (pairwise_all: every model is a player).
    """
    tallies: dict[tuple[str, str], WinLoss] = {}
    for o in outcomes:
        sides = [(o.model, o.opponent, o.result)]
        if both_sides:
            sides.append((o.opponent, o.model, _flip(o.result)))
        for model, opponent, result in sides:
            column = (
                categories.get(o.question_key, "unknown")
                if categories is not None
                else (opponent if per_opponent else ALL)
            )
            t = tallies.setdefault((model, column), WinLoss(model, column))
            setattr(t, result, getattr(t, result) + 1)
            t.inconsistent += o.inconsistent
    return tallies


# ------------------------------------------------------------------------------------------- relative totals
@dataclasses.dataclass
class RelativeTotal:
    model: str
    baseline: str
    total: float = 0.0
    baseline_total: float = 0.0
    n: int = 0

    @property
    def ratio(self) -> float:
        return self.total / self.baseline_total if self.baseline_total else float("nan")


def relative_totals(
    pairs: Iterable[ScorePair], categories: dict[str, str] | None = None
) -> dict[tuple[str, str, str], RelativeTotal]:
    """Summed scores keyed by (model, baseline, category or ALL)."""
    totals: dict[tuple[str, str, str], RelativeTotal] = {}
    for model, baseline, qkey, _, own, base in pairs:
        group = categories.get(qkey, "unknown") if categories is not None else ALL
        t = totals.setdefault((model, baseline, group), RelativeTotal(model, baseline))
        t.total += own
        t.baseline_total += base
        t.n += 1
    return totals
