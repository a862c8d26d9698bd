"""Simulated pairwise judgments with a known truth, in the judge's row format.

Each model has a strength theta (log-odds). In every game the first-named model scores 1, 1/2 or 0 with
expected score sigmoid(theta_1 - theta_2 + length_bias * tanh(length difference / length_scale)), ties
taking probability `tie` where the expectation allows it. So Bradley-Terry with ties as half a win is the
right model, and its truth is known: rating difference = 400 * log10(e) * (theta_1 - theta_2). Each pair
of a question is judged twice (both orders), each order drawn independently.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

ELO_PER_LOGIT = 400.0 / math.log(10.0)


def true_ratings(strengths: dict[str, float], anchor: str) -> dict[str, float]:
    return {m: 1000.0 + ELO_PER_LOGIT * (t - strengths[anchor]) for m, t in strengths.items()}


def _draw(rng: np.random.Generator, expected: float, tie: float) -> float:
    tie = min(tie, 2 * min(expected, 1 - expected))  # keeps E[score] = expected
    u = rng.random()
    return 1.0 if u < expected - tie / 2 else 0.5 if u < expected + tie / 2 else 0.0


def simulate_rows(
    strengths: dict[str, float],
    n_questions: int,
    seed: int,
    *,
    baseline: str | None = None,
    tie: float = 0.2,
    lengths: dict[str, tuple[float, float]] | None = None,
    length_bias: float = 0.0,
    length_scale: float = 1.0,
    strong_share: float = 0.0,
    judge: str = "synthetic-judge",
) -> list[dict[str, Any]]:
    """Pairwise rows (all pairs, or every model against `baseline`) for questions 1..n_questions.

    lengths: per model (mean, sd) of reply length in characters. strong_share: the share of decisive games
    reported as five-level strong verdicts (then rows carry g1_verdict / g2_verdict).
    """
    rng = np.random.default_rng(seed)
    models = list(strengths)
    if baseline is None:
        pairs = list(itertools.combinations(models, 2))
    else:
        pairs = [(m, baseline) for m in models if m != baseline]
    lengths = lengths or {m: (500.0, 0.0) for m in models}
    rows = []
    for q in range(1, n_questions + 1):
        for m1, m2 in pairs:
            n1, n2 = (max(1, round(rng.normal(*lengths[m]))) for m in (m1, m2))
            logit = strengths[m1] - strengths[m2] + length_bias * math.tanh((n1 - n2) / length_scale)
            expected = 1.0 / (1.0 + math.exp(-logit))
            row: dict[str, Any] = {
                "question_id": q,
                "model_1": m1,
                "model_2": m2,
                "judge": [judge, "pair"],
                "judge_host": "judge.example:443",
                "judge_prompt_sha256": "0" * 64,
                "answer_lengths": [n1, n2],
                "turn": 1,
                "tstamp": 0.0,
            }
            for game, first_is_a in (("g1", True), ("g2", False)):
                score = _draw(rng, expected, tie)
                row[f"{game}_winner"] = {1.0: "model_1", 0.5: "tie", 0.0: "model_2"}[score]
                if strong_share:
                    a_won = (score == 1.0) == first_is_a
                    op = ">>" if score != 0.5 and rng.random() < strong_share else ">"
                    verdict = "A" + op + "B" if a_won else "B" + op + "A"
                    row[f"{game}_verdict"] = "A=B" if score == 0.5 else verdict
                row[f"{game}_user_prompt"] = row[f"{game}_judgment"] = ""
            rows.append(row)
    return rows
