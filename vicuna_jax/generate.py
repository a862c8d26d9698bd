"""KV-cache text generation: batched prompts of different lengths, greedy / temperature / top-p / top-k.

    python -m vicuna_jax.generate --model=DIR --prompt="..." [--template=auto|vicuna_v1.1|...|none]
        [--max_new_tokens=N] [--temperature=T] [--top_p=P] [--top_k=K] [--seed=S]

`Generator` is the batch front end of the decoding core (`vicuna_jax.decoding`): the prompts are prefilled
into the rows of one KV cache (each row has its own write position, so rows of different lengths never wait
on padding), then decoding runs in jitted chunks of `chunk` steps (a `lax.while_loop` that stops early once
every row has finished); between chunks the host checks stop strings and streams text, and the cache is
reshaped to the rows still generating. Shapes come in power-of-two buckets, so a handful of compilations
serve a whole run.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax.numpy as jnp

from vicuna_jax.cli import UserError, check_name
from vicuna_jax.data import chat_format
from vicuna_jax.data.chat_format import ChatFormat
from vicuna_jax.data.template import known_template_names
from vicuna_jax.decoding.batch import DecodeBatch
from vicuna_jax.decoding.sampling import SamplingParams, per_row, sample_tokens
from vicuna_jax.decoding.text import TextStream, resolve_eos_ids
from vicuna_jax.load import COMPUTE_DTYPES, load_model
from vicuna_jax.model.config import LlamaConfig
from vicuna_jax.model.llama import Llama

__all__ = ["Completion", "Generator", "SamplingParams", "load_generator", "prompt_ids", "sample_tokens"]


@dataclasses.dataclass
class Completion:
    token_ids: list[int]  # the reply's tokens: up to the stop string when one ended it; EOS not included
    text: str
    finish_reason: str  # "stop" (EOS or a stop string) or "length"


class Generator:
    """Batched KV-cache generation for one model. Reuse one instance to reuse its compilations; it runs one
    generation at a time."""

    def __init__(self, model: Llama, tokenizer: Any = None, *, eos_token_ids: Sequence[int] | None = None,
                 chunk: int = 16, cache_dtype: Any = None, chat_format: ChatFormat | None = None):
        self.cfg: LlamaConfig = model.cfg
        self.tokenizer = tokenizer
        self.chat_format = chat_format  # how conversations become prompts (load_generator resolves it)
        self.eos_ids = resolve_eos_ids(self.cfg, tokenizer, eos_token_ids)
        self.chunk = chunk
        self.batch = DecodeBatch(model, eos_ids=self.eos_ids, cache_dtype=cache_dtype)
        self.cache_dtype = self.batch.cache_dtype
        self._owner: object | None = None  # the generation that holds the batch now

    @property
    def graphdef(self) -> Any:
        return self.batch.graphdef

    @property
    def state(self) -> Any:
        return self.batch.state

    # ------------------------------------------------------------ token ids

    def stream_ids(self, prompts: Sequence[Sequence[int]],
                   params: SamplingParams | Sequence[SamplingParams]) -> Iterator[list[list[int]]]:
        """Yields, after each decode chunk, the new token ids of every row so far (EOS excluded).

        `params` is one SamplingParams for every row, or one per prompt (each row then has its own
        temperature, top-p, top-k, token budget and seed). With one SamplingParams, row b is seeded with
        `seed + b`; a row's tokens depend only on its prompt, its params and its seed, never on batch-mates.
        """
        for outs, _ in self._run(prompts, per_row(params, len(prompts)), set()):
            yield outs

    def _run(self, prompts: Sequence[Sequence[int]], rows: list[SamplingParams],
             stopped: set[int]) -> Iterator[tuple[list[list[int]], list[str | None]]]:
        """The decode loop: yields (ids so far, finish reason or None) per prompt after each chunk. The
        caller may add prompt indices to `stopped` between chunks: those rows stop generating."""
        if not prompts:
            return
        lengths = [len(p) for p in prompts]
        if min(lengths) == 0:
            raise ValueError("every prompt needs at least one token (the BOS token)")
        ctx = self.cfg.max_position_embeddings
        if max(lengths) >= ctx:
            raise ValueError(f"prompt of {max(lengths)} tokens does not fit the model's context of {ctx}")
        batch, me = self.batch, object()
        self._owner = me
        try:
            batch.reset()
            placed = batch.fit(lengths, self.chunk)
            batch.admit(placed.rows, prompts, rows)
            index = dict(zip(placed.rows, range(len(prompts)), strict=True))  # row -> prompt
            outs: list[list[int]] = [[] for _ in prompts]
            reasons: list[str | None] = [None] * len(prompts)
            while True:
                if self._owner is not me:
                    raise RuntimeError("another generation started on this Generator before this one ended")
                for row, i in index.items():
                    if i in stopped:
                        batch.release(row)
                if not batch.live_rows():
                    return
                moved = batch.fit([], self.chunk).moved
                if moved is not None:
                    index = {new: index[old] for new, old in enumerate(moved)}
                for row, got in batch.step(self.chunk).items():
                    outs[index[row]].extend(got.ids)
                    reasons[index[row]] = got.finish
                yield outs, reasons
        finally:
            if self._owner is me:  # free the cache
                self._owner = None
                batch.reset()

    def generate_ids(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[int]]:
        """New token ids per prompt (EOS not included); stop strings are not applied here."""
        last: list[list[int]] = [[] for _ in prompts]
        for outs in self.stream_ids(prompts, params):
            last = outs
        return [list(o) for o in last]

    # ------------------------------------------------------------ text

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams | Sequence[SamplingParams],
                 on_update: Callable[[int, str], None] | None = None) -> list[Completion]:
        """Completions with text; a stop string ends its row early (the stop string is not included).
        `params` as in `stream_ids` (one for all rows, or one per prompt)."""
        if self.tokenizer is None:
            raise ValueError("text generation needs a tokenizer")
        rows = per_row(params, len(prompts))
        texts = [TextStream(self.tokenizer, r.stop_strings) for r in rows]
        stopped: set[int] = set()
        outs: list[list[int]] = [[] for _ in prompts]
        reasons: list[str | None] = [None] * len(prompts)
        for outs, reasons in self._run(prompts, rows, stopped):  # noqa: B007 - both read after the loop
            for i, ids in enumerate(outs):
                text = texts[i]
                if text.stopped or len(ids) == len(text.ids):
                    continue
                text.extend(ids[len(text.ids):])
                if text.stopped:
                    stopped.add(i)
                elif on_update is not None:
                    on_update(i, text.text)
            if len(stopped) == len(prompts):
                break  # every row hit a stop string; no need to decode further
        results = []
        for i, ids in enumerate(outs):
            text = texts[i]
            if text.stopped:
                results.append(Completion(ids[:text.stop_tokens], text.text, "stop"))
            else:
                results.append(Completion(list(ids), text.text, reasons[i] or "length"))
        return results

    def stream_text(self, prompt: Sequence[int], params: SamplingParams) -> Iterator[str]:
        """Text deltas for one prompt as it is generated (for interactive chat)."""
        text = TextStream(self.tokenizer, params.stop_strings)
        for outs in self.stream_ids([prompt], params):
            delta = text.extend(outs[0][len(text.ids):])
            if delta:
                yield delta
            if text.stopped:
                return
        rest = text.finish()
        if rest:
            yield rest


# ------------------------------------------------------------ CLI


def load_generator(model_path: str, tokenizer: str | None = None, dtype: str = "float32",
                   chunk: int = 16, template: str | None = chat_format.AUTO,
                   adapter: str | None = None) -> Generator:
    """The model, its tokenizer and its chat format (`vicuna_jax.load`: what the model records, else the
    tokenizer's own template, else vicuna_v1.1; an explicit `template` wins with a warning). Generation
    stops at the model's EOS ids and the format's end-of-turn ids."""
    if template == RAW:
        template = chat_format.AUTO  # raw text: the model's format still says which ids end a reply
    model, cfg, fmt = load_model(model_path, tokenizer=tokenizer, adapter=adapter, template=template,
                                 dtype=jnp.dtype(dtype))
    if fmt is None:
        raise UserError(f"no tokenizer (tokenizer.model or tokenizer.json) found with {model_path}; "
                        "pass --tokenizer")
    return Generator(model, fmt.tokenizer, eos_token_ids=[*cfg.eos_token_ids, *fmt.eos_token_ids],
                     chunk=chunk, chat_format=fmt)


RAW = "none"  # --template=none: the prompt is raw text (with BOS), no chat format


def prompt_ids(gen: Generator, text: str, raw: bool = False, system: str | None = None) -> list[int]:
    """The prompt for a single user message in the generator's chat format, or the raw text with BOS."""
    if raw:
        return gen.tokenizer.encode(text, bos=True)
    return gen.chat_format.encode_prompt([{"from": "human", "value": text}], system=system)


def main(argv: list[str]) -> None:
    from absl import flags, logging

    f = flags.FLAGS
    if len(argv) > 1:
        raise flags.Error(f"unexpected arguments: {argv[1:]}")
    raw = f.template == RAW
    gen = load_generator(f.model, f.tokenizer, f.dtype, template=f.template, adapter=f.adapter)
    stops = () if raw else gen.chat_format.stop_strings
    try:
        params = SamplingParams(max_new_tokens=f.max_new_tokens, temperature=f.temperature, top_p=f.top_p,
                                top_k=f.top_k, seed=f.seed, stop_strings=stops + tuple(f.stop or ()))
    except ValueError as e:
        raise UserError(str(e)) from None
    if not raw:
        logging.info("chat format: %s", gen.chat_format.describe())
    ids = prompt_ids(gen, f.prompt, raw, f.system)
    if len(ids) >= gen.cfg.max_position_embeddings:
        raise UserError(f"the prompt is {len(ids)} tokens; the model's context is "
                        f"{gen.cfg.max_position_embeddings}")
    logging.info("prompt: %d tokens; generating up to %d", len(ids), params.max_new_tokens)
    for delta in gen.stream_text(ids, params):
        sys.stdout.write(delta)
        sys.stdout.flush()
    sys.stdout.write("\n")


def define_model_and_sampling_flags(max_new_tokens: int, temperature: float, template_help: str,
                                    extra_templates: tuple[str, ...] = ()) -> None:
    """The flags generate and chat share: which model, which template, how to sample.

    They are registered as the running program's own flags, so its `--help` lists them. A misspelt template
    or dtype fails while the flags are parsed, before the model is loaded.
    """
    from absl import flags

    main = {"module_name": sys.argv[0]}
    flags.DEFINE_string("model", None, "HF directory or vicuna_jax checkpoint directory.", required=True,
                        **main)
    flags.DEFINE_string("adapter", None, "LoRA adapter to apply: a PEFT adapter dir or a vicuna_jax LoRA "
                        "workdir/checkpoint (--model is then its base).", **main)
    flags.DEFINE_string("template", "auto", template_help + " auto: the format the model records (its "
                        "chat_format.json / checkpoint), else its tokenizer's own chat template, else "
                        "vicuna_v1.1; a named one differing from the record is used with a warning.", **main)
    flags.DEFINE_string("system", None, "System message (template default when unset).", **main)
    flags.DEFINE_string("tokenizer", None, "tokenizer.model or tokenizer.json, when the model directory has "
                        "none.", **main)
    flags.DEFINE_integer("max_new_tokens", max_new_tokens, "Most tokens to generate per reply.", **main)
    flags.DEFINE_float("temperature", temperature, "0 = greedy.", **main)
    flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass.", **main)
    flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0 = all).", **main)
    flags.DEFINE_integer("seed", 0, "Sampling seed.", **main)
    flags.DEFINE_enum("dtype", "float32", COMPUTE_DTYPES, "Compute dtype.", **main)
    check_name("template", [*known_template_names(), *extra_templates], "chat template")


def _define_flags() -> None:
    from absl import flags

    define_model_and_sampling_flags(256, 0.0, "Chat template, or 'none' for raw text.",
                                    extra_templates=(RAW,))
    flags.DEFINE_string("prompt", None, "The user message.", required=True)
    flags.DEFINE_multi_string("stop", None, "Extra stop string (repeatable).")


if __name__ == "__main__":
    from vicuna_jax.cli import run

    run(main, _define_flags)
