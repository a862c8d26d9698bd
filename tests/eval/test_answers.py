"""Answer generation from a tiny random model (one generator for the module) and the local fake OpenAI server.

The model's answers are noise, but greedy ones are exact: they must equal a direct `Generator.generate` call.
A counting wrapper around the generator proves what a resumed run does (nothing, for finished questions).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from eval_samples import write_jsonl
from fake_openai import Fault

from vicuna_jax.cli import UserError
from vicuna_jax.data import encode_prompt
from vicuna_jax.eval.answers import (
    ERROR_ANSWER,
    AnswerConfig,
    LocalAnswerer,
    OpenAIAnswerer,
    parse_temperature_table,
    run_answers,
)
from vicuna_jax.eval.questions import load_answers
from vicuna_jax.generate import SamplingParams

NEW_TOKENS = 6
QUESTIONS = [
    {"question_id": 1, "category": "coding", "turns": ["Write a Python function that reverses a string."]},
    {"question_id": 2, "category": "math", "turns": ["What is 12 * 12?", "Now divide that by 3."]},
    {"question_id": 3, "category": "writing", "turns": ["Write a haiku about rain."]},
    {"question_id": 4, "category": "stem", "turns": ["Why is the sky blue?"]},
]
ROW_KEYS = {"question_id", "answer_id", "model_id", "choices", "tstamp"}


class CountingGenerator:
    """Delegates to a real Generator and records every generate call (prompt ids and sampling params)."""

    def __init__(self, gen: Any) -> None:
        self.gen, self.cfg, self.tokenizer, self.chat_format = gen, gen.cfg, gen.tokenizer, gen.chat_format
        self.calls: list[tuple[list[list[int]], SamplingParams]] = []

    def generate(self, prompts: Any, params: SamplingParams) -> list[Any]:
        self.calls.append(([list(p) for p in prompts], params))
        return self.gen.generate(prompts, params)

    @property
    def prompts(self) -> list[list[int]]:
        return [p for prompts, _ in self.calls for p in prompts]


@pytest.fixture(scope="module")
def generator(tiny_checkpoint: str) -> Any:
    from vicuna_jax.generate import load_generator

    return load_generator(tiny_checkpoint)


@pytest.fixture
def counting(generator: Any) -> CountingGenerator:
    return CountingGenerator(generator)


def _run(tmp_path: Path, counting: CountingGenerator, questions: list[dict[str, Any]] = QUESTIONS,
         answer_file: str = "answers.jsonl", **options: Any) -> tuple[list[dict[str, Any]], Any]:
    qfile = write_jsonl(tmp_path / "questions.jsonl", questions)
    config = AnswerConfig(question_file=qfile, answer_file=str(tmp_path / answer_file), model_id="tiny",
                          max_new_tokens=options.pop("max_new_tokens", NEW_TOKENS), **options)
    summary = run_answers(config, LocalAnswerer(counting, max_new_tokens=config.max_new_tokens))
    return _read(config.answer_file), summary


def _read(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def _greedy(gen: Any, turns: list[dict[str, str]], max_new_tokens: int = NEW_TOKENS) -> str:
    ids = encode_prompt(turns, gen.tokenizer)
    return gen.generate([ids], SamplingParams(max_new_tokens=max_new_tokens)).pop().text.strip()


def test_format_greedy_answers_and_multi_turn(tmp_path: Path, counting: CountingGenerator, generator: Any):
    rows, summary = _run(tmp_path, counting, batch_size=4)
    assert [r["question_id"] for r in rows] == [1, 2, 3, 4] and summary.answered == 4
    for row, q in zip(rows, QUESTIONS, strict=True):
        assert set(row) == ROW_KEYS and row["model_id"] == "tiny" and isinstance(row["tstamp"], float)
        assert len(row["answer_id"]) == 22 and row["answer_id"].isalnum()
        assert [c["index"] for c in row["choices"]] == [0]
        assert len(row["choices"][0]["turns"]) == len(q["turns"])
    assert len({r["answer_id"] for r in rows}) == 4
    # The judge side reads the file as one model's answers.
    model, answers = load_answers(str(tmp_path / "answers.jsonl"))
    assert model == "tiny" and set(answers) == {"1", "2", "3", "4"}

    # Greedy categories (coding, math) equal a direct single-prompt generate call.
    coding_answer = rows[0]["choices"][0]["turns"][0]
    assert coding_answer == _greedy(generator, [{"from": "human", "value": QUESTIONS[0]["turns"][0]}])
    q1, q2 = QUESTIONS[1]["turns"]
    a1, a2 = rows[1]["choices"][0]["turns"]
    assert a1 == _greedy(generator, [{"from": "human", "value": q1}])
    # Turn 2's prompt is turn 1's question, the model's own answer, then the new question.
    history = [{"from": "human", "value": q1}, {"from": "gpt", "value": a1}, {"from": "human", "value": q2}]
    turn2_prompt = encode_prompt(history, generator.tokenizer)
    assert turn2_prompt in counting.prompts
    decoded = generator.tokenizer.decode(turn2_prompt)
    assert decoded.index(q1) < decoded.index(a1) < decoded.index(q2)
    assert a2 == _greedy(generator, history)
    assert len(counting.prompts) == 5  # four first turns and one second turn


def test_per_category_temperatures_and_batching(tmp_path: Path, counting: CountingGenerator):
    rows1, _ = _run(tmp_path, counting, answer_file="seed1.jsonl", seed=1)
    temps = {}
    for prompts, params in counting.calls:
        for p in prompts:
            temps.setdefault(params.temperature, []).append(p)
    # coding + math greedy (3 prompts: math has two turns), stem 0.1, writing the 0.7 default; never mixed.
    assert sorted((t, len(p)) for t, p in temps.items()) == [(0.0, 3), (0.1, 1), (0.7, 1)]
    counting.calls.clear()
    rows2, _ = _run(tmp_path, counting, answer_file="seed2.jsonl", seed=2)
    by_id = lambda rows: {r["question_id"]: r["choices"][0]["turns"] for r in rows}  # noqa: E731
    a1, a2 = by_id(rows1), by_id(rows2)
    assert a1[1] == a2[1] and a1[2] == a2[2]  # greedy: the same whatever the seed
    assert a1[3] != a2[3]  # writing samples at 0.7

    # The table is the user's to change; --temperature overrides it for everything.
    counting.calls.clear()
    _run(tmp_path, counting, answer_file="table.jsonl",
         category_temperatures=parse_temperature_table(["writing=0.3", "coding=1.5"]))
    assert sorted({p.temperature for _, p in counting.calls}) == [0.0, 0.1, 0.3, 1.5]
    counting.calls.clear()
    _run(tmp_path, counting, answer_file="forced.jsonl", temperature=0.0, batch_size=4)
    assert [p.temperature for _, p in counting.calls] == [0.0, 0.0]  # one batch, then math's second turn
    with pytest.raises(UserError, match="CATEGORY=TEMPERATURE"):
        parse_temperature_table(["writing"])


def test_resume_skips_done_questions_and_drops_a_cut_line(tmp_path: Path, counting: CountingGenerator):
    rows, _ = _run(tmp_path, counting, first_n=2)
    assert [r["question_id"] for r in rows] == [1, 2]
    path = tmp_path / "answers.jsonl"
    cut = json.dumps({"question_id": 3, "answer_id": "x", "model_id": "tiny", "choices": [{"index": 0}]})
    with open(path, "a", encoding="utf-8") as f:
        f.write(cut[:40])  # a run killed mid-write
    counting.calls.clear()
    rows, summary = _run(tmp_path, counting)
    assert summary.already_done == 2 and summary.answered == 2
    # Only questions 3 and 4 were generated (one prompt each); 1 and 2 kept their rows untouched.
    assert len(counting.prompts) == 2
    assert [r["question_id"] for r in rows] == [1, 2, 3, 4]
    assert Path(f"{path}.partial").read_text(encoding="utf-8").strip() == cut[:40]
    before = path.read_text(encoding="utf-8")
    counting.calls.clear()
    _, summary = _run(tmp_path, counting)
    assert counting.calls == [] and summary.answered == 0 and summary.already_done == 4
    assert path.read_text(encoding="utf-8") == before

    # Another model's answers in the file is a user error, not a silent mix.
    write_jsonl(tmp_path / "other.jsonl", [dict(_read(path)[0], model_id="other")])
    with pytest.raises(UserError, match="holds answers from model other"):
        _run(tmp_path, counting, answer_file="other.jsonl")


def test_final_file_sorted_and_deduplicated(tmp_path: Path, counting: CountingGenerator):
    questions = [{"question_id": i, "category": "math", "turns": [f"What is {i} + {i}?"]} for i in (10, 2, 1)]
    old = lambda qid, text: {"question_id": qid, "answer_id": text, "model_id": "tiny",  # noqa: E731
                             "choices": [{"index": 0, "turns": [text]}], "tstamp": 0.0}
    path = write_jsonl(tmp_path / "answers.jsonl", [old(2, "first"), old(99, "kept"), old(2, "second")])
    rows, summary = _run(tmp_path, counting, questions=questions)
    assert [r["question_id"] for r in rows] == [1, 2, 10, 99]  # numeric order, not "10" < "2"
    assert rows[1]["choices"][0]["turns"] == ["second"]  # the last row of a question wins
    assert summary.duplicates_dropped == 1 and summary.answered == 2
    assert len(counting.prompts) == 2
    assert len(_read(path)) == 4


def test_old_vicuna_question_format(tmp_path: Path, counting: CountingGenerator, generator: Any):
    questions = [{"question_id": 7, "text": "How do bees make honey?", "category": "generic"},
                 {"question_id": 8, "text": "Solve 3x = 12.", "category": "math"}]
    rows, _ = _run(tmp_path, counting, questions=questions)
    assert [len(r["choices"][0]["turns"]) for r in rows] == [1, 1]
    expected = _greedy(generator, [{"from": "human", "value": "Solve 3x = 12."}])
    assert rows[1]["choices"][0]["turns"][0] == expected


def test_context_overflow_is_recorded_not_fatal(tmp_path: Path, counting: CountingGenerator):
    ctx = counting.cfg.max_position_embeddings
    long_text = " ".join(["the"] * (ctx + 10))  # "the" is one token: no room at all
    near_full = " ".join(["the"] * (ctx - 90))
    questions = [
        {"question_id": 1, "category": "math", "turns": [long_text]},
        {"question_id": 2, "category": "math", "turns": ["Say hi.", long_text]},
        {"question_id": 3, "category": "math", "turns": [near_full]},
    ]
    fits = encode_prompt([{"from": "human", "value": near_full}], counting.tokenizer)
    assert ctx - 64 < len(fits) < ctx
    rows, summary = _run(tmp_path, counting, questions=questions, max_new_tokens=64, batch_size=3)
    assert rows[0]["choices"][0]["turns"] == [ERROR_ANSWER] and "context of 512" in rows[0]["error"]
    first, second = rows[1]["choices"][0]["turns"]
    assert first != ERROR_ANSWER and second == ERROR_ANSWER and rows[1]["error"].startswith("turn 2:")
    # Question 3 fits, with its budget cut to the room left in the context.
    assert "error" not in rows[2] and fits in counting.prompts
    assert summary.error_rows == 2 and summary.answered == 3 and summary.length_stops >= 1
    assert summary.new_tokens <= 64 + (ctx - len(fits))

    counting.calls.clear()
    rows, summary = _run(tmp_path, counting, questions=questions, max_new_tokens=64, redo_errors=True)
    assert summary.answered == 2 and summary.already_done == 1
    assert len(counting.prompts) == 1  # question 2's first turn again; question 1 still has no room
    assert len(rows) == 3 and rows[0]["choices"][0]["turns"] == [ERROR_ANSWER]


def test_bad_question_file_names_file_and_line(tmp_path: Path, counting: CountingGenerator):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": 1, "category": "math", "turns": ["ok"]}\n{"question_id": 2, "turns"\n')
    config = AnswerConfig(question_file=str(bad), answer_file=str(tmp_path / "a.jsonl"), model_id="tiny")
    with pytest.raises(UserError, match=r"bad\.jsonl:2: invalid JSON"):
        run_answers(config, LocalAnswerer(counting))
    good = '{"question_id": 1, "category": "math", "turns": ["ok"]}\n'
    bad.write_text(good + '{"question_id": 2, "category": "x"}\n')
    with pytest.raises(UserError, match=r"bad\.jsonl:2: missing key 'turns'"):
        run_answers(config, LocalAnswerer(counting))
    assert counting.calls == []
    with pytest.raises(UserError, match="max_new_tokens"):
        AnswerConfig(question_file=str(bad), answer_file="a.jsonl", model_id="tiny", max_new_tokens=0)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vicuna_jax.eval.answers", *args], capture_output=True,
                          text=True, timeout=120, env=env or os.environ.copy())


def test_cli_end_to_end(tmp_path: Path, tiny_checkpoint: str):
    qfile = write_jsonl(tmp_path / "q.jsonl", QUESTIONS)
    out = tmp_path / "out" / "tiny.jsonl"
    args = [f"--model={tiny_checkpoint}", "--model_id=tiny-cli", f"--question_file={qfile}",
            f"--answer_file={out}", "--max_new_tokens=4", "--batch_size=4", "--question_end=3"]
    done = _cli(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = _read(out)
    assert [r["question_id"] for r in rows] == [1, 2, 3] and {r["model_id"] for r in rows} == {"tiny-cli"}
    assert "context 512 tokens" in done.stderr
    again = _cli(*args)  # everything done: no model loaded, file unchanged
    assert again.returncode == 0 and _read(out) == rows and "0 to answer" in again.stderr
    assert "context 512 tokens" not in again.stderr

    (tmp_path / "bad.jsonl").write_text('{"question_id": 1, "category": "math"}\n')
    failed = _cli(f"--model={tiny_checkpoint}", f"--question_file={tmp_path / 'bad.jsonl'}",
                  f"--answer_file={out}")
    assert failed.returncode == 2
    last_line = failed.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"error: {tmp_path / 'bad.jsonl'}:1: missing key")
    assert "Traceback" not in failed.stderr


def _echo(body: dict[str, Any]) -> str:
    """A server answer that shows what it was sent: the last question and how many messages came."""
    return f" answer to '{body['messages'][-1]['content']}' after {len(body['messages'])} messages "


def test_openai_answers_multi_turn_resume_and_retries(tmp_path: Path, fake_openai: Any):
    fake_openai.reply = _echo
    questions = [*QUESTIONS, {"question_id": 5, "category": "coding", "turns": ["Sort [3, 1, 2]."],
                              "required_temperature": 0.4}]  # FastChat's per-question override of the table
    qfile = write_jsonl(tmp_path / "q.jsonl", questions)
    config = AnswerConfig(question_file=qfile, answer_file=str(tmp_path / "gpt.jsonl"),
                          model_id="gpt-3.5-turbo", max_new_tokens=50, batch_size=2)
    fake_openai.push(Fault(status=500, headers={"retry-after-ms": "10"}))  # retried by the client
    answerer = OpenAIAnswerer("gpt-3.5-turbo", max_new_tokens=50, max_retries=2)
    summary = run_answers(config, answerer)
    assert summary.answered == 5 and not summary.failed
    rows = _read(config.answer_file)
    assert rows[1]["choices"][0]["turns"] == ["answer to 'What is 12 * 12?' after 2 messages",
                                              "answer to 'Now divide that by 3.' after 4 messages"]
    # Every conversation opens with the system message FastChat's API answerer sends.
    assert {r.system_prompt for r in fake_openai.chat_requests} == {"You are a helpful assistant."}
    first_user = {r.body["messages"][1]["content"]: r.body for r in fake_openai.chat_requests}
    q2_turn1 = QUESTIONS[1]["turns"][0]
    requests = [r.body for r in fake_openai.chat_requests if r.body["messages"][1]["content"] == q2_turn1]
    second = max(requests, key=lambda b: len(b["messages"]))["messages"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert second[2]["content"] == rows[1]["choices"][0]["turns"][0]
    temps = {text: body["temperature"] for text, body in first_user.items()}
    assert temps[QUESTIONS[0]["turns"][0]] == 0.0 and temps[QUESTIONS[2]["turns"][0]] == 0.7
    assert temps[QUESTIONS[3]["turns"][0]] == 0.1 and temps["Sort [3, 1, 2]."] == 0.4
    assert {r.body["max_tokens"] for r in fake_openai.chat_requests} == {50}
    assert {r.body["model"] for r in fake_openai.chat_requests} == {"gpt-3.5-turbo"}
    assert len(fake_openai.chat_requests) == 7  # 6 turns + 1 retried 500

    sent = len(fake_openai.requests)
    assert run_answers(config, answerer).answered == 0 and len(fake_openai.requests) == sent

    # --system= sends no system message; --temperature cannot override a question's required temperature.
    fake_openai.clear()
    bare = dataclasses.replace(config, answer_file=str(tmp_path / "bare.jsonl"), question_ids=("1",))
    run_answers(bare, OpenAIAnswerer("gpt-3.5-turbo", system=""))
    assert [m["role"] for m in fake_openai.chat_requests[0].body["messages"]] == ["user"]
    forced = dataclasses.replace(bare, question_ids=(), temperature=1.0)
    with pytest.raises(UserError, match="conflicts with the required_temperature of question_id 5 in"):
        run_answers(forced, answerer)


def test_local_answers_honour_required_temperature(tmp_path: Path, counting: CountingGenerator):
    questions = [{**QUESTIONS[0], "required_temperature": 0.5}, QUESTIONS[2]]  # coding (table: 0.0), writing
    _run(tmp_path, counting, questions)
    assert sorted(params.temperature for _, params in counting.calls) == [0.5, 0.7]


def test_openai_failures_are_left_for_the_next_run(tmp_path: Path, fake_openai: Any, monkeypatch):
    fake_openai.reply = _echo
    qfile = write_jsonl(tmp_path / "q.jsonl", QUESTIONS[:1])
    config = AnswerConfig(question_file=qfile, answer_file=str(tmp_path / "a.jsonl"), model_id="m",
                          batch_size=1)
    fake_openai.push(Fault(status=503))
    summary = run_answers(config, OpenAIAnswerer("m", max_retries=0))
    assert len(summary.failed) == 1 and "HTTP 503" in summary.failed[0] and _read(config.answer_file) == []
    assert run_answers(config, OpenAIAnswerer("m", max_retries=0)).answered == 1

    # A rejected key stops the run with one clean message that never shows the key.
    wrong = "sk-wrong-0123456789abcdef0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", wrong)
    config = dataclasses.replace(config, answer_file=str(tmp_path / "b.jsonl"))
    with pytest.raises(UserError, match="HTTP 401") as err:
        run_answers(config, OpenAIAnswerer("m", max_retries=0))
    assert wrong not in str(err.value)


def test_openai_cli(tmp_path: Path, fake_openai: Any):
    fake_openai.reply = _echo
    qfile = write_jsonl(tmp_path / "q.jsonl", QUESTIONS)
    out = tmp_path / "api.jsonl"
    done = _cli("--openai_model=gpt-4", f"--question_file={qfile}", f"--answer_file={out}",
                "--categories=math")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = _read(out)
    assert [r["question_id"] for r in rows] == [2] and rows[0]["model_id"] == "gpt-4"
    assert len(rows[0]["choices"][0]["turns"]) == 2
