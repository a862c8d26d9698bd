"""Conversation -> (input_ids, loss_mask), exactly as FastChat's training tokenizes it, masks from offsets.

FastChat tokenizes the whole prompt with the HF slow LLaMA tokenizer (legacy mode): BOS, then the text between
`</s>` separators each encoded by sentencepiece (each with its dummy-prefix "▁"), separators as the EOS id.
It then guesses where assistant replies start by re-tokenizing pieces and subtracting 2, and drops a sample
whenever the guess disagrees. We tokenize the same chunks once and mark a token as a target iff its byte span
overlaps an assistant reply (or a target suffix such as the EOS), so no sample is ever dropped. Special tokens
come only from the template: `</s>` or `ASSISTANT:` typed inside a message is ordinary text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from vicuna_jax.data.chat_encode import JinjaChat, chat_for, messages_for
from vicuna_jax.data.chat_template import JinjaTemplate
from vicuna_jax.data.template import BOS, USER, Part, Template, normalize_turns
from vicuna_jax.data.tokenizer import Tokenizer


def encode_parts(
    parts: Sequence[Part], tokenizer: Tokenizer, bos: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize rendered Parts: specials become their ids, the text between them one tokenizer call."""
    chunks, specials = _split_at_specials(parts)
    encoded = tokenizer.encode_batch_with_offsets(["".join(p.text for p in chunk) for chunk in chunks])
    return _assemble(chunks, specials, encoded, tokenizer, bos)


def _split_at_specials(parts: Sequence[Part]) -> tuple[list[list[Part]], list[Part]]:
    """The text chunks between special tokens, and the specials (specials[k] follows chunks[k])."""
    chunks: list[list[Part]] = [[]]
    specials: list[Part] = []
    for p in parts:
        if p.special:
            specials.append(p)
            chunks.append([])
        else:
            chunks[-1].append(p)
    return chunks, specials


def _assemble(chunks: list[list[Part]], specials: list[Part], encoded: Sequence, tokenizer: Tokenizer,
              bos: bool) -> tuple[np.ndarray, np.ndarray]:
    ids_out: list[np.ndarray] = []
    mask_out: list[np.ndarray] = []
    if bos and tokenizer.bos_id is not None:  # (Qwen's tokenizers have no BOS)
        ids_out.append(np.array([tokenizer.bos_id], np.int32))
        mask_out.append(np.zeros((1,), bool))
    for k, chunk in enumerate(chunks):
        ids, starts, ends = encoded[k]
        if len(ids):
            ids_out.append(ids)
            mask_out.append(_overlaps_targets(chunk, starts, ends))
        if k < len(specials):
            sp = specials[k]
            ids_out.append(np.array([tokenizer.bos_id if sp.special == BOS else tokenizer.eos_id], np.int32))
            mask_out.append(np.array([sp.target], bool))
    if not ids_out:
        return np.zeros((0,), np.int32), np.zeros((0,), bool)
    return np.concatenate(ids_out).astype(np.int32), np.concatenate(mask_out)


def _overlaps_targets(chunk: Sequence[Part], starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Per token: does its byte span [start, end) overlap a target part of the chunk?"""
    if not any(p.target for p in chunk):
        return np.zeros(starts.shape, bool)
    lengths = np.array([len(p.text.encode("utf-8")) for p in chunk], np.int64)
    flags = np.array([p.target for p in chunk], bool)
    # Prefix sum of "target bytes" so each token's overlap is a difference of two lookups.
    per_byte = np.repeat(flags, lengths).astype(np.int64)
    cum = np.concatenate([[0], np.cumsum(per_byte)])
    starts = np.clip(starts, 0, len(per_byte))
    ends = np.clip(ends, 0, len(per_byte))
    return (cum[ends] - cum[starts]) > 0


def encode_conversation(
    turns: Iterable[Mapping],
    tokenizer: Tokenizer,
    max_length: int | None = None,
    template: str | Template | JinjaTemplate | JinjaChat = "vicuna_v1.1",
    system: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids int32, loss_mask bool) of a conversation; loss_mask[i] iff token i is a training target.

    Targets are each assistant reply's tokens and the template's end-of-reply tokens (EOS for vicuna_v1.1,
    the end-of-turn token of a Jinja template: see `chat_encode`). `max_length` keeps the earliest tokens.
    Raises ValueError for unknown roles or non-alternating turns, `chat_encode.AlignmentError` (a ValueError
    with a `reason`) for a conversation a Jinja template cannot be aligned on.
    """
    chat = chat_for(template, tokenizer)
    if isinstance(chat, JinjaChat):
        ids, mask = chat.encode(messages_for(turns, system))
    else:
        ids, mask = encode_parts(chat.parts(turns, system=system), tokenizer)
    if max_length is not None:
        ids, mask = ids[:max_length], mask[:max_length]
    return ids, mask


def encode_conversations(
    conversations: Sequence[Iterable[Mapping]],
    tokenizer: Tokenizer,
    template: str | Template | JinjaTemplate | JinjaChat = "vicuna_v1.1",
) -> list[tuple[np.ndarray, np.ndarray] | ValueError]:
    """`encode_conversation` for many conversations with one tokenizer call for all of them (the Rust
    tokenizer batches them); a conversation that cannot be encoded gives its ValueError in its place."""
    chat = chat_for(template, tokenizer)
    if isinstance(chat, JinjaChat):
        messages: list = []
        for turns in conversations:
            try:
                messages.append(messages_for(turns))
            except ValueError as e:
                messages.append(e)
        return chat.encode_many(messages)
    plans: list = []
    texts: list[str] = []
    for turns in conversations:
        try:
            chunks, specials = _split_at_specials(chat.parts(turns))
        except ValueError as e:
            plans.append(e)
            continue
        plans.append((chunks, specials, len(texts)))
        texts += ["".join(p.text for p in chunk) for chunk in chunks]
    encoded = tokenizer.encode_batch_with_offsets(texts)
    out: list = []
    for plan in plans:
        if isinstance(plan, ValueError):
            out.append(plan)
            continue
        chunks, specials, first = plan
        out.append(_assemble(chunks, specials, encoded[first:first + len(chunks)], tokenizer, True))
    return out


def encode_prompt(
    turns: Iterable[Mapping],
    tokenizer: Tokenizer,
    template: str | Template | JinjaTemplate | JinjaChat = "vicuna_v1.1",
    system: str | None = None,
) -> list[int]:
    """Generation-prompt ids for a conversation whose last turn is the user's.

    Equal to the first tokens `encode_conversation` gives once a reply is appended, up to and including the
    generation cue (`ASSISTANT:`), so a model sees at inference exactly the prefix it was trained on.
    """
    turns = list(turns)
    _, messages = normalize_turns(turns, system)
    if not messages or messages[-1][0] != USER:
        got = messages[-1][0] if messages else "no messages"
        raise ValueError(f"encode_prompt needs a conversation ending with a user turn (got {got})")
    chat = chat_for(template, tokenizer)
    if isinstance(chat, JinjaChat):
        return chat.prompt_ids(messages_for(turns, system))
    ids, _ = encode_parts(chat.parts(turns, system=system, add_generation_prompt=True), tokenizer)
    return ids.tolist()
