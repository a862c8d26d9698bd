"""The evaluation CLIs against our own server through OPENAI_BASE_URL: the tiny model answers the questions
(`eval.answers --openai_model`) and then judges them (`eval.judge`). Its judgments are noise, so scores are
unparseable (-1); the point is the plumbing: every request succeeds and every row is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from serve_utils import MODEL_NAME, SERVE_KEY

from vicuna_jax.data import encode_prompt
from vicuna_jax.generate import SamplingParams

QUESTIONS = [
    {"question_id": 1, "category": "writing", "turns": ["Write a haiku about rain.", "Now one about snow."]},
    {"question_id": 2, "category": "generic", "turns": ["How do I keep a sourdough starter alive?"]},
]
NEW_TOKENS = 24


def _cli(module: str, args: list[str], served) -> subprocess.CompletedProcess:
    env = dict(os.environ, OPENAI_BASE_URL=served.base_url, OPENAI_API_KEY=SERVE_KEY, JAX_PLATFORMS="cpu")
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env,
                          timeout=300)


def _rows(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_answers_then_judge_through_the_server(served, reference, tmp_path):
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    answers = tmp_path / "answers.jsonl"
    before = served.health()["requests"]

    proc = _cli("vicuna_jax.eval.answers", [f"--openai_model={MODEL_NAME}", f"--question_file={questions}",
                                            f"--answer_file={answers}", f"--max_new_tokens={NEW_TOKENS}",
                                            "--temperature=0", "--batch_size=4", "--system="], served)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["question_id"]: r for r in _rows(answers)}
    assert set(rows) == {1, 2} and all(r["model_id"] == MODEL_NAME for r in rows.values())
    # Greedy answers through the server are what local generation gives (the CLI strips whitespace);
    # --system= sends no system message (the default is FastChat's API one): the template's own applies.
    for q in QUESTIONS:
        ids = encode_prompt([{"role": "user", "content": q["turns"][0]}], served.tokenizer)
        want = reference.generate([ids], SamplingParams(max_new_tokens=NEW_TOKENS))[0].text.strip()
        assert rows[q["question_id"]]["choices"][0]["turns"][0] == want
    assert len(rows[1]["choices"][0]["turns"]) == 2

    judgments = tmp_path / "judgments.jsonl"
    # The judge's default max_tokens (2048) is over the model's whole 512-token context, as in the README's
    # self-judging command: the server clamps it to what each prompt leaves.
    proc = _cli("vicuna_jax.eval.judge", ["--mode=single", f"--judge_model={MODEL_NAME}",
                                          f"--question_file={questions}", f"--answer_files={answers}",
                                          f"--output_file={judgments}", "--parallel=3",
                                          "--max_retries=0"], served)
    assert proc.returncode == 0, proc.stderr[-3000:]
    judged = _rows(judgments)
    assert sorted((r["question_id"], r["turn"]) for r in judged) == [(1, 1), (1, 2), (2, 1)]
    for r in judged:
        assert r["judge"][0] == MODEL_NAME and r["model"] == MODEL_NAME
        assert isinstance(r["judgment"], str) and r["judgment"]
        assert r["score"] == -1 or 0 <= r["score"] <= 10  # noise is recorded as unparseable, not dropped
    # 3 answer requests (one per turn) and 3 judge requests, all served.
    assert served.health()["requests"] - before == 6
