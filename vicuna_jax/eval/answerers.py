"""The two answerers of eval.answers: a local model (batched, KV-cache generator) and an OpenAI-compatible
chat endpoint. Both answer multi-turn questions turn by turn, each turn seeing the model's earlier answers."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

from vicuna_jax.cli import UserError
from vicuna_jax.eval.questions import ERROR_ANSWER

API_SYSTEM_MESSAGE = "You are a helpful assistant."  # FastChat's gen_api_answer (its chatgpt template)


@dataclasses.dataclass
class TurnAnswers:
    """One choice's answers to one question, turn by turn."""

    turns: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None  # set with ERROR_ANSWER turns when a turn could not be answered
    new_tokens: int = 0
    length_stops: int = 0  # turns cut short by max_new_tokens or the context


class GeneratorLike(Protocol):
    """What LocalAnswerer needs of vicuna_jax.generate.Generator (tests wrap one to count calls)."""

    cfg: Any
    tokenizer: Any
    chat_format: Any

    def generate(self, prompts: Sequence[Sequence[int]], params: Any) -> list[Any]: ...


class LocalAnswerer:
    """Batched multi-turn answers from a local model; reusable for serving whole conversations."""

    def __init__(self, generator: GeneratorLike, *, system: str | None = None,
                 max_new_tokens: int = 1024, top_p: float = 1.0, top_k: int = 0,
                 stop_strings: Sequence[str] = ()) -> None:
        """Prompts are made in the generator's chat format (resolved when it was loaded)."""
        self.generator = generator
        self.chat_format, self.system = generator.chat_format, system
        self.max_new_tokens, self.top_p, self.top_k = max_new_tokens, top_p, top_k
        self.stop_strings = tuple(self.chat_format.stop_strings) + tuple(stop_strings)

    def prompt_ids(self, questions: Sequence[str], answers: Sequence[str]) -> list[int]:
        """The generation prompt for turn len(answers)+1: earlier questions with the model's own answers."""
        turns: list[dict[str, str]] = []
        for k, q in enumerate(questions[: len(answers) + 1]):
            turns.append({"from": "human", "value": q})
            if k < len(answers):
                turns.append({"from": "gpt", "value": answers[k]})
        return self.chat_format.encode_prompt(turns, system=self.system)

    def answer_batch(self, conversations: Sequence[Sequence[str]], temperature: float,
                     seed: int = 0) -> list[TurnAnswers]:
        """Answers every conversation's user turns in order, one batched generate call per turn index."""
        from vicuna_jax.generate import SamplingParams

        ctx = self.generator.cfg.max_position_embeddings
        results = [TurnAnswers() for _ in conversations]
        for t in range(max((len(c) for c in conversations), default=0)):
            rows, prompts = [], []
            for i, conv in enumerate(conversations):
                if t >= len(conv) or results[i].error:
                    continue
                ids = self.prompt_ids(conv, results[i].turns)
                if len(ids) >= ctx:
                    results[i].error = (f"turn {t + 1}: the prompt is {len(ids)} tokens, leaving no room in "
                                        f"the model's context of {ctx} tokens")
                    results[i].turns += [ERROR_ANSWER] * (len(conv) - t)
                    continue
                rows.append(i)
                prompts.append(ids)
            if not prompts:
                continue
            # The generator caps each row's budget at the room left in the context.
            params = SamplingParams(max_new_tokens=self.max_new_tokens, temperature=temperature,
                                    top_p=self.top_p, top_k=self.top_k, stop_strings=self.stop_strings,
                                    seed=(seed + t) % (2**31 - 1))
            for i, completion in zip(rows, self.generator.generate(prompts, params), strict=True):
                # FastChat strips answers, and turn 2's prompt carries the stripped text.
                results[i].turns.append(completion.text.strip())
                results[i].new_tokens += len(completion.token_ids)
                results[i].length_stops += completion.finish_reason == "length"
        return results


class AnswerRequestError(RuntimeError):
    """A request failed after the client's retries; the question is left for the next run."""


class OpenAIAnswerer:
    """Multi-turn answers from an OpenAI-compatible chat endpoint (OpenAI, vLLM, a vicuna_jax server).

    The `openai` client retries 408/409/429/5xx, timeouts and dropped connections itself, with exponential
    backoff and the server's Retry-After. The key comes from OPENAI_API_KEY and is scrubbed from messages.
    `system` None sends FastChat's API system message (API_SYSTEM_MESSAGE); "" sends none.
    """

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 system: str | None = None, max_new_tokens: int = 1024, top_p: float = 1.0,
                 max_retries: int = 5, timeout_s: float = 600.0) -> None:
        import openai

        from vicuna_jax.eval.client import FatalJudgeError, redactor, resolve_api_key

        try:
            key = resolve_api_key(api_key)
        except FatalJudgeError as e:
            raise UserError(str(e)) from None
        self.model = model
        self.system = API_SYSTEM_MESSAGE if system is None else system
        self.max_new_tokens, self.top_p = max_new_tokens, top_p
        self.redact = redactor(key)
        self.client = openai.OpenAI(api_key=key, base_url=base_url, max_retries=max_retries,
                                    timeout=timeout_s)

    def answer(self, turns: Sequence[str], temperature: float) -> TurnAnswers:
        import openai

        messages = [{"role": "system", "content": self.system}] if self.system else []
        result = TurnAnswers()
        for question in turns:
            messages.append({"role": "user", "content": question})
            extra = {"top_p": self.top_p} if self.top_p < 1 else {}
            try:
                response = self.client.chat.completions.create(
                    model=self.model, messages=messages, temperature=temperature,
                    max_tokens=self.max_new_tokens, n=1, **extra)
            except openai.APIStatusError as e:
                detail = self.redact(str(e.message))[:300]
                if e.status_code in (401, 403, 404):
                    raise UserError(f"{self.client.base_url} refused model '{self.model}' "
                                    f"(HTTP {e.status_code}: {detail}); check OPENAI_API_KEY, "
                                    "OPENAI_BASE_URL / --base_url and --openai_model") from None
                raise AnswerRequestError(f"HTTP {e.status_code}: {detail}") from None
            except openai.APIError as e:  # timeouts and connection errors, after retries
                raise AnswerRequestError(self.redact(f"{type(e).__name__}: {e}")[:300]) from None
            choice = response.choices[0] if response.choices else None
            if choice is None or choice.message.content is None:
                raise AnswerRequestError("reply has no message content")
            text = choice.message.content.strip()
            messages.append({"role": "assistant", "content": text})
            result.turns.append(text)
            result.length_stops += choice.finish_reason == "length"
            if response.usage is not None:
                result.new_tokens += response.usage.completion_tokens or 0
        return result
