"""Judge prompts: ours cover every judging shape; FastChat-format files load; rendering and its errors."""

import json
from pathlib import Path

import pytest
from eval_samples import write_jsonl

from vicuna_jax.eval.jsonl import EvalInputError
from vicuna_jax.eval.prompts import (
    check_turn_supported,
    default_prompt_file,
    load_prompts,
    pair_values,
    select_prompt,
    single_values,
    vicuna_values,
)
from vicuna_jax.eval.questions import Question

Q2 = Question(5, "math", ("What is 2+2?", "And times 3?"))


def test_our_prompts_cover_every_shape() -> None:
    prompts = load_prompts(default_prompt_file("single"))
    shapes = (("single", "[[6]]", 3), ("pairwise", "[[A]]", 3), ("pairwise", "[[B>>A]]", 5))
    for kind, token, levels in shapes:
        for multi in (False, True):
            for ref in (False, True):
                p = select_prompt(prompts, kind, multi_turn=multi, reference=ref, verdict_levels=levels)
                assert (p.multi_turn, p.reference_guided, p.verdict_levels) == (multi, ref, levels)
                assert token in p.prompt_template or token in p.system_prompt
    rubric = " ".join(p.system_prompt + p.prompt_template for p in prompts)
    for word in ("helpfulness", "relevance", "accuracy", "level of detail", "1", "10"):
        assert word in rubric
    reviews = load_prompts(default_prompt_file("vicuna"))
    assert {
        select_prompt(reviews, "vicuna", category=c).category for c in ("coding", "math", "roleplay")
    } == {"coding", "math", "general"}
    for p in reviews:
        assert "first line" in p.prompt_template and "[[" not in p.prompt_template


def test_our_prompts_are_our_own_words() -> None:
    """Guard against pasting FastChat's texts: some of its distinctive sentences must not appear."""
    ours = Path(default_prompt_file("single")).read_text() + Path(default_prompt_file("vicuna")).read_text()
    for phrase in (
        "Please act as an impartial judge",
        "Avoid any positional biases",
        "You are a helpful and precise assistant for checking the quality of the answer",
        "by strictly following this format",
        "We would like to request your feedback",
        # Arena-Hard's judge prompt
        "You must output only one of the following choices as your final verdict",
        "Assistant A is significantly better",
        "compare both assistants' answers with your answer",
    ):
        assert phrase not in ours


def test_render_fills_placeholders_once() -> None:
    prompts = load_prompts(default_prompt_file("single"))
    p = select_prompt(prompts, "single")
    text = p.render(single_values(Q2, 1, ("It is {answer} 4", "12"), None))
    assert "It is {answer} 4" in text  # braces inside an answer are not placeholders
    assert "What is 2+2?" in text and "12" not in text
    multi = select_prompt(prompts, "pairwise", multi_turn=True, reference=True)
    text = multi.render(pair_values(Q2, 2, ("4", "12"), ("5", "15"), ("4", "12 (ref)")))
    assert text.index("### Assistant A:\n4") < text.index("### Assistant B:\n5")
    assert "12 (ref)" in text and "And times 3?" in text


def test_fastchat_format_file(tmp_path: Path) -> None:
    """A prompt file in FastChat's schema (texts made up here) with its fixed two-turn placeholders."""
    rows = [
        {
            "name": "s",
            "type": "single",
            "system_prompt": "sys",
            "prompt_template": "Q {question} A {answer} {{x}}",
            "description": "",
            "category": "general",
            "output_format": "[[rating]]",
        },
        {
            "name": "s-mt",
            "type": "single",
            "system_prompt": "sys",
            "prompt_template": "{question_1}|{answer_1}|{question_2}|{answer_2}",
            "description": "",
            "category": "general",
            "output_format": "[[rating]]",
        },
        # Mislabelled category, as in FastChat's own file: the placeholders decide.
        {
            "name": "p-ref",
            "type": "pairwise",
            "system_prompt": "sys",
            "prompt_template": "{question} {ref_answer_1} {answer_a} {answer_b}",
            "description": "",
            "category": "general",
            "output_format": "[[A]]",
        },
    ]
    prompts = load_prompts(write_jsonl(tmp_path / "judge_prompts.jsonl", rows))
    s = select_prompt(prompts, "single")
    assert s.render(single_values(Q2, 1, ("4", "12"), None)) == "Q What is 2+2? A 4 {x}"
    mt = select_prompt(prompts, "single", multi_turn=True)
    assert mt.render(single_values(Q2, 2, ("4", "12"), None)) == "What is 2+2?|4|And times 3?|12"
    check_turn_supported(mt, 2)
    with pytest.raises(EvalInputError, match="turn 3"):
        check_turn_supported(mt, 3)
    assert select_prompt(prompts, "pairwise", reference=True).name == "p-ref"
    with pytest.raises(EvalInputError, match="no 'pairwise' prompt for single-turn, without reference"):
        select_prompt(prompts, "pairwise")
    with pytest.raises(EvalInputError, match=r"uses \{ref_answer_1\}"):
        prompts[2].render(pair_values(Q2, 1, ("4",), ("5",), None))


def test_older_vicuna_reviewer_format(tmp_path: Path) -> None:
    rows = [
        {
            "prompt_id": 1,
            "system_prompt": "sys",
            "prompt_template": "{question}|{answer_1}|{answer_2}|{prompt}",
            "defaults": {"prompt": "Rate both {braces kept}."},
            "description": "",
            "category": "general",
        },
        {
            "prompt_id": 2,
            "system_prompt": "sys",
            "prompt_template": "code {question}|{answer_1}|{answer_2}",
            "defaults": {},
            "description": "",
            "category": "coding",
        },
    ]
    prompts = load_prompts(write_jsonl(tmp_path / "prompt.jsonl", rows))
    general = select_prompt(prompts, "vicuna", category="knowledge")
    assert general.type == "vicuna" and general.name == "vicuna-prompt-1"
    assert general.render(vicuna_values(Q2, ("4",), ("5",))) == "What is 2+2?|4|5|Rate both {braces kept}."
    assert select_prompt(prompts, "vicuna", category="coding").name == "vicuna-prompt-2"


@pytest.mark.parametrize(
    "row, message",
    [
        (
            {"name": "x", "type": "single", "prompt_template": "t", "output_format": "[[rating]]"},
            "bad.jsonl:2: missing key 'system_prompt'",
        ),
        (
            {"name": "x", "type": "triple", "system_prompt": "s", "prompt_template": "t"},
            "bad.jsonl:2: key 'type'",
        ),
        (
            {
                "name": "x",
                "type": "pairwise",
                "system_prompt": "s",
                "prompt_template": "t",
                "output_format": ["[[A]]"],
            },
            "bad.jsonl:2: key 'output_format'",
        ),
        (
            {
                "name": "ok",
                "type": "single",
                "system_prompt": "s",
                "prompt_template": "t",
                "output_format": "[[rating]]",
            },
            "bad.jsonl:2: duplicate prompt name 'ok'",
        ),
    ],
)
def test_bad_prompt_files_name_file_line_and_key(tmp_path: Path, row: dict, message: str) -> None:
    good = {
        "name": "ok",
        "type": "single",
        "system_prompt": "s",
        "prompt_template": "t",
        "output_format": "[[rating]]",
    }
    path = write_jsonl(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(EvalInputError, match=message) as err:
        load_prompts(path)
    assert "bad.jsonl" in str(err.value)


def test_invalid_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    good = {
        "name": "a",
        "type": "single",
        "system_prompt": "s",
        "prompt_template": "t",
        "output_format": "[[rating]]",
    }
    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(EvalInputError, match=r"broken.jsonl:2: invalid JSON"):
        load_prompts(str(path))
