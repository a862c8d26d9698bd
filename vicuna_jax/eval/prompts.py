"""Judge prompts: loading (ours or FastChat's files), choosing one per question, and filling placeholders.

Prompt files use FastChat's judge-prompt format, one JSON object a line: `{"name", "type":
"single"|"pairwise"|"vicuna", "system_prompt", "prompt_template", "description", "category",
"output_format"}`. FastChat's older Vicuna reviewer file (`{"prompt_id", "system_prompt", "prompt_template",
"defaults": {"prompt": ...}, "category"}`) is read too, as type "vicuna".

A prompt's role is read from its placeholders, not its name or category (FastChat's own file mislabels one):
it is reference-guided when it uses `{ref_answer_N}` or `{reference_conversation}`, and multi-turn when it
uses a second-turn placeholder or a whole `{conversation}`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import json
import re
from typing import Any

from vicuna_jax.eval.jsonl import EvalInputError, iter_jsonl, require
from vicuna_jax.eval.questions import Question

KINDS = ("single", "pairwise", "vicuna")
_PLACEHOLDER_RE = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
_MULTI_TURN_RE = re.compile(r"^(question|answer|answer_a|answer_b|ref_answer)_([2-9]|\d\d+)$")
_CONVERSATION_KEYS = {"conversation", "conversation_a", "conversation_b"}


@dataclasses.dataclass(frozen=True)
class JudgePrompt:
    name: str
    type: str
    system_prompt: str
    prompt_template: str
    category: str = "general"
    output_format: str = ""
    description: str = ""
    source: str = ""  # "file:line", for error messages

    @property
    def sha256(self) -> str:
        """A fingerprint of the prompt's text (system prompt and template), recorded in every judgment row so
        that judgments made with different wordings of one prompt name are never mixed unnoticed."""
        text = json.dumps([self.system_prompt, self.prompt_template], ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    @property
    def placeholders(self) -> frozenset[str]:
        return frozenset(m.group(1) for m in _PLACEHOLDER_RE.finditer(self.prompt_template) if m.group(1))

    @property
    def reference_guided(self) -> bool:
        return any(p.startswith("ref_answer") or p == "reference_conversation" for p in self.placeholders)

    @property
    def verdict_levels(self) -> int:
        """5 for a pairwise prompt asking for Arena-Hard-style verdicts ([[A>>B]] ... [[B>>A]]), else 3."""
        return 5 if self.type == "pairwise" and ">" in self.output_format else 3

    @property
    def multi_turn(self) -> bool:
        if self.type == "vicuna":  # Vicuna reviews show one turn; their {answer_2} is assistant 2's answer
            return False
        keys = self.placeholders
        return bool(keys & _CONVERSATION_KEYS) or any(_MULTI_TURN_RE.match(p) for p in keys)

    def render(self, values: dict[str, str]) -> str:
        """Fills `{name}` placeholders in one pass (answers may hold braces); `{{`, `}}` are braces."""

        def fill(m: re.Match[str]) -> str:
            if m.group(0) in ("{{", "}}"):
                return m.group(0)[0]
            key = m.group(1)
            if key not in values:
                raise EvalInputError(
                    f"judge prompt '{self.name}' ({self.source}) uses {{{key}}}, not available here"
                )
            return values[key]

        return _PLACEHOLDER_RE.sub(fill, self.prompt_template)


def default_prompt_file(kind: str) -> str:
    """Path of our shipped prompt file for a judging kind."""
    name = "vicuna_review_prompts.jsonl" if kind == "vicuna" else "judge_prompts.jsonl"
    return str(importlib.resources.files("vicuna_jax.eval") / "prompts" / name)


def load_prompts(path: str) -> list[JudgePrompt]:
    """Reads a judge-prompt file in FastChat's (or the older Vicuna reviewer) format."""
    prompts: list[JudgePrompt] = []
    names: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        prompt = _parse_prompt(obj, path, lineno)
        if prompt.name in names:
            raise EvalInputError(
                f"{path}:{lineno}: duplicate prompt name '{prompt.name}' (line {names[prompt.name]})"
            )
        names[prompt.name] = lineno
        prompts.append(prompt)
    if not prompts:
        raise EvalInputError(f"{path}: no prompts")
    return prompts


def _parse_prompt(obj: dict[str, Any], path: str, lineno: int) -> JudgePrompt:
    source = f"{path}:{lineno}"
    system = require(obj, "system_prompt", path, lineno, str)
    template = require(obj, "prompt_template", path, lineno, str)
    category = obj.get("category", "general")
    if not isinstance(category, str):
        raise EvalInputError(f"{source}: key 'category' should be str")
    if "prompt_id" in obj and "name" not in obj:  # the older Vicuna reviewer format
        defaults = obj.get("defaults", {})
        if not isinstance(defaults, dict) or not all(isinstance(v, str) for v in defaults.values()):
            raise EvalInputError(f"{source}: key 'defaults' should map names to strings")
        template = _fill_defaults(template, defaults)
        name = f"vicuna-prompt-{obj['prompt_id']}"
        return JudgePrompt(
            name,
            "vicuna",
            system,
            template,
            category,
            "two scores on the first line",
            obj.get("description", ""),
            source,
        )
    name = require(obj, "name", path, lineno, str)
    kind = require(obj, "type", path, lineno, str)
    if kind not in KINDS:
        raise EvalInputError(f"{source}: key 'type' is '{kind}'; expected one of {', '.join(KINDS)}")
    output_format = obj.get("output_format") or ("[[A]]" if kind == "pairwise" else "[[rating]]")
    if not isinstance(output_format, str):
        raise EvalInputError(
            f"{source}: key 'output_format' should be a string such as '[[A]]' or '[[rating]]'"
        )
    return JudgePrompt(
        name, kind, system, template, category, output_format, obj.get("description", ""), source
    )


def _fill_defaults(template: str, defaults: dict[str, str]) -> str:
    """Substitutes the reviewer file's `defaults` now, keeping the other placeholders for later."""

    def fill(m: re.Match[str]) -> str:
        key = m.group(1)
        if key and key in defaults:
            return defaults[key].replace("{", "{{").replace("}", "}}")
        return m.group(0)

    return _PLACEHOLDER_RE.sub(fill, template)


def select_prompt(
    prompts: list[JudgePrompt],
    kind: str,
    *,
    multi_turn: bool = False,
    reference: bool = False,
    category: str = "",
    verdict_levels: int = 3,
) -> JudgePrompt:
    """The first prompt of `kind` that fits; Vicuna review prompts are chosen by category (coding, math).
    Pairwise prompts must also give verdicts on the asked scale (3: A / B / tie, 5: Arena-Hard style)."""
    if kind == "vicuna":
        candidates = [p for p in prompts if p.type == "vicuna"]
        if not candidates:
            raise EvalInputError("the judge prompt file has no prompts of type 'vicuna'")
        for wanted in (category, "general"):
            for p in candidates:
                if p.category == wanted:
                    return p
        return candidates[0]
    levels = verdict_levels if kind == "pairwise" else 3
    for p in prompts:
        if (p.type == kind and p.multi_turn == multi_turn and p.reference_guided == reference
                and p.verdict_levels == levels):
            return p
    shape = f"{'multi-turn' if multi_turn else 'single-turn'}, {'with' if reference else 'without'} reference"
    if kind == "pairwise":
        shape += f", {levels}-level verdicts"
    raise EvalInputError(f"the judge prompt file has no '{kind}' prompt for {shape} judging")


def conversation(questions: tuple[str, ...], replies: tuple[str, ...], speaker: str) -> str:
    """A transcript of the first len(replies) turns, for multi-turn prompts."""
    parts = [f"### User:\n{q}\n\n### {speaker}:\n{r}" for q, r in zip(questions, replies, strict=False)]
    return "\n\n".join(parts)


def single_values(
    question: Question, turn: int, answer: tuple[str, ...], reference: tuple[str, ...] | None
) -> dict[str, str]:
    """Placeholder values for grading one model's reply to `turn` (1-based)."""
    qs, ans = question.turns[:turn], answer[:turn]
    values = {"question": qs[-1], "answer": ans[-1], "conversation": conversation(qs, ans, "Assistant")}
    for i in range(turn):
        values[f"question_{i + 1}"] = qs[i]
        values[f"answer_{i + 1}"] = ans[i]
    values.update(_reference_values(qs, reference))
    return values


def pair_values(
    question: Question,
    turn: int,
    answer_a: tuple[str, ...],
    answer_b: tuple[str, ...],
    reference: tuple[str, ...] | None,
) -> dict[str, str]:
    """Placeholder values for comparing two replies to `turn` (1-based), A shown first."""
    qs, a, b = question.turns[:turn], answer_a[:turn], answer_b[:turn]
    values = {
        "question": qs[-1],
        "answer_a": a[-1],
        "answer_b": b[-1],
        "conversation_a": conversation(qs, a, "Assistant A"),
        "conversation_b": conversation(qs, b, "Assistant B"),
    }
    for i in range(turn):
        values[f"question_{i + 1}"] = qs[i]
        values[f"answer_a_{i + 1}"] = a[i]
        values[f"answer_b_{i + 1}"] = b[i]
    values.update(_reference_values(qs, reference))
    return values


def vicuna_values(question: Question, answer_1: tuple[str, ...], answer_2: tuple[str, ...]) -> dict[str, str]:
    """Placeholder values for the original Vicuna review of the first turn."""
    return {"question": question.turns[0], "answer_1": answer_1[0], "answer_2": answer_2[0]}


def _reference_values(questions: tuple[str, ...], reference: tuple[str, ...] | None) -> dict[str, str]:
    if not reference:
        return {}
    values = {f"ref_answer_{i + 1}": r for i, r in enumerate(reference[: len(questions)])}
    values["reference_conversation"] = conversation(
        questions, reference[: len(questions)], "Reference answer"
    )
    return values


def check_turn_supported(prompt: JudgePrompt, turn: int) -> None:
    """A fixed two-turn template (FastChat's) cannot show a third turn; say so instead of judging blind."""
    keys = prompt.placeholders
    if turn < 2 or keys & _CONVERSATION_KEYS:
        return
    if not keys & {f"answer_{turn}", f"answer_a_{turn}"}:
        raise EvalInputError(
            f"judge prompt '{prompt.name}' ({prompt.source}) shows at most the turns in its placeholders, "
            f"not turn {turn}; use a prompt with {{conversation}} placeholders (ours) or fewer turns"
        )
