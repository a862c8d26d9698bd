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
        ("The reply is empty.\nRating: [[0]]", 0.0),  # 0 is a verdict (an empty answer), not a failure
        ("Rating: [[-2]]", -1.0),
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


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A is wrong, B is right.\nMy final verdict is [[B>>A]]", "B>>A"),
        ("Slightly better: [[A>B]]", "A>B"),
        ("[[ A = B ]]", "A=B"),
        ("[[B<A]]", "A>B"),  # the same verdict written the other way round
        ("[[A<<B]]", "B>>A"),
        ("[[B>A]]", "B>A"),
        ("[[A>>B]]", "A>>B"),
        # Echoed instructions and lists are not verdicts; disagreement and nonsense are errors.
        ("I output [[A>>B]] if assistant A is much better.", "error"),
        ("Options: [[A>>B]], [[A>B]], [[A=B]], [[B>A]] or [[B>>A]].\nVerdict: [[B>A]]", "B>A"),
        ("[[A>B]] ... on reflection [[B>A]]", "error"),
        ("[[A>A]]", "error"),
        ("[[A]]", "error"),  # a three-level token on a five-level prompt
    ],
)
def test_parse_five_level_verdict(text: str, expected: str) -> None:
    assert parse_verdict(text, "[[A>>B]]") == expected


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
        ("0 8\nAssistant 1 gave no answer at all.", [0.0, 8.0]),  # 0 is a score
        ("Assistant 1 left it blank.\nScores: 0 and 7", [0.0, 7.0]),
        ("Review.\nThe scores are 7 and 9 respectively.", [7.0, 9.0]),
        ("Review.\nScore: 6/10 for Assistant 1 and 8 out of 10 for Assistant 2.", [6.0, 8.0]),
        ("Review.\n**Assistant 1: 7, Assistant 2: 9**", [7.0, 9.0]),
        # A coordinate pair in a math review is not a score pair.
        ("Both found the line through (2, 3) and (4, 7).\nIts end point is (4, 7).", [-1.0, -1.0]),
        ("Assistant 2 found the point (3, 5), which scores well.\nGood work overall.", [-1.0, -1.0]),
        ("Scores for Assistant 1 and 2: 7, 9\nambiguous: three numbers", [-1.0, -1.0]),
        ("Both were fine.", [-1.0, -1.0]),
        ("8 9 10\nthree numbers", [-1.0, -1.0]),
        ("12 3\nout of range", [-1.0, -1.0]),
        ("I give Assistant 1 an 8 and Assistant 2 a 9.", [-1.0, -1.0]),
    ],
)
def test_parse_review_scores(text: str, expected: list[float]) -> None:
    assert parse_review_scores(text) == expected


def test_warnings_quote_what_the_judge_wrote(caplog: pytest.LogCaptureFixture) -> None:
    """The warning for an unreadable review names the line it looked at, not a line that is not there."""
    from vicuna_jax.eval.judging import Sampling, judge_match
    from vicuna_jax.eval.matches import Match
    from vicuna_jax.eval.prompts import default_prompt_file, load_prompts, select_prompt
    from vicuna_jax.eval.questions import Question

    class Judge:
        def __init__(self, text: str) -> None:
            self.text = text

        def complete(self, system_prompt: str, user_prompt: str, **kwargs: object) -> str:
            return self.text

    q = Question(1, "math", ("Where do the lines meet?",))
    review = load_prompts(default_prompt_file("vicuna"))[0]
    match = Match("vicuna", q, ("m1", "m2"), (("a",), ("b",)), review)
    caplog.set_level("WARNING")
    row = judge_match(match, Judge("Both answers are good.\nThey meet at (2, 3)."), Sampling("j"))
    assert row["score"] == [-1.0, -1.0]
    assert "its first line is 'Both answers are good.'" in caplog.text
    caplog.clear()
    single = select_prompt(load_prompts(default_prompt_file("single")), "single")
    match = Match("single", q, ("m1",), (("a",),), single)
    row = judge_match(match, Judge("Fine.\nGrade: seven"), Sampling("j"))
    assert row["score"] == -1.0 and "(its last line: 'Grade: seven')" in caplog.text
