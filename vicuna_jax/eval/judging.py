"""Judging one match: render its prompt(s), ask the judge, parse, and build the output row.

Row schemas (FastChat-compatible, so FastChat's tools can read our files and we theirs):
  single   {question_id, model, judge, user_prompt, judgment, score, turn, tstamp}
  pairwise {question_id, model_1, model_2, g1_winner, g2_winner, judge, g1_user_prompt, g1_judgment,
            g2_user_prompt, g2_judgment, turn, tstamp}
  vicuna   {question_id, model_1, model_2, text, score: [s1, s2], judge}
`judge` is [judge model, prompt name]. Every row also records `judge_host` (the endpoint's host[:port]) and
`judge_prompt_sha256` (see JudgePrompt.sha256), so the report can refuse to mix different judges.
Pairwise game 1 shows model_1 as A; game 2 swaps the positions, and both winners are stored as "model_1",
"model_2", "tie" or "error". With a five-level prompt the rows also hold `g1_verdict` / `g2_verdict`, the
judge's verdict as given (positional: in game 2, A is model_2), e.g. "A>>B"; ">>" marks a strong one.
Pairwise rows also record `answer_lengths`: the characters of model_1's and model_2's judged replies, for
the report's length-controlled win rate.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Protocol

from absl import logging

from vicuna_jax.eval.matches import Match
from vicuna_jax.eval.prompts import JudgePrompt, pair_values, single_values, vicuna_values
from vicuna_jax.eval.verdicts import (
    ERROR_SCORE,
    first_line,
    five_level_winner,
    is_five_level,
    last_line,
    parse_review_scores,
    parse_score,
    parse_verdict,
)

DEFAULT_TEMPERATURE = {"single": 0.0, "pairwise": 0.0, "vicuna": 0.2}  # the blog's reviewer used 0.2
DEFAULT_MAX_TOKENS = {"single": 2048, "pairwise": 2048, "vicuna": 1024}


class Completer(Protocol):
    def complete(
        self, system_prompt: str, user_prompt: str, *, temperature: float, max_tokens: int
    ) -> str: ...


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How the judge is asked, and who it is (recorded in every row)."""

    judge_model: str
    temperature: float | None = None  # None: the mode's default above
    max_tokens: int | None = None
    judge_host: str = ""  # the endpoint's host[:port]

    def provenance(self, prompt: JudgePrompt) -> dict[str, Any]:
        return {
            "judge": [self.judge_model, prompt.name],
            "judge_host": self.judge_host,
            "judge_prompt_sha256": prompt.sha256,
        }

    def for_kind(self, kind: str) -> dict[str, Any]:
        temperature = DEFAULT_TEMPERATURE[kind] if self.temperature is None else self.temperature
        max_tokens = DEFAULT_MAX_TOKENS[kind] if self.max_tokens is None else self.max_tokens
        return {"temperature": temperature, "max_tokens": max_tokens}


def judge_match(match: Match, judge: Completer, sampling: Sampling) -> dict[str, Any]:
    """Asks the judge about one match (two requests for pairwise) and returns the output row."""
    kwargs = sampling.for_kind(match.kind)
    q, prompt = match.question, match.prompt
    if match.kind == "single":
        user = prompt.render(single_values(q, match.turn, match.answers[0], match.reference))
        text = judge.complete(prompt.system_prompt, user, **kwargs)
        score = parse_score(text)
        if score == ERROR_SCORE:
            logging.warning(
                "no 0-10 rating in the judgment of question %s, model %s, turn %d (its last line: %r); "
                "recorded as -1",
                q.question_id,
                match.models[0],
                match.turn,
                last_line(text),
            )
        return {
            "question_id": q.question_id,
            "model": match.models[0],
            "user_prompt": user,
            "judgment": text,
            "score": score,
            "turn": match.turn,
            "tstamp": time.time(),
            **sampling.provenance(prompt),
        }
    if match.kind == "pairwise":
        a1, a2 = match.answers
        g1_user = prompt.render(pair_values(q, match.turn, a1, a2, match.reference))
        g1_text = judge.complete(prompt.system_prompt, g1_user, **kwargs)
        g2_user = prompt.render(pair_values(q, match.turn, a2, a1, match.reference))
        g2_text = judge.complete(prompt.system_prompt, g2_user, **kwargs)
        v1, v2 = parse_verdict(g1_text, prompt.output_format), parse_verdict(g2_text, prompt.output_format)
        five = is_five_level(prompt.output_format)
        if five:
            verdicts = {"g1_verdict": v1, "g2_verdict": v2}
            v1, v2 = five_level_winner(v1), five_level_winner(v2)
        g1 = _winner(v1, a="model_1", b="model_2")
        g2 = _winner(v2, a="model_2", b="model_1")
        if "error" in (g1, g2):
            games = ((1, g1, g1_text), (2, g2, g2_text))
            seen = [f"game {i}: {last_line(t)!r}" for i, g, t in games if g == "error"]
            logging.warning(
                "no clear verdict for question %s, %s vs %s, turn %d (last line of %s); recorded as 'error'",
                q.question_id,
                *match.models,
                match.turn,
                "; ".join(seen),
            )
        return {
            "question_id": q.question_id,
            "model_1": match.models[0],
            "model_2": match.models[1],
            "g1_winner": g1,
            "g2_winner": g2,
            **(verdicts if five else {}),
            "answer_lengths": [len(a1[match.turn - 1]), len(a2[match.turn - 1])],
            "g1_user_prompt": g1_user,
            "g1_judgment": g1_text,
            "g2_user_prompt": g2_user,
            "g2_judgment": g2_text,
            "turn": match.turn,
            "tstamp": time.time(),
            **sampling.provenance(prompt),
        }
    user = prompt.render(vicuna_values(q, *match.answers))
    text = judge.complete(prompt.system_prompt, user, **kwargs)
    scores = parse_review_scores(text)
    if scores[0] == ERROR_SCORE:
        logging.warning(
            "no score pair in the review of question %s, %s vs %s: its first line is %r and no later line "
            "states the two scores; recorded as -1",
            q.question_id,
            *match.models,
            first_line(text),
        )
    return {
        "question_id": q.question_id,
        "model_1": match.models[0],
        "model_2": match.models[1],
        "text": text,
        "score": scores,
        **sampling.provenance(prompt),
    }


def _winner(verdict: str, *, a: str, b: str) -> str:
    """Maps a positional verdict to the model that held that position; 'tie' and 'error' pass through."""
    return {"A": a, "B": b}.get(verdict, verdict)
