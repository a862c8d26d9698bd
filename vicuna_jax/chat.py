"""Interactive multi-turn chat in a chat template, streaming tokens as they are generated.

    python -m vicuna_jax.chat --model=DIR [--template=auto] [--temperature=0.7] [--max_new_tokens=512]

Type a message and press Enter. Commands: `/reset` starts a new conversation, `/exit` (or end of input)
quits. When the conversation outgrows the model's context, the oldest exchanges are dropped.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import TextIO

from vicuna_jax.decoding.sampling import SamplingParams
from vicuna_jax.generate import Generator


def fit_history(history: list[dict[str, str]], gen: Generator, system: str | None,
                reserve: int) -> tuple[list[dict[str, str]], list[int] | None]:
    """Drops the oldest exchanges until the prompt (in the generator's chat format) leaves `reserve` tokens
    of context for the reply. Returns ids None when even the newest message alone does not fit.
    """
    budget = gen.cfg.max_position_embeddings - reserve
    while True:
        ids = gen.chat_format.encode_prompt(history, system=system)
        if len(ids) <= budget:
            return history, ids
        if len(history) <= 1:
            return history, None
        history = history[2:]


def chat_loop(gen: Generator, params: SamplingParams, *, system: str | None = None,
              stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout,
              prompt_prefix: str = "USER: ", reply_prefix: str = "ASSISTANT: ") -> list[dict[str, str]]:
    """Runs the conversation until /exit or end of input; returns the final history."""
    history: list[dict[str, str]] = []
    interactive = stdin.isatty()
    turn = 0
    while True:
        if interactive:
            stdout.write(prompt_prefix)
            stdout.flush()
        line = stdin.readline()
        if not line:
            break
        message = line.strip()
        if not message:
            continue
        if message == "/exit":
            break
        if message == "/reset":
            history = []
            stdout.write("[new conversation]\n")
            continue
        history = history + [{"from": "human", "value": message}]
        reserve = min(params.max_new_tokens, gen.cfg.max_position_embeddings // 2)
        history, ids = fit_history(history, gen, system, reserve)
        if ids is None:
            stdout.write(f"[message too long: the model's context is {gen.cfg.max_position_embeddings} "
                         "tokens]\n")
            history = []
            continue
        stdout.write(reply_prefix)
        reply = []
        turn_params = dataclasses.replace(params, seed=params.seed + turn)
        for delta in gen.stream_text(ids, turn_params):
            reply.append(delta)
            stdout.write(delta)
            stdout.flush()
        stdout.write("\n")
        stdout.flush()
        history = history + [{"from": "gpt", "value": "".join(reply).strip()}]
        turn += 1
    return history


def main(argv: list[str]) -> None:
    from absl import flags, logging

    from vicuna_jax.generate import load_generator

    f = flags.FLAGS
    if len(argv) > 1:
        raise flags.Error(f"unexpected arguments: {argv[1:]}")
    gen = load_generator(f.model, f.tokenizer, f.dtype, chunk=1, template=f.template, adapter=f.adapter)
    logging.info("chat format: %s", gen.chat_format.describe())
    params = SamplingParams(max_new_tokens=f.max_new_tokens, temperature=f.temperature, top_p=f.top_p,
                            top_k=f.top_k, seed=f.seed, stop_strings=gen.chat_format.stop_strings)
    chat_loop(gen, params, system=f.system)


def _define_flags() -> None:
    from vicuna_jax.generate import define_model_and_sampling_flags

    define_model_and_sampling_flags(512, 0.7, "Chat template.")


if __name__ == "__main__":
    from vicuna_jax.cli import run

    run(main, _define_flags)
