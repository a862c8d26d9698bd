"""Every judging mode end to end: our code -> `openai` package -> HTTP -> local server -> output rows.

The local judge grades by markers planted in the answers, so a verdict is only right when the right answer
reached the right position of the right prompt; reruns must send zero requests and add no rows.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import eval_samples
import pytest
from eval_samples import QUESTIONS, REFERENCE_TEXT, SCORES, write_jsonl
from fake_openai import TEST_API_KEY, FakeOpenAI, Fault, marker_judge

from vicuna_jax.eval.jsonl import EvalInputError
from vicuna_jax.eval.judge import JudgeConfig, run_judge
from vicuna_jax.eval.prompts import default_prompt_file, load_prompts
from vicuna_jax.eval.questions import ERROR_ANSWER
from vicuna_jax.eval.stats import load_judgments, pairwise_outcomes
from vicuna_jax.eval.verdicts import FIVE_LEVELS

PROVENANCE = {"judge", "judge_host", "judge_prompt_sha256"}
SINGLE_KEYS = {"question_id", "model", "user_prompt", "judgment", "score", "turn", "tstamp", *PROVENANCE}
PAIR_KEYS = {
    "question_id",
    "model_1",
    "model_2",
    "g1_winner",
    "g2_winner",
    "g1_user_prompt",
    "g1_judgment",
    "g2_user_prompt",
    "g2_judgment",
    "turn",
    "tstamp",
    "answer_lengths",
    *PROVENANCE,
}
VICUNA_KEYS = {"question_id", "model_1", "model_2", "text", "score", *PROVENANCE}
REPO = Path(__file__).resolve().parents[2]
TURNS = [(q["question_id"], t + 1) for q in QUESTIONS for t in range(len(q["turns"]))]  # 4 (question, turn)


def read_rows(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def config(files: dict[str, Any], tmp_path: Path, server: FakeOpenAI, mode: str, **kw: Any) -> JudgeConfig:
    kw.setdefault("answer_files", tuple(files["answers"].values()))
    kw.setdefault("judge_model", "gpt-4")
    return JudgeConfig(
        mode=mode,
        question_file=files["questions"],
        output_file=str(tmp_path / f"{mode}.jsonl"),
        base_url=server.base_url,
        backoff_base_s=0.01,
        **kw,
    )


def expected_winner(m1: str, m2: str, qid: int, turn: int) -> str:
    s1, s2 = SCORES[m1][qid][turn - 1], SCORES[m2][qid][turn - 1]
    return "model_1" if s1 > s2 else "model_2" if s2 > s1 else "tie"


def assert_rerun_is_free(cfg: JudgeConfig, server: FakeOpenAI) -> None:
    before, rows = len(server.chat_requests), read_rows(cfg.output_file)
    summary = run_judge(cfg, api_key=TEST_API_KEY)
    assert summary.requests == 0 and summary.judged == 0 and summary.already_done == len(rows)
    assert len(server.chat_requests) == before
    assert read_rows(cfg.output_file) == rows


def test_single(fake_openai: FakeOpenAI, eval_files: dict[str, Any], tmp_path: Path) -> None:
    cfg = config(
        eval_files, tmp_path, fake_openai, "single", reference_file=eval_files["reference"], parallel=3
    )
    summary = run_judge(cfg, api_key=TEST_API_KEY)
    rows = read_rows(cfg.output_file)
    assert summary.judged == len(rows) == 3 * len(TURNS) == len(fake_openai.chat_requests)
    assert all(set(r) == SINGLE_KEYS for r in rows)
    got = {(r["model"], r["question_id"], r["turn"]): r for r in rows}
    assert set(got) == {(m, q, t) for m in SCORES for q, t in TURNS}
    for (model, qid, turn), r in got.items():
        assert r["score"] == SCORES[model][qid][turn - 1]
        prompt = {(3, 1): "single-ref", (2, 2): "single-multi-turn"}.get((qid, turn), "single")
        assert r["judge"] == ["gpt-4", prompt]
        assert (REFERENCE_TEXT in r["user_prompt"]) == (qid == 3)
        assert "Rating: [[" in r["judgment"]
    prompts = {p.name: p for p in load_prompts(default_prompt_file("single"))}
    host = urllib.parse.urlsplit(fake_openai.base_url).netloc
    for r in rows:  # who judged, where, with which prompt text
        assert r["judge_host"] == host and r["judge_prompt_sha256"] == prompts[r["judge"][1]].sha256
    assert len({r["judge_prompt_sha256"] for r in rows}) == 3  # single, single-ref, single-multi-turn
    multi = got["model-a", 2, 2]["user_prompt"]  # turn 2 shows the whole conversation, in order
    assert (
        multi.index("Write a haiku about rain.") < multi.index("turn=1>>") < multi.index("Now make it about")
    )
    for request in fake_openai.chat_requests:
        body = request.body
        assert (body["model"], body["temperature"], body["max_tokens"]) == ("gpt-4", 0.0, 2048)
        assert body["messages"][0]["role"] == "system" and request.system_prompt
    assert_rerun_is_free(cfg, fake_openai)


def test_pairwise_baseline_swaps_positions(
    fake_openai: FakeOpenAI, eval_files: dict[str, Any], tmp_path: Path
) -> None:
    cfg = config(
        eval_files,
        tmp_path,
        fake_openai,
        "pairwise_baseline",
        baseline_model="model-b",
        parallel=2,
        reference_file=eval_files["reference"],
        judge_model="judge-x",
        temperature=0.3,
    )
    run_judge(cfg, api_key=TEST_API_KEY)
    rows = read_rows(cfg.output_file)
    assert len(rows) == 2 * len(TURNS) and len(fake_openai.chat_requests) == 2 * len(rows)
    assert all(set(r) == PAIR_KEYS for r in rows)
    assert {(r["model_1"], r["model_2"], r["question_id"], r["turn"]) for r in rows} == {
        (m, "model-b", q, t) for m in ("model-a", "model-c") for q, t in TURNS
    }
    for r in rows:
        m1, m2 = r["model_1"], r["model_2"]
        assert r["g1_winner"] == r["g2_winner"] == expected_winner(m1, m2, r["question_id"], r["turn"])
        a1, b1 = r["g1_user_prompt"].index(f"{m1} answer"), r["g1_user_prompt"].index(f"{m2} answer")
        a2, b2 = r["g2_user_prompt"].index(f"{m2} answer"), r["g2_user_prompt"].index(f"{m1} answer")
        assert a1 < b1 and a2 < b2  # game 1 shows model_1 as A, game 2 swaps
        shown = [eval_samples.answer_rows(m)[r["question_id"] - 1]["choices"][0]["turns"] for m in (m1, m2)]
        assert r["answer_lengths"] == [len(turns[r["turn"] - 1]) for turns in shown]
        assert r["judge"][0] == "judge-x"
        assert r["judge"][1] == {(3, 1): "pair-ref", (2, 2): "pair-multi-turn"}.get(
            (r["question_id"], r["turn"]), "pair"
        )
    assert {(b["model"], b["temperature"]) for b in (q.body for q in fake_openai.chat_requests)} == {
        ("judge-x", 0.3)
    }
    assert_rerun_is_free(cfg, fake_openai)


def test_position_biased_judge_counts_as_ties(
    fake_openai: FakeOpenAI, eval_files: dict[str, Any], tmp_path: Path
) -> None:
    fake_openai.reply = functools.partial(marker_judge, position_bias=True)  # always answers [[A]]
    cfg = config(eval_files, tmp_path, fake_openai, "pairwise_baseline", baseline_model="model-b", first_n=1)
    run_judge(cfg, api_key=TEST_API_KEY)
    rows = read_rows(cfg.output_file)
    assert [(r["g1_winner"], r["g2_winner"]) for r in rows] == [("model_1", "model_2")] * 2
    outcomes, errors = pairwise_outcomes(rows)
    assert errors == 0 and [(o.result, o.inconsistent) for o in outcomes] == [("tie", True)] * 2


def test_pairwise_all_and_partial_resume(
    fake_openai: FakeOpenAI, eval_files: dict[str, Any], tmp_path: Path
) -> None:
    first = config(eval_files, tmp_path, fake_openai, "pairwise_all", first_n=1)
    run_judge(first, api_key=TEST_API_KEY)
    assert len(read_rows(first.output_file)) == 3 and len(fake_openai.chat_requests) == 6
    full = config(eval_files, tmp_path, fake_openai, "pairwise_all", parallel=4)
    summary = run_judge(full, api_key=TEST_API_KEY)
    assert summary.already_done == 3 and summary.judged == 3 * len(TURNS) - 3
    assert len(fake_openai.chat_requests) == 2 * 3 * len(TURNS)  # nothing judged twice
    rows = read_rows(full.output_file)
    pairs = {(r["model_1"], r["model_2"]) for r in rows}
    assert pairs == {("model-a", "model-b"), ("model-a", "model-c"), ("model-b", "model-c")}
    assert len({(r["model_1"], r["model_2"], r["question_id"], r["turn"]) for r in rows}) == len(rows) == 12
    for r in rows:
        assert (
            r["g1_winner"]
            == r["g2_winner"]
            == expected_winner(r["model_1"], r["model_2"], r["question_id"], r["turn"])
        )
    assert_rerun_is_free(full, fake_openai)


def test_five_level_verdicts_both_orders(
    fake_openai: FakeOpenAI, eval_files: dict[str, Any], tmp_path: Path
) -> None:
    """--verdicts=five: Arena-Hard-style verdicts, both orders judged; a marker gap of 4+ is a strong one."""
    cfg = config(
        eval_files, tmp_path, fake_openai, "pairwise_baseline", baseline_model="model-b", verdicts="five",
        reference_file=eval_files["reference"],
    )
    run_judge(cfg, api_key=TEST_API_KEY)
    rows = read_rows(cfg.output_file)
    assert len(rows) == 2 * len(TURNS) and len(fake_openai.chat_requests) == 2 * len(rows)
    assert all(set(r) == PAIR_KEYS | {"g1_verdict", "g2_verdict"} for r in rows)
    for r in rows:
        s1 = SCORES[r["model_1"]][r["question_id"]][r["turn"] - 1]
        s2 = SCORES[r["model_2"]][r["question_id"]][r["turn"] - 1]
        op = "=" if s1 == s2 else ">>" if abs(s1 - s2) >= 4 else ">"
        first = "A=B" if op == "=" else f"A{op}B" if s1 > s2 else f"B{op}A"  # model_1 shown as A
        second = first.translate(str.maketrans("AB", "BA")) if op != "=" else first  # positions swapped
        assert (r["g1_verdict"], r["g2_verdict"]) == (first, second.replace("B=A", "A=B"))
        winner = expected_winner(r["model_1"], r["model_2"], r["question_id"], r["turn"])
        assert r["g1_winner"] == r["g2_winner"] == winner
        assert r["judge"][1].startswith("pair5")
    assert {r["g1_verdict"] for r in rows} == set(FIVE_LEVELS)  # every level is exercised
    assert all("[[A>>B]]" in q.user_prompt for q in fake_openai.chat_requests)
    three = dataclasses.replace(cfg, verdicts="three")
    with pytest.raises(EvalInputError, match="holds 5-level pairwise verdicts but this run asks for 3-level"):
        run_judge(three, api_key=TEST_API_KEY)
    with pytest.raises(EvalInputError, match="--verdicts=five is for the pairwise modes"):
        run_judge(dataclasses.replace(cfg, mode="single"), api_key=TEST_API_KEY)


def test_vicuna_review(fake_openai: FakeOpenAI, eval_files: dict[str, Any], tmp_path: Path) -> None:
    cfg = config(eval_files, tmp_path, fake_openai, "vicuna", baseline_model="model-b", parallel=2)
    run_judge(cfg, api_key=TEST_API_KEY)
    rows = read_rows(cfg.output_file)
    assert all(set(r) == VICUNA_KEYS for r in rows)
    assert {(r["model_1"], r["model_2"], r["question_id"]) for r in rows} == {
        ("model-b", m, q["question_id"]) for m in ("model-a", "model-c") for q in QUESTIONS
    }
    for r in rows:  # first turn only, baseline as Assistant 1
        qid = r["question_id"]
        assert r["score"] == [SCORES["model-b"][qid][0], SCORES[r["model_2"]][qid][0]]
        assert r["text"].splitlines()[0] == "{:g} {:g}".format(*r["score"])
    reviewers = {}
    for request in fake_openai.chat_requests:
        assert (request.body["temperature"], request.body["max_tokens"]) == (0.2, 1024)
        question = next(q for q in QUESTIONS if q["turns"][0] in request.user_prompt)
        reviewers[question["category"]] = request.user_prompt
        assert "turn=2" not in request.user_prompt
    assert "math question above" in reviewers["math"]
    assert "write code" not in reviewers["generic"] and "math question" not in reviewers["generic"]
    assert_rerun_is_free(cfg, fake_openai)


def test_fastchat_prompt_file(fake_openai: FakeOpenAI, eval_files: dict[str, Any], tmp_path: Path) -> None:
    """--judge_prompts with a file in FastChat's format (texts invented here) replaces our prompts."""
    prompts = [
        {
            "name": "s-v9",
            "type": "single",
            "system_prompt": "S9",
            "prompt_template": "GRADE [[rating]]: {question} => {answer}",
            "description": "d",
            "category": "general",
            "output_format": "[[rating]]",
        },
        {
            "name": "s-v9-mt",
            "type": "single",
            "system_prompt": "S9",
            "prompt_template": "GRADE2 [[rating]]: {question_1} => {answer_1} / {question_2} => {answer_2}",
            "description": "d",
            "category": "general",
            "output_format": "[[rating]]",
        },
    ]
    path = write_jsonl(tmp_path / "judge_prompts.jsonl", prompts)
    cfg = config(eval_files, tmp_path, fake_openai, "single", judge_prompts=path, model_list=("model-c",))
    run_judge(cfg, api_key=TEST_API_KEY)
    rows = read_rows(cfg.output_file)
    assert {(r["question_id"], r["turn"]): r["judge"][1] for r in rows} == {
        (1, 1): "s-v9",
        (2, 1): "s-v9",
        (2, 2): "s-v9-mt",
        (3, 1): "s-v9",
    }
    assert [r["score"] for r in sorted(rows, key=lambda r: (r["question_id"], r["turn"]))] == [2, 9, 1, 7]
    assert all(
        q.system_prompt == "S9" and q.user_prompt.startswith("GRADE") for q in fake_openai.chat_requests
    )


def test_bad_inputs_fail_before_any_request(
    fake_openai: FakeOpenAI, eval_files: dict[str, Any], tmp_path: Path
) -> None:
    short = write_jsonl(
        tmp_path / "short.jsonl",
        [
            {"question_id": 1, "model_id": "short", "choices": [{"index": 0, "turns": ["x"]}]},
        ],
    )
    files = [*eval_files["answers"].values(), short]
    with pytest.raises(EvalInputError, match="model 'short' has no answer for question_id 2, 3"):
        run_judge(
            config(eval_files, tmp_path, fake_openai, "single", answer_files=tuple(files)),
            api_key=TEST_API_KEY,
        )
    with pytest.raises(EvalInputError, match="needs --baseline_model"):
        run_judge(config(eval_files, tmp_path, fake_openai, "pairwise_baseline"), api_key=TEST_API_KEY)
    with pytest.raises(EvalInputError, match="no answer file for model 'gpt-9'"):
        run_judge(
            config(eval_files, tmp_path, fake_openai, "vicuna", baseline_model="gpt-9"), api_key=TEST_API_KEY
        )
    single = config(eval_files, tmp_path, fake_openai, "single", first_n=1)
    run_judge(single, api_key=TEST_API_KEY)
    requests = len(fake_openai.chat_requests)
    mixed = config(eval_files, tmp_path, fake_openai, "pairwise_all")
    mixed = JudgeConfig(**{**mixed.__dict__, "output_file": single.output_file})
    with pytest.raises(EvalInputError, match="holds single judgments but this run writes pairwise"):
        run_judge(mixed, api_key=TEST_API_KEY)
    assert len(fake_openai.chat_requests) == requests == 3


def test_dry_run_sends_nothing_and_needs_no_key(
    fake_openai: FakeOpenAI,
    eval_files: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    cfg = config(
        eval_files,
        tmp_path,
        fake_openai,
        "pairwise_all",
        dry_run=True,
        reference_file=eval_files["reference"],
    )
    summary = run_judge(cfg)
    assert summary.matches == 12 and summary.requests == 0 and fake_openai.chat_requests == []
    out = capsys.readouterr().out
    assert "12 judgments to do, 24 requests to gpt-4" in out and "3 with prompt 'pair-ref'" in out


def test_the_judge_model_must_be_named(
    fake_openai: FakeOpenAI, eval_files: dict[str, Any], tmp_path: Path
) -> None:
    """No retired default: no --judge_model and no VICUNA_JAX_JUDGE_MODEL is a one-line error before any
    request; the environment variable names the judge when the flag is absent."""
    with pytest.raises(EvalInputError, match="no judge model: give --judge_model"):
        run_judge(config(eval_files, tmp_path, fake_openai, "single", judge_model=""), api_key=TEST_API_KEY)
    out = tmp_path / "cli.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "vicuna_jax.eval.judge",
        "--first_n=1",
        f"--question_file={eval_files['questions']}",
        f"--answer_files={eval_files['answers']['model-a']}",
        f"--output_file={out}",
    ]
    env = {k: v for k, v in os.environ.items() if k != "VICUNA_JAX_JUDGE_MODEL"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no judge model: give --judge_model")
    assert fake_openai.chat_requests == []
    env["VICUNA_JAX_JUDGE_MODEL"] = "judge-from-env"
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [r["judge"][0] for r in read_rows(str(out))] == ["judge-from-env"]
    assert {r.body["model"] for r in fake_openai.chat_requests} == {"judge-from-env"}


def test_rejudge_errors_redoes_only_unreadable_judgments(
    fake_openai: FakeOpenAI, eval_files: dict[str, Any], tmp_path: Path
) -> None:
    cfg = config(eval_files, tmp_path, fake_openai, "single", first_n=1)  # 3 models, 1 question
    fake_openai.push(Fault(content="I would rather not grade this."))  # the first judgment is unreadable
    first = run_judge(cfg, api_key=TEST_API_KEY)
    assert (first.judged, first.unparsed) == (3, 1)
    assert run_judge(cfg, api_key=TEST_API_KEY).requests == 0  # a plain rerun keeps the unreadable one
    redo = dataclasses.replace(cfg, rejudge_errors=True)
    summary = run_judge(redo, api_key=TEST_API_KEY)
    assert (summary.requests, summary.rejudged, summary.already_done, summary.unparsed) == (1, 1, 2, 0)
    rows = read_rows(cfg.output_file)
    assert len(rows) == 4 and [r["score"] for r in rows].count(-1) == 1  # the old row kept, the redo appended
    judged = load_judgments(cfg.output_file)
    assert judged.duplicates == 1 and sorted(r["score"] for r in judged.rows) == [2, 5, 8]  # the redo wins
    assert run_judge(redo, api_key=TEST_API_KEY).requests == 0  # nothing unreadable is left


def test_error_answers_are_not_judged_but_counted(
    fake_openai: FakeOpenAI, eval_files: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An answer recorded as $ERROR$ (no room in the context) is never shown to the judge: the matches that
    would show it are skipped and counted; earlier turns of the same question are still judged."""
    rows = read_rows(eval_files["answers"]["model-c"])
    rows[1]["choices"][0]["turns"][1] = ERROR_ANSWER  # question 2, turn 2
    broken = write_jsonl(tmp_path / "model-c.jsonl", rows)
    answers = (eval_files["answers"]["model-a"], eval_files["answers"]["model-b"], broken)
    caplog.set_level("WARNING")
    single = config(eval_files, tmp_path, fake_openai, "single", answer_files=answers)
    summary = run_judge(single, api_key=TEST_API_KEY)
    assert (summary.matches, summary.skipped_error_answers) == (3 * len(TURNS) - 1, 1)
    judged = {(r["model"], r["question_id"], r["turn"]) for r in read_rows(single.output_file)}
    assert ("model-c", 2, 1) in judged and ("model-c", 2, 2) not in judged
    assert "not judging 1 matches whose answer is $ERROR$ (model-c: 1)" in caplog.text
    pairs = config(eval_files, tmp_path, fake_openai, "pairwise_all", answer_files=answers)
    summary = run_judge(pairs, api_key=TEST_API_KEY)
    assert (summary.matches, summary.skipped_error_answers) == (3 * len(TURNS) - 2, 2)
    assert all(ERROR_ANSWER not in r.user_prompt for r in fake_openai.chat_requests)
