"""Parsing judge text: ratings, strict pairwise verdicts (an echoed format never counts), review scores."""

import pytest

from vicuna_jax.eval.verdicts import parse_review_scores, parse_score, parse_verdict


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Good answer.\nRating: [[8.5]]", 8.5),
        ("Rating: [[10]]", 10.0),
        ("Rating: [8]", 8.0),  # single-bracket fallback
        ("The format asks for [[5]] style. My grade: [[7]]", 7.0),  # the last rating wins
        ("See reference [1]. Grade: [[6]]", 6.0),  # a double-bracket rating beats a citation
        ("I cannot decide.", -1.0),
        ("Rating: [[eight]]", -1.0),
        ("Rating: [[11]]", -1.0),  # off the 1-10 scale
        ("Rating: [[0]]", -1.0),
        ("", -1.0),
    ],
)
def test_parse_score(text: str, expected: float) -> None:
    assert parse_score(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Assistant A explains more.\nFinal verdict: [[A]]", "A"),
        ("[[B]]", "B"),
        ("They are equally good. [[C]]", "tie"),
        ("My final verdict is [[ B ]].", "B"),
        # The judge restating the format is not a verdict.
        ("I will output [[A]] if assistant A is better.", "error"),
        ("Output [[A]] if A is better, [[B]] if B is better, and [[C]] for a tie.", "error"),
        ("Choose [[A]]/[[B]]/[[C]].", "error"),
        ("If assistant A is better, output [[A]].", "error"),
        ('The format is "[[A]]" for A, "[[B]]" for B. Assistant B is more accurate. [[B]]', "B"),
        ("Allowed: [[A]], [[B]], or [[C]].\nMy verdict: [[A]]", "A"),
        ('I was told to write "[[A]]" if A is better. B is better here: [[B]]', "B"),
        # Real disagreement or nothing at all.
        ("At first [[A]] but on reflection [[B]]", "error"),
        ("Assistant A is better.", "error"),
        ("[A]", "error"),  # the prompt asked for double brackets
    ],
)
def test_parse_verdict(text: str, expected: str) -> None:
    assert parse_verdict(text) == expected


def test_parse_verdict_single_bracket_format() -> None:
    assert parse_verdict("Verdict: [B]", "[A]") == "B"
    assert parse_verdict("[A] if A is better, [B] if B is better", "[A]") == "error"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("8 9\nAssistant 2 gave more detail.", [8.0, 9.0]),
        ("7.5, 6\nexplanation", [7.5, 6.0]),
        ("Assistant 1: 7, Assistant 2: 9\nbecause", [7.0, 9.0]),
        ("**8/10** 9/10", [8.0, 9.0]),
        ("Scores: 4 and 10", [4.0, 10.0]),
        ("\n\n6 8\n", [6.0, 8.0]),  # leading blank lines
        (
            "Let me solve it first.\n2x = 4, so x = 2.\nFinal scores: (3, 9)",
            [3.0, 9.0],
        ),  # math tuple fallback
        ("Both were fine.", [-1.0, -1.0]),
        ("8 9 10\nthree numbers", [-1.0, -1.0]),
        ("12 3\nout of range", [-1.0, -1.0]),
        ("I give Assistant 1 an 8 and Assistant 2 a 9.", [-1.0, -1.0]),
    ],
)
def test_parse_review_scores(text: str, expected: list[float]) -> None:
    assert parse_review_scores(text) == expected
