"""Small question, answer and reference files in FastChat's formats, with markers the fake judge reads."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fake_openai import marker


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return os.fspath(path)


# Three questions: a one-turn general one, a two-turn writing one, and a math one (reference-guided).
QUESTIONS = [
    {"question_id": 1, "category": "generic", "turns": ["How do I keep a sourdough starter alive?"]},
    {
        "question_id": 2,
        "category": "writing",
        "turns": ["Write a haiku about rain.", "Now make it about snow."],
    },
    {"question_id": 3, "category": "math", "turns": ["What is 17 * 23?"]},
]
# Marker score per model, question and turn; the fake judge grades by these.
SCORES = {
    "model-a": {1: [8], 2: [6, 9], 3: [3]},
    "model-b": {1: [5], 2: [6, 4], 3: [7]},
    "model-c": {1: [2], 2: [9, 1], 3: [7]},
}
REFERENCE_TEXT = "17 * 23 = 391"


def answer_rows(model: str) -> list[dict[str, Any]]:
    rows = []
    for q in QUESTIONS:
        qid = q["question_id"]
        turns = [
            f"{model} answer {{with braces}} {marker(s, t + 1)}" for t, s in enumerate(SCORES[model][qid])
        ]
        rows.append(
            {
                "question_id": qid,
                "answer_id": f"{model}-{qid}",
                "model_id": model,
                "choices": [{"index": 0, "turns": turns}],
                "tstamp": 0.0,
            }
        )
    return rows


def make_eval_files(directory: Path) -> dict[str, Any]:
    """Writes questions, three models' answers and a reference file; returns their paths."""
    files: dict[str, Any] = {"questions": write_jsonl(directory / "questions.jsonl", QUESTIONS)}
    files["answers"] = {m: write_jsonl(directory / f"{m}.jsonl", answer_rows(m)) for m in SCORES}
    reference = [
        {
            "question_id": 3,
            "answer_id": "ref-3",
            "model_id": "gpt-4",
            "choices": [{"index": 0, "turns": [REFERENCE_TEXT]}],
            "tstamp": 0.0,
        }
    ]
    files["reference"] = write_jsonl(directory / "reference.jsonl", reference)
    return files
