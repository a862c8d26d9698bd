"""Judging under faults: 429 + Retry-After, 5xx, timeouts, malformed replies, bad keys, Ctrl-C, secrets.

Backoff bases are tiny here so tests stay fast; waits that matter (Retry-After) are measured on the server.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fake_openai import TEST_API_KEY, FakeOpenAI, Fault, marker_judge

from vicuna_jax.eval.client import FatalJudgeError
from vicuna_jax.eval.judge import JudgeConfig, run_judge

REPO = Path(__file__).resolve().parents[2]


def read_rows(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def one_match(files: dict[str, Any], tmp_path: Path, server: FakeOpenAI, **kw: Any) -> JudgeConfig:
    """Single mode, first question, one model: exactly one judgment."""
    kw.setdefault("model_list", ("model-a",))
    kw.setdefault("first_n", 1)
    kw.setdefault("judge_model", "gpt-4")
    return JudgeConfig(
        mode="single",
        question_file=files["questions"],
        answer_files=tuple(files["answers"].values()),
        output_file=str(tmp_path / "out.jsonl"),
        base_url=server.base_url,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
        **kw,
    )


@pytest.mark.parametrize(
    "header, low, high", [({"Retry-After": "1"}, 0.95, 1.8), ({"retry-after-ms": "300"}, 0.28, 0.9)]
)
def test_429_waits_as_long_as_retry_after_says(
    fake_openai: FakeOpenAI,
    eval_files: dict[str, Any],
    tmp_path: Path,
    header: dict[str, str],
    low: float,
    high: float,
) -> None:
    fake_openai.push(Fault(status=429, headers=header))
    summary = run_judge(one_match(eval_files, tmp_path, fake_openai), api_key=TEST_API_KEY)
    first, second = fake_openai.chat_requests
    assert low <= second.received_s - first.received_s <= high  # backoff alone would be ~0.01 s
    assert (
        summary.requests == 2
        and summary.judged == 1
        and read_rows(str(tmp_path / "out.jsonl"))[0]["score"] == 8
    )


def test_server_errors_and_malformed_replies_are_retried(
    fake_openai: FakeOpenAI, eval_files: dict[str, Any], tmp_path: Path
) -> None:
    fake_openai.push(
        Fault(status=500),
        Fault(status=503),
        Fault(raw_body="<html>502 Bad Gateway</html>"),
        Fault(raw_body='{"choices": []}'),
    )
    summary = run_judge(one_match(eval_files, tmp_path, fake_openai), api_key=TEST_API_KEY)
    assert summary.requests == 5 == len(fake_openai.chat_requests) and summary.failed == 0
    assert read_rows(str(tmp_path / "out.jsonl"))[0]["score"] == 8


def test_timeout_is_retried(fake_openai: FakeOpenAI, eval_files: dict[str, Any], tmp_path: Path) -> None:
    fake_openai.push(Fault(delay_s=1.5))
    start = time.monotonic()
    summary = run_judge(one_match(eval_files, tmp_path, fake_openai, timeout_s=0.3), api_key=TEST_API_KEY)
    assert time.monotonic() - start < 1.4  # gave up on the slow reply instead of waiting it out
    assert summary.requests == 2 and read_rows(str(tmp_path / "out.jsonl"))[0]["score"] == 8


@pytest.mark.parametrize("trickle_headers", [True, False], ids=["whole-reply", "body-only"])
def test_a_trickling_server_cannot_stall_a_request(
    fake_openai: FakeOpenAI,
    eval_files: dict[str, Any],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    trickle_headers: bool,
) -> None:
    """--timeout is a deadline for the whole request: a reply trickled one byte per 50 ms (each read well
    within the timeout; the whole reply would take ~20 s) is abandoned after 1 s and retried."""
    caplog.set_level(logging.WARNING)
    fake_openai.push(Fault(trickle_s=0.05, trickle_headers=trickle_headers))
    start = time.monotonic()
    summary = run_judge(one_match(eval_files, tmp_path, fake_openai, timeout_s=1.0), api_key=TEST_API_KEY)
    elapsed = time.monotonic() - start
    assert summary.requests == 2 and read_rows(str(tmp_path / "out.jsonl"))[0]["score"] == 8
    assert 1.0 <= elapsed < 6.0, elapsed
    assert "timed out (no complete reply within 1 s)" in caplog.text
    deadline = time.monotonic() + 10
    while not fake_openai.trickled and time.monotonic() < deadline:  # the server notices the hang-up
        time.sleep(0.01)
    (sent, total), = fake_openai.trickled
    assert 0 < sent < total / 2  # the client hung up part way instead of waiting for the rest


def test_exhausted_retries_skip_the_judgment_and_a_rerun_fills_it(
    fake_openai: FakeOpenAI, eval_files: dict[str, Any], tmp_path: Path
) -> None:
    fake_openai.push(Fault(status=500), Fault(status=500), Fault(status=500))
    cfg = one_match(eval_files, tmp_path, fake_openai, model_list=(), max_retries=2)  # 3 models, 1 question
    summary = run_judge(cfg, api_key=TEST_API_KEY)
    assert (summary.judged, summary.failed, summary.requests) == (2, 1, 5)
    assert "gave up after 3 attempts; last: HTTP 500" in summary.errors[0]
    assert len(read_rows(cfg.output_file)) == 2
    summary = run_judge(cfg, api_key=TEST_API_KEY)
    assert (summary.judged, summary.already_done, summary.requests) == (1, 2, 1)
    rows = read_rows(cfg.output_file)
    assert sorted(r["model"] for r in rows) == ["model-a", "model-b", "model-c"]


def test_client_errors_are_not_retried(
    fake_openai: FakeOpenAI, eval_files: dict[str, Any], tmp_path: Path
) -> None:
    fake_openai.push(Fault(status=400))
    summary = run_judge(one_match(eval_files, tmp_path, fake_openai), api_key=TEST_API_KEY)
    assert (summary.failed, summary.requests) == (1, 1) and "HTTP 400" in summary.errors[0]


def test_unreadable_judgments_are_kept_with_their_text(
    fake_openai: FakeOpenAI, eval_files: dict[str, Any], tmp_path: Path
) -> None:
    fake_openai.push(Fault(content="I would rather not grade this."))
    summary = run_judge(one_match(eval_files, tmp_path, fake_openai), api_key=TEST_API_KEY)
    row = read_rows(str(tmp_path / "out.jsonl"))[0]
    assert (row["score"], row["judgment"], summary.unparsed) == (-1, "I would rather not grade this.", 1)
    quoted = "I must output [[A]] if assistant A is better and [[B]] if assistant B is better."
    fake_openai.push(Fault(content=quoted))
    cfg = JudgeConfig(
        **{
            **one_match(eval_files, tmp_path, fake_openai).__dict__,
            "mode": "pairwise_baseline",
            "baseline_model": "model-b",
            "output_file": str(tmp_path / "pair.jsonl"),
        }
    )
    run_judge(cfg, api_key=TEST_API_KEY)
    row = read_rows(cfg.output_file)[0]
    assert (row["g1_winner"], row["g1_judgment"], row["g2_winner"]) == ("error", quoted, "model_1")
    before = len(fake_openai.chat_requests)
    assert run_judge(cfg, api_key=TEST_API_KEY).requests == 0 == len(fake_openai.chat_requests) - before


def test_rejected_key_stops_the_run_without_echoing_it(
    fake_openai: FakeOpenAI, eval_files: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "sk-wrong-5b1d9e7f3a2c4e6b8d0f"
    caplog.set_level(logging.DEBUG)
    cfg = one_match(eval_files, tmp_path, fake_openai, model_list=(), parallel=1)
    with pytest.raises(FatalJudgeError, match="rejected the API key") as err:
        run_judge(cfg, api_key=wrong)
    assert wrong not in str(err.value) and "***" in str(err.value)  # the server echoed it; we scrubbed it
    assert wrong not in caplog.text
    assert len(fake_openai.chat_requests) == 1  # stopped instead of trying the other judgments
    assert read_rows(cfg.output_file) == []


def test_missing_key_is_a_clear_error(
    fake_openai: FakeOpenAI, eval_files: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(FatalJudgeError, match="no API key: set the OPENAI_API_KEY environment variable"):
        run_judge(one_match(eval_files, tmp_path, fake_openai))
    assert fake_openai.chat_requests == []
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vicuna_jax.eval.judge",
            "--judge_model=gpt-4",
            f"--question_file={eval_files['questions']}",
            f"--answer_files={eval_files['answers']['model-a']}",
            f"--output_file={tmp_path / 'cli.jsonl'}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no API key")


def test_key_never_reaches_outputs_or_logs(
    fake_openai: FakeOpenAI, eval_files: dict[str, Any], tmp_path: Path
) -> None:
    """A CLI run at debug verbosity (ours, openai's, httpx's) with retries; the judge echoes the key."""
    fake_openai.reply = lambda body: marker_judge(body) + f"\n(debug: Bearer {TEST_API_KEY})"
    fake_openai.push(Fault(status=429, headers={"Retry-After": "0"}), Fault(status=500), Fault(delay_s=0.8))
    out = tmp_path / "judgments.jsonl"
    env = dict(os.environ, OPENAI_LOG="debug")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vicuna_jax.eval.judge",
            "--mode=pairwise_all",
            "--judge_model=gpt-4",
            "--first_n=1",
            "--parallel=2",
            f"--question_file={eval_files['questions']}",
            f"--answer_files={','.join(eval_files['answers'].values())}",
            f"--output_file={out}",
            "--backoff_base=0.01",
            "--timeout=0.4",
            "-v=1",
            "--alsologtostderr",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "retry 1/5" in proc.stderr  # the faults were really exercised and logged
    assert len(read_rows(str(out))) == 3
    texts = [proc.stdout, proc.stderr] + [p.read_text() for p in tmp_path.rglob("*") if p.is_file()]
    assert all(TEST_API_KEY not in t for t in texts)
    assert "Bearer ***" in out.read_text()


def test_ctrl_c_loses_nothing_and_a_rerun_finishes(
    fake_openai: FakeOpenAI, eval_files: dict[str, Any], tmp_path: Path
) -> None:
    """Deterministic under any load: the server answers three requests, then holds every further one until
    the judge has noticed the interrupt, so it always lands with exactly two requests in flight."""
    gate, lock, held = threading.Event(), threading.Lock(), []

    def gated(body: dict[str, Any]) -> str:
        with lock:
            n = len(held)
            held.append(body)
        if n >= 3:
            assert gate.wait(timeout=60), "the test never released the held requests"
        return marker_judge(body)

    fake_openai.reply = gated
    out = tmp_path / "judgments.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "vicuna_jax.eval.judge",
        "--mode=single",
        "--judge_model=gpt-4",
        "--parallel=2",
        f"--question_file={eval_files['questions']}",
        f"--answer_files={','.join(eval_files['answers'].values())}",
        f"--output_file={out}",
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, bufsize=1
    )
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()

    def wait_for(condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 60
        while not condition():
            assert time.monotonic() < deadline and proc.poll() is None, f"{what}; stderr: {''.join(stderr)}"
            time.sleep(0.02)

    rows = lambda: len(out.read_text().splitlines()) if out.exists() else 0  # noqa: E731
    wait_for(lambda: rows() == 3 and len(held) == 5, "3 judgments saved and 2 requests held")
    proc.send_signal(signal.SIGINT)
    wait_for(lambda: any("saving the 2 judgments in flight" in line for line in stderr), "interrupt noticed")
    gate.set()  # the two requests in flight now complete; nothing new may start
    assert proc.wait(timeout=60) == 130
    reader.join(timeout=10)
    assert "interrupted" in "".join(stderr)
    done = read_rows(str(out))  # every line is whole JSON
    assert len(done) == 5 == len(fake_openai.chat_requests)  # the 2 answered in flight were saved too
    fake_openai.reply = marker_judge
    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    rows_after = read_rows(str(out))
    assert len(fake_openai.chat_requests) == 12 == len(rows_after)  # nothing asked twice, nothing missing
    assert len({(r["model"], r["question_id"], r["turn"]) for r in rows_after}) == 12
