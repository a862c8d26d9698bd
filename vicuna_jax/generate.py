"""KV-cache text generation: batched prompts of different lengths, greedy / temperature / top-p / top-k.

    python -m vicuna_jax.generate --model=DIR --prompt="..." [--template=vicuna_v1.1|none]
        [--max_new_tokens=N] [--temperature=T] [--top_p=P] [--top_k=K] [--seed=S]

How it runs: prompts are right-padded into one batch and prefilled in one jitted call that writes the KV
cache; decoding then runs in jitted chunks of `chunk` steps (a `lax.while_loop` that stops early once every
row has finished), and between chunks the host checks stop strings and streams text. Each row has its own
cache write position, so rows of different lengths never wait on padding. Shapes are bucketed (prompt
length to a multiple of 32, cache to a multiple of 128) so a handful of compilations serve a whole run.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vicuna_jax.cli import UserError
from vicuna_jax.model.config import LlamaConfig
from vicuna_jax.model.llama import KVCache, Llama

_PROMPT_BUCKET = 32
_CACHE_BUCKET = 128


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. temperature 0 = greedy; top_k 0 and top_p 1 disable those filters."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop_strings: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")


@dataclasses.dataclass
class Completion:
    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" (EOS or a stop string) or "length"


def _round_up(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


def sample_tokens(logits_BxV: jax.Array, rng: jax.Array, temperature_B: jax.Array, top_p_B: jax.Array,
                  top_k_B: jax.Array) -> jax.Array:
    """Per-row sampling; rows with temperature 0 take the argmax.

    `rng` is one key for the whole batch, or a `[B]` array of keys (one per row, batch-invariant draws).
    """
    greedy_B = jnp.argmax(logits_BxV, axis=-1)
    scaled = logits_BxV / jnp.maximum(temperature_B, 1e-6)[:, None]
    sorted_logits = jnp.sort(scaled, axis=-1)[:, ::-1]
    vocab = logits_BxV.shape[-1]
    # top-k: the k-th largest logit is the threshold (k = 0 keeps everything).
    k_B = jnp.where(top_k_B > 0, jnp.minimum(top_k_B, vocab), vocab)
    kth_B = jnp.take_along_axis(sorted_logits, (k_B - 1)[:, None], axis=-1)
    # top-p: keep the smallest prefix of sorted tokens whose probability mass reaches p.
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = mass_before < top_p_B[:, None]
    last_kept = jnp.sum(keep_sorted, axis=-1) - 1
    pth_B = jnp.take_along_axis(sorted_logits, last_kept[:, None], axis=-1)
    threshold = jnp.maximum(kth_B, pth_B)
    filtered = jnp.where(scaled >= threshold, scaled, -jnp.inf)
    if jnp.ndim(rng) == 0 or jax.dtypes.issubdtype(jnp.asarray(rng).dtype, jnp.uint32):
        sampled_B = jax.random.categorical(rng, filtered, axis=-1)
    else:  # one key per row: a row's draw does not depend on the rest of the batch
        sampled_B = jax.vmap(lambda k, lg: jax.random.categorical(k, lg))(rng, filtered)
    return jnp.where(temperature_B > 0, sampled_B, greedy_B).astype(jnp.int32)


class Generator:
    """Batched KV-cache generation for one model. Reuse one instance to reuse its compilations."""

    def __init__(self, model: Llama, tokenizer: Any = None, *, eos_token_ids: Sequence[int] | None = None,
                 chunk: int = 16, cache_dtype: Any = None):
        self.cfg: LlamaConfig = model.cfg
        self.graphdef, self.state = nnx.split(model)
        self.tokenizer = tokenizer
        eos = list(eos_token_ids) if eos_token_ids is not None else [self.cfg.eos_token_id]
        if tokenizer is not None and getattr(tokenizer, "eos_id", None) not in (None, -1):
            eos.append(int(tokenizer.eos_id))
        self.eos_ids = jnp.asarray(sorted(set(eos)), jnp.int32)
        self.chunk = chunk
        self.cache_dtype = cache_dtype or model.dtype
        self._prefill = jax.jit(self._prefill_impl)
        self._decode = jax.jit(self._decode_impl, static_argnames=("steps",), donate_argnums=(1,))

    # ------------------------------------------------------------ jitted pieces

    def _prefill_impl(self, state, tokens_BxP, lengths_B, cache: KVCache):
        model = nnx.merge(self.graphdef, state)
        b, p = tokens_BxP.shape
        positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
        segments = (positions < lengths_B[:, None]).astype(jnp.int32)
        h_BxPxE, cache = model.hidden_states(tokens_BxP, positions, segments, cache)
        last_BxE = jnp.take_along_axis(h_BxPxE, (lengths_B - 1)[:, None, None], axis=1)[:, 0]
        logits_BxV = model.logits(last_BxE[:, None])[:, 0]
        # Decoding continues right after each prompt, overwriting its padding slots.
        return cache._replace(end_B=lengths_B.astype(jnp.int32)), logits_BxV

    def _decode_impl(self, state, carry, temperature_B, top_p_B, top_k_B, limit_B, *, steps: int):
        """Up to `steps` tokens per row; stops early when every row is done. Emits -1 for finished rows."""
        model = nnx.merge(self.graphdef, state)

        def cond(c):
            i, _, _, _, done_B, _, _ = c
            return (i < steps) & ~jnp.all(done_B)

        def body(c):
            i, cache, logits_BxV, rng, done_B, count_B, out_BxN = c
            # Row b's t-th token uses fold_in(key_b, t): the same draw whatever else is in the batch.
            step_keys_B = jax.vmap(jax.random.fold_in)(rng, count_B)
            tok_B = sample_tokens(logits_BxV, step_keys_B, temperature_B, top_p_B, top_k_B)
            tok_B = jnp.where(done_B, -1, tok_B)
            out_BxN = out_BxN.at[:, i].set(tok_B)
            count_B = count_B + (~done_B).astype(jnp.int32)
            hit_eos = jnp.isin(tok_B, self.eos_ids)
            done_B = done_B | hit_eos | (count_B >= limit_B)
            positions_Bx1 = cache.end_B[:, None]
            new_logits, cache = model(jnp.maximum(tok_B, 0)[:, None], positions_Bx1,
                                      (~done_B | hit_eos).astype(jnp.int32)[:, None], cache)
            return i + 1, cache, new_logits[:, 0], rng, done_B, count_B, out_BxN

        cache, logits_BxV, rng, done_B, count_B = carry
        out = jnp.full((logits_BxV.shape[0], steps), -1, jnp.int32)
        _, cache, logits_BxV, rng, done_B, count_B, out = jax.lax.while_loop(
            cond, body, (0, cache, logits_BxV, rng, done_B, count_B, out))
        return (cache, logits_BxV, rng, done_B, count_B), out

    # ------------------------------------------------------------ host loop

    def stream_ids(self, prompts: Sequence[Sequence[int]],
                   params: SamplingParams | Sequence[SamplingParams]) -> Iterator[list[list[int]]]:
        """Yields, after each decode chunk, the new token ids of every row so far (EOS excluded).

        `params` is one SamplingParams for every row, or one per prompt (each row then has its own
        temperature, top-p, top-k, token budget and seed). With one SamplingParams, row b is seeded with
        `seed + b`; a row's tokens depend only on its prompt, its params and its seed, never on batch-mates.
        """
        if not prompts:
            return
        rows = _per_row(params, len(prompts))
        lengths = [len(p) for p in prompts]
        if min(lengths) == 0:
            raise ValueError("every prompt needs at least one token (the BOS token)")
        ctx = self.cfg.max_position_embeddings
        if max(lengths) >= ctx:
            raise ValueError(f"prompt of {max(lengths)} tokens does not fit the model's context of {ctx}")
        b = len(prompts)
        p = min(_round_up(max(lengths), _PROMPT_BUCKET), ctx)
        max_new = max(r.max_new_tokens for r in rows)
        new_budget = min(max_new, ctx - min(lengths))
        cache_len = min(_round_up(max(lengths) + new_budget, _CACHE_BUCKET), _round_up(ctx, _CACHE_BUCKET))
        cache_len = max(cache_len, p)
        tokens = np.zeros((b, p), np.int32)
        for i, prompt in enumerate(prompts):
            tokens[i, :len(prompt)] = prompt
        lengths_B = jnp.asarray(lengths, jnp.int32)
        cache = KVCache.create(self.cfg, b, cache_len, self.cache_dtype)
        cache, logits = self._prefill(self.state, jnp.asarray(tokens), lengths_B, cache)
        # Per-row budget: its max_new_tokens, and never past the context or the cache.
        wanted = np.asarray([r.max_new_tokens for r in rows])
        limit = np.minimum(wanted, np.minimum(ctx, cache_len) - np.asarray(lengths))
        done = jnp.asarray(limit <= 0)
        sampling = (jnp.asarray([r.temperature for r in rows], jnp.float32),
                    jnp.asarray([r.top_p for r in rows], jnp.float32),
                    jnp.asarray([r.top_k for r in rows], jnp.int32), jnp.asarray(limit, jnp.int32))
        keys = jax.vmap(jax.random.key)(jnp.asarray([r.seed for r in rows], jnp.uint32))
        carry = (cache, logits, keys, done, jnp.zeros((b,), jnp.int32))
        outs: list[list[int]] = [[] for _ in range(b)]
        finished = np.asarray(done).copy()
        while not finished.all():
            carry, chunk = self._decode(self.state, carry, *sampling, steps=self.chunk)
            chunk = np.asarray(chunk)
            for i in range(b):
                for tok in chunk[i]:
                    if tok < 0 or tok in self._eos_set:
                        break
                    outs[i].append(int(tok))
            finished = np.asarray(carry[3])
            yield outs

    @functools.cached_property
    def _eos_set(self) -> set[int]:
        return {int(x) for x in np.asarray(self.eos_ids)}

    def generate_ids(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[int]]:
        """New token ids per prompt (EOS not included); stop strings are not applied here."""
        last: list[list[int]] = [[] for _ in prompts]
        for outs in self.stream_ids(prompts, params):
            last = outs
        return [list(o) for o in last]

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams | Sequence[SamplingParams],
                 on_update: Callable[[int, str], None] | None = None) -> list[Completion]:
        """Completions with text; stop strings end a row early (the stop string is not included).
        `params` as in `stream_ids` (one for all rows, or one per prompt)."""
        if self.tokenizer is None:
            raise ValueError("text generation needs a tokenizer")
        rows = _per_row(params, len(prompts))
        results: list[Completion | None] = [None] * len(prompts)
        outs: list[list[int]] = [[] for _ in prompts]
        for outs in self.stream_ids(prompts, rows):
            for i, ids in enumerate(outs):
                if results[i] is not None:
                    continue
                text = self.tokenizer.decode(ids)
                cut = _first_stop(text, rows[i].stop_strings)
                if cut is not None:
                    results[i] = Completion(ids, text[:cut], "stop")
                elif on_update is not None:
                    on_update(i, text)
            if all(r is not None for r in results):
                break  # every row hit a stop string; no need to decode further
        for i, ids in enumerate(outs):
            if results[i] is None:
                limit_hit = len(ids) >= rows[i].max_new_tokens or \
                    len(prompts[i]) + len(ids) >= self.cfg.max_position_embeddings
                results[i] = Completion(ids, self.tokenizer.decode(ids), "length" if limit_hit else "stop")
        return results  # type: ignore[return-value]

    def stream_text(self, prompt: Sequence[int], params: SamplingParams) -> Iterator[str]:
        """Text deltas for one prompt as it is generated (for interactive chat and serving)."""
        hold = max((len(s) - 1 for s in params.stop_strings if s), default=0)
        sent, text = "", ""
        for outs in self.stream_ids([prompt], params):
            text = self.tokenizer.decode(outs[0])
            cut = _first_stop(text, params.stop_strings)
            if cut is not None:
                text = text[:cut]
                break
            # Hold back an incomplete UTF-8 character (byte-fallback pieces arrive one byte at a time) and
            # a tail that might be the start of a stop string.
            visible = text.rstrip("\ufffd")
            visible = visible[:len(visible) - hold] if hold else visible
            if len(visible) > len(sent) and visible.startswith(sent):
                yield visible[len(sent):]
                sent = visible
        if len(text) > len(sent) and text.startswith(sent):
            yield text[len(sent):]


def _per_row(params: SamplingParams | Sequence[SamplingParams], n: int) -> list[SamplingParams]:
    if isinstance(params, SamplingParams):
        return [dataclasses.replace(params, seed=params.seed + i) for i in range(n)]
    rows = list(params)
    if len(rows) != n:
        raise ValueError(f"{len(rows)} SamplingParams for {n} prompts")
    return rows


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


# ------------------------------------------------------------ CLI


def load_generator(model_path: str, tokenizer: str | None = None, dtype: str = "float32",
                   chunk: int = 16, adapter: str | None = None) -> Generator:
    from vicuna_jax.data import load_tokenizer
    from vicuna_jax.model.load import load_model

    model, _, tok_path = load_model(model_path, tokenizer=tokenizer, adapter=adapter, dtype=jnp.dtype(dtype))
    if tok_path is None:
        raise UserError(f"no tokenizer.model found with {model_path}; pass --tokenizer")
    return Generator(model, load_tokenizer(tok_path), chunk=chunk)


def prompt_ids(tokenizer: Any, text: str, template: str, system: str | None = None) -> list[int]:
    """The prompt for a single user message in `template`, or the raw text with BOS for 'none'."""
    if template == "none":
        return tokenizer.encode(text, bos=True)
    from vicuna_jax.data import encode_prompt

    return encode_prompt([{"from": "human", "value": text}], tokenizer, template=template, system=system)


def main(argv: list[str]) -> None:
    from absl import flags, logging

    from vicuna_jax.data.template import get_template

    f = flags.FLAGS
    if len(argv) > 1:
        raise flags.Error(f"unexpected arguments: {argv[1:]}")
    stops = tuple(get_template(f.template).stop_strings) if f.template != "none" else ()
    try:
        params = SamplingParams(max_new_tokens=f.max_new_tokens, temperature=f.temperature, top_p=f.top_p,
                                top_k=f.top_k, seed=f.seed, stop_strings=stops + tuple(f.stop or ()))
    except ValueError as e:
        raise UserError(str(e)) from None
    gen = load_generator(f.model, f.tokenizer, f.dtype, adapter=f.adapter)
    ids = prompt_ids(gen.tokenizer, f.prompt, f.template, f.system)
    if len(ids) >= gen.cfg.max_position_embeddings:
        raise UserError(f"the prompt is {len(ids)} tokens; the model's context is "
                        f"{gen.cfg.max_position_embeddings}")
    logging.info("prompt: %d tokens; generating up to %d", len(ids), params.max_new_tokens)
    for delta in gen.stream_text(ids, params):
        sys.stdout.write(delta)
        sys.stdout.flush()
    sys.stdout.write("\n")


def define_model_and_sampling_flags(max_new_tokens: int, temperature: float, template_help: str) -> None:
    """The flags generate and chat share: which model, which template, how to sample.

    They are registered as the running program's own flags, so its `--help` lists them.
    """
    from absl import flags

    main = {"module_name": sys.argv[0]}
    flags.DEFINE_string("model", None, "HF directory or vicuna_jax checkpoint directory.", required=True,
                        **main)
    flags.DEFINE_string("adapter", None, "LoRA adapter to apply: a PEFT adapter dir or a vicuna_jax LoRA "
                        "workdir/checkpoint (--model is then its base).", **main)
    flags.DEFINE_string("template", "vicuna_v1.1", template_help, **main)
    flags.DEFINE_string("system", None, "System message (template default when unset).", **main)
    flags.DEFINE_string("tokenizer", None, "tokenizer.model, when the model directory has none.", **main)
    flags.DEFINE_integer("max_new_tokens", max_new_tokens, "Most tokens to generate per reply.", **main)
    flags.DEFINE_float("temperature", temperature, "0 = greedy.", **main)
    flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass.", **main)
    flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0 = all).", **main)
    flags.DEFINE_integer("seed", 0, "Sampling seed.", **main)
    flags.DEFINE_string("dtype", "float32", "Compute dtype: float32 or bfloat16.", **main)


def _define_flags() -> None:
    from absl import flags

    define_model_and_sampling_flags(256, 0.0, "Chat template, or 'none' for raw text.")
    flags.DEFINE_string("prompt", None, "The user message.", required=True)
    flags.DEFINE_multi_string("stop", None, "Extra stop string (repeatable).")


if __name__ == "__main__":
    from vicuna_jax.cli import run

    run(main, _define_flags)
