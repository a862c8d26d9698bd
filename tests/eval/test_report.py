"""Report figures on hand-made judgment files whose answers were worked out by hand (see each comment)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from eval_samples import write_jsonl

from vicuna_jax.eval.jsonl import EvalInputError
from vicuna_jax.eval.report import write_report
from vicuna_jax.eval.stats import load_judgments, vicuna_score_pairs

REPO = Path(__file__).resolve().parents[2]
CATEGORIES = {1: "generic", 2: "math", 3: "writing", 4: "coding", 5: "fermi"}


def questions(tmp_path: Path) -> str:
    rows = [
        {"question_id": q, "category": c, "turns": ["q?", "again?"] if q == 3 else ["q?"]}
        for q, c in CATEGORIES.items()
    ]
    return write_jsonl(tmp_path / "questions.jsonl", rows)


def single(q: int, model: str, score: float, turn: int = 1, judge: str = "gpt-4") -> dict:
    return {
        "question_id": q,
        "model": model,
        "judge": [judge, "single"],
        "user_prompt": "u",
        "judgment": "j",
        "score": score,
        "turn": turn,
        "tstamp": 0.0,
    }


def pair(q: int, m1: str, m2: str, g1: str, g2: str) -> dict:
    return {
        "question_id": q,
        "model_1": m1,
        "model_2": m2,
        "g1_winner": g1,
        "g2_winner": g2,
        "judge": ["gpt-4", "pair"],
        "g1_user_prompt": "",
        "g1_judgment": "",
        "g2_user_prompt": "",
        "g2_judgment": "",
        "turn": 1,
        "tstamp": 0.0,
    }


def review(q: int, m1: str, m2: str, s1: float, s2: float) -> dict:
    return {"question_id": q, "model_1": m1, "model_2": m2, "text": f"{s1} {s2}\nwhy", "score": [s1, s2]}


def table(report, title_start: str) -> dict[str, list[str]]:
    title, header, rows = next(t for t in report.tables if t[0].startswith(title_start))
    return {r[0]: dict(zip(header, r, strict=True)) for r in rows}


def test_single_report(tmp_path: Path) -> None:
    rows = [
        single(1, "A", 8),
        single(2, "A", 6),
        single(3, "A", 9),
        single(3, "A", -1, turn=2),  # one unreadable
        single(1, "B", 4),
        single(2, "B", 6),
        single(3, "B", 7),
        single(3, "B", 5, turn=2),
        single(1, "B", 1),  # a repeated key: counted once (the first)
    ]
    path = write_jsonl(tmp_path / "single.jsonl", rows)
    report = write_report(
        path, question_file=questions(tmp_path), baseline="B", output_dir=str(tmp_path / "r")
    )
    means = table(report, "Mean score (1-10)")
    # A: (8 + 6 + 9) / 3 = 7.67, one unreadable; B: (4 + 6 + 7 + 5) / 4 = 5.50, turn 1 = 17 / 3, turn 2 = 5.
    assert means["A"] == {
        "model": "A",
        "mean score": "7.67",
        "turn 1": "7.67",
        "turn 2": "-",
        "judged": "3",
        "unreadable": "1",
    }
    assert means["B"] == {
        "model": "B",
        "mean score": "5.50",
        "turn 1": "5.67",
        "turn 2": "5.00",
        "judged": "4",
        "unreadable": "0",
    }
    cats = table(report, "Mean score per category")
    assert (cats["A"]["generic"], cats["A"]["math"], cats["A"]["writing"]) == ("8.00", "6.00", "9.00")
    assert cats["B"]["writing"] == "6.00"  # (7 + 5) / 2
    # Against B on items both were graded on (A's unreadable turn 2 excluded): 8>4 win, 6=6 tie, 9>7 win.
    rel = table(report, "Total score relative to B")["A"]
    assert (rel["total"], rel["baseline total"], rel["relative"]) == ("23.0", "17.0", "135.3%")
    assert (rel["win"], rel["loss"], rel["tie"], rel["adjusted win rate"]) == ("2", "0", "1", "83.3%")
    assert "A scores 135% of B (total 23 vs 17 over 3 items)" in report.headline
    assert "1 repeated judgments were counted once." in report.notes
    summary = (tmp_path / "r" / "summary.md").read_text()
    assert "| A     | 7.67" in summary and "![radar](radar.png)" in summary


def test_pairwise_baseline_report(tmp_path: Path) -> None:
    rows = [
        pair(1, "vicuna", "gpt-3.5", "model_1", "model_1"),  # win
        pair(2, "vicuna", "gpt-3.5", "model_2", "model_2"),  # loss
        pair(3, "vicuna", "gpt-3.5", "tie", "tie"),  # tie
        pair(4, "vicuna", "gpt-3.5", "model_1", "model_2"),  # swap disagrees: tie
        pair(5, "vicuna", "gpt-3.5", "error", "model_1"),  # no verdict: left out
        pair(1, "alpaca", "gpt-3.5", "model_2", "model_2"),
        pair(2, "alpaca", "gpt-3.5", "model_2", "model_2"),
        pair(3, "alpaca", "gpt-3.5", "model_1", "model_1"),
        pair(4, "alpaca", "gpt-3.5", "model_2", "model_1"),
    ]
    path = write_jsonl(tmp_path / "pair.jsonl", rows)
    report = write_report(path, question_file=questions(tmp_path), output_dir=str(tmp_path / "r"))
    t = table(report, "Win / loss / tie against gpt-3.5")  # baseline detected from model_2
    # vicuna: 1 win, 1 loss, 2 ties (1 inconsistent) -> (1 + 0.5 * 2) / 4 = 50%; alpaca (1 + 0.5) / 4 = 37.5%
    assert [
        t["vicuna"][k] for k in ("win", "loss", "tie", "n", "win rate", "adjusted win rate", "inconsistent")
    ] == ["1", "1", "2", "4", "25.0%", "50.0%", "1"]
    assert [t["alpaca"][k] for k in ("win", "loss", "tie", "adjusted win rate")] == ["1", "2", "1", "37.5%"]
    assert list(t) == ["vicuna", "alpaca"]  # ranked by adjusted win rate
    cats = table(report, "Adjusted win rate per category")
    assert (cats["vicuna"]["generic"], cats["vicuna"]["math"], cats["vicuna"]["coding"]) == (
        "100.0%",
        "0.0%",
        "50.0%",
    )
    assert "1 judgments without a readable verdict were left out." in report.notes
    assert {Path(p).name for p in report.plots} == {
        "win_tie_loss.png",
        "by_category.png",
        "radar.png",
        "win_rate_matrix.png",
    }


def test_pairwise_all_report(tmp_path: Path) -> None:
    rows = [
        pair(1, "a", "b", "model_1", "model_1"),
        pair(1, "a", "c", "tie", "tie"),
        pair(1, "b", "c", "model_2", "model_2"),
    ]
    report = write_report(write_jsonl(tmp_path / "all.jsonl", rows), output_dir=str(tmp_path / "r"))
    t = table(report, "Win / loss / tie against all other models")
    # a: win + tie = 75%; b: two losses = 0%; c: tie + win = 75%.
    assert {m: t[m]["adjusted win rate"] for m in t} == {"a": "75.0%", "b": "0.0%", "c": "75.0%"}
    matrix = table(report, "Adjusted win rate of row model")
    assert (matrix["a"]["b"], matrix["b"]["a"], matrix["a"]["c"], matrix["c"]["b"], matrix["a"]["a"]) == (
        "100.0%",
        "0.0%",
        "50.0%",
        "100.0%",
        "-",
    )
    assert "Per-category figures need --question_file." in report.notes
    assert (tmp_path / "r" / "win_tie_loss.png").exists()


def test_pairwise_all_of_two_models_reports_both(tmp_path: Path) -> None:
    rows = [
        pair(1, "a", "b", "model_1", "model_1"),
        pair(2, "a", "b", "model_1", "model_1"),
        pair(3, "a", "b", "model_2", "model_2"),
        pair(4, "a", "b", "model_1", "model_2"),  # inconsistent: a tie
    ]
    report = write_report(write_jsonl(tmp_path / "two.jsonl", rows), output_dir=str(tmp_path / "r"))
    t = table(report, "Win / loss / tie against all other models")
    # a: 2 wins, 1 loss, 1 tie -> 62.5%; b mirrors it: 1 win, 2 losses, 1 tie -> 37.5%.
    assert {m: (t[m]["win"], t[m]["loss"], t[m]["tie"], t[m]["adjusted win rate"]) for m in t} == {
        "a": ("2", "1", "1", "62.5%"),
        "b": ("1", "2", "1", "37.5%"),
    }


def test_vicuna_review_report(tmp_path: Path) -> None:
    rows = [
        review(1, "gpt-3.5", "vicuna-13b", 8, 7),
        review(2, "gpt-3.5", "vicuna-13b", 9, 8),
        review(3, "gpt-3.5", "vicuna-13b", 10, 9),
        review(5, "gpt-3.5", "vicuna-13b", 9, 9),
        review(4, "gpt-3.5", "vicuna-13b", -1, -1),  # unreadable review: left out
        review(1, "gpt-3.5", "alpaca-13b", 8, 4),
        review(2, "gpt-3.5", "alpaca-13b", 9, 6),
        review(3, "gpt-3.5", "alpaca-13b", 10, 5),
        review(5, "gpt-3.5", "alpaca-13b", 9, 10),
    ]
    path = write_jsonl(tmp_path / "review.jsonl", rows)
    report = write_report(path, question_file=questions(tmp_path), output_dir=str(tmp_path / "r"))
    # vicuna 33 / 36 = 91.7%, 0 win 3 loss 1 tie; alpaca 25 / 36 = 69.4%, 1 win 3 loss.
    assert "vicuna-13b scores 92% of gpt-3.5 (total 33 vs 36 over 4 items)" in report.headline
    assert "alpaca-13b scores 69% of gpt-3.5 (total 25 vs 36 over 4 items)" in report.headline
    t = table(report, "Total score relative to gpt-3.5")
    assert [t["vicuna-13b"][k] for k in ("relative", "win", "loss", "tie", "adjusted win rate")] == [
        "91.7%",
        "0",
        "3",
        "1",
        "12.5%",
    ]
    assert t["alpaca-13b"]["adjusted win rate"] == "25.0%"
    cats = table(report, "Total score relative to the baseline, per category")
    assert (
        cats["vicuna-13b vs gpt-3.5"]["generic"] == "87.5%"
        and cats["alpaca-13b vs gpt-3.5"]["fermi"] == "111.1%"
    )
    assert "1 reviews without a readable score pair were left out." in report.notes


def test_vicuna_pairs_turn_around_for_a_named_baseline(tmp_path: Path) -> None:
    rows = [
        review(1, "llama", "gpt-3.5", 4, 8),
        review(2, "gpt-3.5", "llama", 9, 3),
        review(3, "x", "y", 5, 5),
        review(4, "gpt-3.5", "llama", 7, 0),  # a 0 (an empty answer) is a score, not an unreadable review
    ]
    pairs, errors = vicuna_score_pairs(rows, "gpt-3.5")
    assert pairs == [
        ("llama", "gpt-3.5", "1", 1, 4.0, 8.0),
        ("llama", "gpt-3.5", "2", 1, 3.0, 9.0),
        ("llama", "gpt-3.5", "4", 1, 0.0, 7.0),
    ]
    assert errors == 0


def test_judges_and_kinds_are_not_mixed(tmp_path: Path) -> None:
    two_judges = write_jsonl(
        tmp_path / "j.jsonl", [single(1, "A", 8), single(1, "A", 3, judge="local-llama")]
    )
    with pytest.raises(
        EvalInputError, match="several judges \\(gpt-4, local-llama\\); pick one with --judge_model"
    ):
        load_judgments(two_judges)
    assert [r["score"] for r in load_judgments(two_judges, "local-llama").rows] == [3]
    mixed = write_jsonl(tmp_path / "m.jsonl", [single(1, "A", 8), review(1, "a", "b", 1, 2)])
    with pytest.raises(EvalInputError, match="m.jsonl:2: a vicuna judgment in a file of single judgments"):
        load_judgments(mixed)


def test_report_cli(tmp_path: Path) -> None:
    rows = [single(1, "A", 8), single(2, "A", 6), single(1, "B", 4), single(2, "B", 5)]
    path = write_jsonl(tmp_path / "judgments.jsonl", rows)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vicuna_jax.eval.report",
            f"--judgment_file={path}",
            f"--question_file={questions(tmp_path)}",
            "--baseline_model=B",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| A     | 7.00       | 7.00   | 2      | 0          |" in proc.stdout
    assert "A scores 156% of B (total 14 vs 9 over 2 items)" in proc.stdout
    out = tmp_path / "judgments_report"
    for name in ("summary.md", "by_category.png", "win_tie_loss.png"):
        assert (out / name).exists()
    png = (out / "by_category.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    bad = subprocess.run(
        [sys.executable, "-m", "vicuna_jax.eval.report", f"--judgment_file={tmp_path / 'no.jsonl'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [f"error: {tmp_path / 'no.jsonl'}: file not found"]
    typo = subprocess.run(
        [sys.executable, "-m", "vicuna_jax.eval.report", f"--judgment_file={path}", "--baseline=B"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert typo.returncode == 2 and typo.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in typo.stderr


def test_judge_then_report_cli(fake_openai, eval_files: dict, tmp_path: Path) -> None:
    """The README's two commands, chained: a Vicuna review run against the local server, then its report."""
    out = tmp_path / "review.jsonl"
    answers = ",".join(eval_files["answers"].values())
    judge = subprocess.run(
        [
            sys.executable,
            "-m",
            "vicuna_jax.eval.judge",
            "--mode=vicuna",
            "--judge_model=gpt-4",
            "--baseline_model=model-b",
            f"--question_file={eval_files['questions']}",
            f"--answer_files={answers}",
            f"--output_file={out}",
            "--parallel=2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert judge.returncode == 0, judge.stderr[-2000:]
    report = subprocess.run(
        [
            sys.executable,
            "-m",
            "vicuna_jax.eval.report",
            f"--judgment_file={out}",
            f"--question_file={eval_files['questions']}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert report.returncode == 0, report.stderr[-2000:]
    # First-turn markers: model-a 8+6+3 = 17, model-c 2+9+7 = 18, model-b 5+6+7 = 18.
    assert "model-a scores 94% of model-b (total 17 vs 18 over 3 items)" in report.stdout
    assert "model-c scores 100% of model-b (total 18 vs 18 over 3 items)" in report.stdout


def test_judges_are_the_model_and_the_endpoint_and_prompt_texts_are_not_mixed(tmp_path: Path) -> None:
    def at(row: dict, host: str, digest: str = "a" * 64) -> dict:
        return {**row, "judge_host": host, "judge_prompt_sha256": digest}

    same_model = write_jsonl(
        tmp_path / "hosts.jsonl",
        [at(single(1, "A", 8), "api.openai.com"), at(single(2, "A", 3), "localhost:8000")],
    )
    with pytest.raises(EvalInputError, match="several judges") as err:
        load_judgments(same_model)
    assert "(gpt-4 @ api.openai.com, gpt-4 @ localhost:8000)" in str(err.value)
    assert "--mix_judges" in str(err.value)
    picked = load_judgments(same_model, "gpt-4 @ localhost:8000")
    assert [r["score"] for r in picked.rows] == [3] and picked.judge == "gpt-4 @ localhost:8000"
    mixed = load_judgments(same_model, mix_judges=True)
    assert len(mixed.rows) == 2 and mixed.mixed
    report = write_report(same_model, mix_judges=True, output_dir=str(tmp_path / "r"), make_plots=False)
    assert any("mixed in these tables (--mix_judges)" in n for n in report.notes)

    reworded = write_jsonl(
        tmp_path / "prompts.jsonl",
        [at(single(1, "A", 8), "h", "a" * 64), at(single(2, "A", 3), "h", "b" * 64)],
    )
    with pytest.raises(EvalInputError, match="judge prompt 'single' appears with 2 different texts"):
        load_judgments(reworded)
    assert load_judgments(reworded, mix_judges=True).prompts == {"single": "aaaaaaaaaaaa,bbbbbbbbbbbb"}
