"""Bradley-Terry ratings, bootstrap intervals and length control against simulated judges with a known truth,
and the fit against an independent implementation (Hunter's MM algorithm, written here from scratch)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from eval_samples import write_jsonl
from synthetic_judgments import ELO_PER_LOGIT, simulate_rows, true_ratings

from vicuna_jax.eval.ratings import bradley_terry, games_from_rows, length_controlled, win_rate_matrix
from vicuna_jax.eval.report import write_report


def mm_bradley_terry(rows: list[dict[str, Any]], anchor: str, strong_weight: float) -> dict[str, float]:
    """Elo ratings by Hunter's (2004) MM iteration: pi_i <- W_i / sum_j N_ij / (pi_i + pi_j), with its own
    reading of the rows (each order a game, ties half to each, strong verdicts weighted)."""
    models = sorted({r["model_1"] for r in rows} | {r["model_2"] for r in rows})
    idx = {m: i for i, m in enumerate(models)}
    wins = np.zeros((len(models), len(models)))
    for r in rows:
        i, j = idx[r["model_1"]], idx[r["model_2"]]
        for game in ("g1", "g2"):
            w = strong_weight if ">>" in r.get(f"{game}_verdict", "") else 1.0
            got = {"model_1": 1.0, "tie": 0.5, "model_2": 0.0}[r[f"{game}_winner"]]
            wins[i, j] += w * got
            wins[j, i] += w * (1 - got)
    games = wins + wins.T
    pi = np.ones(len(models))
    for _ in range(200_000):
        new = wins.sum(axis=1) / (games / (pi[:, None] + pi[None, :])).sum(axis=1)
        new /= new[idx[anchor]]
        done = np.max(np.abs(np.log(new) - np.log(pi))) < 1e-13
        pi = new
        if done:
            break
    return {m: 1000 + ELO_PER_LOGIT * math.log(pi[idx[m]]) for m in models}


def ratings_of(table) -> dict[str, float]:
    return {r.model: r.rating for r in table.ratings}


def test_recovers_the_order_of_simulated_models() -> None:
    strengths = {"e": -0.7, "base": 0.0, "c": 0.35, "b": 0.7, "a": 1.05}
    rows = simulate_rows(strengths, n_questions=200, seed=7)
    table = bradley_terry(games_from_rows(rows), "base", rounds=200)
    assert [r.model for r in table.ratings] == ["a", "b", "c", "base", "e"]
    truth = true_ratings(strengths, "base")
    assert ratings_of(table)["base"] == 1000.0
    for r in table.ratings:
        assert abs(r.rating - truth[r.model]) < 45  # ~120 rating points separate neighbours
        assert r.model == "base" or r.lower < r.rating < r.upper


def test_bootstrap_intervals_cover_the_truth_at_the_stated_rate() -> None:
    """150 simulated evaluations (3 models, 80 questions, all pairs, both orders, 20% ties), 200 bootstrap
    rounds each: the two non-anchor models' 95% intervals must cover their true ratings about 95% of the
    time. A binomial(300, 0.95) lies in [0.91, 0.98] 99% of the time; the band allows for percentile
    intervals running a little short at this size."""
    strengths = {"base": 0.0, "m1": 0.3, "m2": -0.4}
    truth = true_ratings(strengths, "base")
    covered = []
    for seed in range(150):
        games = games_from_rows(simulate_rows(strengths, 80, seed))
        table = bradley_terry(games, "base", rounds=200, seed=seed)
        covered += [r.lower <= truth[r.model] <= r.upper for r in table.ratings if r.model != "base"]
    rate = sum(covered) / len(covered)
    print(f"95% bootstrap interval coverage over {len(covered)} intervals: {rate:.3f}")
    assert 0.88 <= rate <= 0.99


@pytest.mark.parametrize("strong_share", [0.0, 0.4])
def test_fit_agrees_with_an_independent_mm_implementation(strong_share: float) -> None:
    strengths = {"base": 0.0, "x": 0.5, "y": -0.3, "z": 1.1}
    rows = simulate_rows(strengths, 60, seed=3, strong_share=strong_share)
    games = games_from_rows(rows)
    reference = mm_bradley_terry(rows, "base", strong_weight=3.0)
    exact = ratings_of(bradley_terry(games, "base", rounds=0, ridge=0.0))
    assert max(abs(exact[m] - reference[m]) for m in reference) < 1e-6
    default = ratings_of(bradley_terry(games, "base", rounds=0))  # with the tiny ridge
    assert max(abs(default[m] - reference[m]) for m in reference) < 0.05


def test_a_strong_verdict_counts_three_games() -> None:
    """By hand: A beats B strongly in both orders of question 1 (3 + 3 games), B beats A narrowly in both
    orders of question 2 (1 + 1): theta_A - theta_B = log(6 / 2), so A is 400 * log10(3) = 190.85 above B."""
    rows = [
        {"question_id": 1, "model_1": "A", "model_2": "B", "g1_winner": "model_1", "g2_winner": "model_1",
         "g1_verdict": "A>>B", "g2_verdict": "B>>A"},
        {"question_id": 2, "model_1": "A", "model_2": "B", "g1_winner": "model_2", "g2_winner": "model_2",
         "g1_verdict": "B>A", "g2_verdict": "A>B"},
    ]  # fmt: skip
    table = bradley_terry(games_from_rows(rows), "B", rounds=0, ridge=0.0)
    assert ratings_of(table) == pytest.approx({"A": 1000 + 400 * math.log10(3), "B": 1000.0}, abs=1e-6)
    assert table.ratings[0].win_rate == pytest.approx(0.75)  # sigmoid(log 3)
    models, matrix = win_rate_matrix(games_from_rows(rows))
    assert models == ["A", "B"] and matrix[0, 1] == pytest.approx(0.75) and math.isnan(matrix[0, 0])


def test_length_control_removes_a_planted_length_bias() -> None:
    """A judge that adds tanh(length difference / scale) to the log-odds. 'verbose' is exactly as good as
    the baseline but writes longer replies; 'better' is truly better (sigmoid(0.6) = 64.6%) at the
    baseline's length. Length control brings 'verbose' back to 50% and leaves 'better' where it is."""
    lengths = {"base": (500.0, 250.0), "verbose": (900.0, 250.0), "better": (500.0, 250.0)}
    rows = simulate_rows(
        {"base": 0.0, "verbose": 0.0, "better": 0.6},
        n_questions=600,
        seed=11,
        baseline="base",
        lengths=lengths,
        length_bias=1.0,
        length_scale=250.0 * math.sqrt(2),
    )
    lc = {r.model: r for r in length_controlled(games_from_rows(rows), "base", rounds=200)}
    print({m: (round(r.win_rate, 3), round(r.lc_win_rate, 3)) for m, r in lc.items()})
    assert lc["verbose"].win_rate > 0.6  # the planted bias
    assert abs(lc["verbose"].lc_win_rate - 0.5) < 0.04 and lc["verbose"].lower < 0.5 < lc["verbose"].upper
    assert lc["verbose"].length_slope > 0.5 and lc["verbose"].mean_length_diff > 300
    assert abs(lc["better"].lc_win_rate - 1 / (1 + math.exp(-0.6))) < 0.04


def test_report_shows_ratings_intervals_and_length_control(tmp_path: Path) -> None:
    lengths = {"base": (600.0, 250.0), "strong": (600.0, 250.0), "padded": (900.0, 250.0)}
    rows = simulate_rows(
        {"base": 0.0, "strong": 1.5, "padded": 0.0},
        n_questions=150,
        seed=5,
        baseline="base",
        lengths=lengths,
        length_bias=1.0,
        length_scale=350.0,
    )
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    report = write_report(path, baseline="base", output_dir=str(tmp_path / "r"), bootstrap_rounds=200)
    title, header, table = next(t for t in report.tables if t[0].startswith("Bradley-Terry ratings"))
    assert header[:3] == ["model", "rating", "95% CI"]
    by_model = {r[0]: r for r in table}
    assert [r[0] for r in table][0] == "strong" and by_model["base"][1] == "1000"
    lc_title, lc_header, lc_rows = next(t for t in report.tables if t[0].startswith("Length-controlled"))
    lc = {r[0]: dict(zip(lc_header, r, strict=True)) for r in lc_rows}
    percent = lambda text: float(text.rstrip("%"))  # noqa: E731
    low, high = (percent(x) for x in lc["padded"]["95% CI"].strip("[]").split(", "))
    assert percent(lc["padded"]["win rate"]) > 55 and low < 50 < high  # biased raw; the truth is in the CI
    assert percent(lc["padded"]["length-controlled"]) < percent(lc["padded"]["win rate"]) - 5
    assert (tmp_path / "r" / "win_rate_matrix.png").read_bytes()[:4] == b"\x89PNG"
    summary = (tmp_path / "r" / "summary.md").read_text()
    assert "## Bradley-Terry ratings" in summary and "![win_rate_matrix](win_rate_matrix.png)" in summary


def test_reply_lengths_can_come_from_the_answer_files(tmp_path: Path) -> None:
    """Rows without answer_lengths (FastChat's) get them from --answer_files; without either, a note says why
    there is no length-controlled column."""
    rows = simulate_rows({"base": 0.0, "m": 0.2}, n_questions=30, seed=1, baseline="base",
                         lengths={"base": (300.0, 100.0), "m": (400.0, 100.0)})  # fmt: skip
    lengths = {(r["question_id"], r["model_1"]): r["answer_lengths"] for r in rows}
    for r in rows:
        del r["answer_lengths"]
    path = write_jsonl(tmp_path / "fastchat.jsonl", rows)
    options = {"baseline": "base", "make_plots": False, "bootstrap_rounds": 20}
    plain = write_report(path, output_dir=str(tmp_path / "a"), **options)
    assert not any(t[0].startswith("Length-controlled") for t in plain.tables)
    assert any("do not record reply lengths" in n for n in plain.notes)
    answers = {}
    for model, side in (("m", 0), ("base", 1)):
        answers[model] = write_jsonl(tmp_path / f"{model}.jsonl", [
            {"question_id": q, "model_id": model, "choices": [{"index": 0, "turns": ["x" * n[side]]}]}
            for (q, _), n in sorted(lengths.items())
        ])  # fmt: skip
    filled = write_report(path, output_dir=str(tmp_path / "b"), answer_files=[*answers.values()], **options)
    _, header, cells = next(t for t in filled.tables if t[0].startswith("Length-controlled"))
    row = dict(zip(header, cells[0], strict=True))
    mean_diff = sum(a - b for a, b in lengths.values()) / len(lengths)
    assert row["model"] == "m" and row["mean length difference"] == f"{mean_diff:+.0f} chars"
