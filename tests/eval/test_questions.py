"""Question/answer files in both FastChat formats, errors that name file:line:key, the crash-safe appender."""

import importlib.resources
import json
from pathlib import Path

import pytest
from eval_samples import write_jsonl

from vicuna_jax.eval.jsonl import EvalInputError, JsonlAppender
from vicuna_jax.eval.questions import check_answers_cover, load_answer_files, load_answers, load_questions

VICUNA_CATEGORIES = {
    "generic",
    "knowledge",
    "roleplay",
    "common-sense",
    "fermi",
    "counterfactual",
    "coding",
    "math",
    "writing",
}


def test_both_question_formats(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "q.jsonl",
        [
            {"question_id": 1, "category": "coding", "turns": ["a", "b"]},
            {"question_id": "v2", "text": "older format", "category": "fermi"},
        ],
    )
    qs = load_questions(path)
    assert [(q.question_id, q.category, q.turns) for q in qs] == [
        (1, "coding", ("a", "b")),
        ("v2", "fermi", ("older format",)),
    ]


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"category": "x", "turns": ["a"]}], "q.jsonl:1: missing key 'question_id'"),
        ([{"question_id": 1, "turns": ["a"]}], "q.jsonl:1: missing key 'category'"),
        ([{"question_id": 1, "category": "x"}], "q.jsonl:1: missing key 'turns'"),
        (
            [{"question_id": 1, "category": "x", "turns": []}],
            "q.jsonl:1: key 'turns' should be a non-empty list",
        ),
        ([{"question_id": 1, "category": "x", "turns": [3]}], "q.jsonl:1: key 'turns'"),
        (
            [{"question_id": True, "category": "x", "turns": ["a"]}],
            "q.jsonl:1: key 'question_id' should be int/str",
        ),
        (
            [{"question_id": 1, "category": "x", "turns": ["a"], "required_temperature": "hot"}],
            "q.jsonl:1: key 'required_temperature' should be a number >= 0",
        ),
        (
            [
                {"question_id": 1, "category": "x", "turns": ["a"]},
                {"question_id": "1", "category": "x", "text": "b"},
            ],
            "q.jsonl:2: duplicate question_id '1' \\(first on line 1\\)",
        ),
        ([], "q.jsonl: no questions"),
    ],
)
def test_bad_questions(tmp_path: Path, rows: list, message: str) -> None:
    with pytest.raises(EvalInputError, match=message):
        load_questions(write_jsonl(tmp_path / "q.jsonl", rows))


def test_answers_both_formats_and_model_ids(tmp_path: Path) -> None:
    new = write_jsonl(
        tmp_path / "new.jsonl",
        [
            {
                "question_id": 1,
                "answer_id": "x",
                "model_id": "vicuna-7b",
                "choices": [{"index": 0, "turns": ["a", "b"]}],
                "tstamp": 1.0,
            },
        ],
    )
    old = write_jsonl(
        tmp_path / "alpaca-13b.jsonl", [{"question_id": "1", "text": "old answer", "answer_id": 3}]
    )
    answers = load_answer_files([new, old])
    assert answers == {"vicuna-7b": {"1": ("a", "b")}, "alpaca-13b": {"1": ("old answer",)}}  # name from file
    with pytest.raises(EvalInputError, match="model 'vicuna-7b' already came from"):
        load_answer_files([new, new])


@pytest.mark.parametrize(
    "rows, message",
    [
        (
            [{"question_id": 1, "model_id": "m", "choices": []}],
            "a.jsonl:1: key 'choices' should be a non-empty",
        ),
        (
            [{"question_id": 1, "model_id": "m", "choices": [{"index": 0}]}],
            "a.jsonl:1: missing key 'choices\\[0\\].turns'",
        ),
        ([{"question_id": 1, "model_id": "m"}], "a.jsonl:1: missing key 'choices'"),
        (
            [
                {"question_id": 1, "model_id": "m", "text": "x"},
                {"question_id": 1, "model_id": "m", "text": "y"},
            ],
            "a.jsonl:2: duplicate answer for question_id 1",
        ),
        (
            [
                {"question_id": 1, "model_id": "m", "text": "x"},
                {"question_id": 2, "model_id": "n", "text": "y"},
            ],
            "a.jsonl: answers from several models",
        ),
    ],
)
def test_bad_answers(tmp_path: Path, rows: list, message: str) -> None:
    with pytest.raises(EvalInputError, match=message):
        load_answers(write_jsonl(tmp_path / "a.jsonl", rows))


def test_missing_answers_fail_before_judging(tmp_path: Path) -> None:
    qs = load_questions(
        write_jsonl(
            tmp_path / "q.jsonl",
            [
                {"question_id": 1, "category": "x", "turns": ["a", "b"]},
                {"question_id": 2, "category": "x", "turns": ["c"]},
            ],
        )
    )
    answers = {"m": {"1": ("only one turn",)}}
    with pytest.raises(EvalInputError, match=r"model 'm' has no answer for question_id 2.*fewer turns .* 1"):
        check_answers_cover(qs, answers, ["m"])


def test_appender_flushes_each_row_and_sets_aside_a_cut_line(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with JsonlAppender(str(path)) as out:
        out.append({"a": 1})
        assert path.read_text() == '{"a": 1}\n'  # on disk before close
    with open(path, "a") as f:
        f.write('{"a": 2, "cut sh')  # a kill in the middle of a write
    out = JsonlAppender(str(path))
    assert out.existing == [{"a": 1}]
    out.append({"a": 3})
    out.close()
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"a": 1}, {"a": 3}]
    assert Path(f"{path}.partial").read_text() == '{"a": 2, "cut sh\n'  # kept, not silently dropped


def test_appender_refuses_a_corrupt_middle_line(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(EvalInputError, match="out.jsonl:2: invalid JSON"):
        JsonlAppender(str(path))
    assert path.read_text() == '{"a": 1}\nnot json\n{"a": 2}\n'  # untouched


def test_appender_redacts(tmp_path: Path) -> None:
    with JsonlAppender(str(tmp_path / "o.jsonl"), redact=lambda s: s.replace("sk-secret-123", "***")) as out:
        out.append({"judgment": "the key is sk-secret-123"})
    assert "sk-secret" not in (tmp_path / "o.jsonl").read_text()


def test_shipped_questions_cover_the_vicuna_categories() -> None:
    path = str(importlib.resources.files("vicuna_jax") / "assets" / "questions.jsonl")
    qs = load_questions(path)
    counts = {c: sum(q.category == c for q in qs) for c in VICUNA_CATEGORIES}
    assert set(q.category for q in qs) == VICUNA_CATEGORIES
    assert min(counts.values()) >= 2
    assert sum(len(q.turns) > 1 for q in qs) >= 3
