"""Split long conversations at exchange boundaries so every piece fits `max_length` tokens.

    python -m vicuna_jax.data.split --input=clean.jsonl --output=split.jsonl --max_length=2048 \
        --tokenizer=path/to/tokenizer.model [--template=auto] [--long_exchange=truncate|drop]

Pieces are named `<id>_<n>` and each keeps the record's system message. Unlike FastChat's splitter, no
exchange is lost at a split point. An exchange that alone exceeds `max_length` becomes its own piece (its
tokens are truncated at encode time) or is dropped, by flag; either way it is counted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator

import numpy as np

from vicuna_jax.cli import ArgumentParser, UserError, run_argparse
from vicuna_jax.data.chat_encode import AlignmentError, chat_for
from vicuna_jax.data.encode import encode_conversation
from vicuna_jax.data.formats import (
    RawRecord,
    check_input_file,
    check_output_dir,
    open_jsonl,
    os_error_message,
    read_records,
)
from vicuna_jax.data.template import ASSISTANT, SYSTEM, USER, Template, get_template, normalize_turns
from vicuna_jax.data.tokenizer import Tokenizer, load_tokenizer

Encoded = tuple[dict, np.ndarray, np.ndarray]


def _record(rec_id: str, system: str | None, exchanges: list[tuple[str, str]]) -> dict:
    convo = [{"from": SYSTEM, "value": system}] if system is not None else []
    for q, a in exchanges:
        convo += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return {"id": rec_id, "conversations": convo}


def split_and_encode(
    record: dict,
    tokenizer: Tokenizer,
    max_length: int,
    template: str | Template = "vicuna_v1.1",
    long_exchange: str = "truncate",
    stats: Counter | None = None,
    encoded: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[Encoded]:
    """Pieces of `record` that fit, each with its (input_ids, loss_mask) truncated to `max_length`.
    `encoded`: the whole record's encoding when the caller already has it (batched encoding).

    Greedy: exchanges are added to the current piece while the encoded piece fits. Lengths are estimated by
    summing per-exchange token counts and every piece is verified by encoding it, so the result is exact.
    """
    if long_exchange not in ("truncate", "drop"):
        raise ValueError(f"long_exchange must be 'truncate' or 'drop', got {long_exchange!r}")
    stats = stats if stats is not None else Counter()
    template = chat_for(template, tokenizer)
    system, messages = normalize_turns(record["conversations"])
    if encoded is None:
        encoded = encode_conversation(record["conversations"], tokenizer, template=template)
    ids, mask = encoded
    if len(ids) <= max_length:
        return [(record, ids, mask)]
    if len(messages) % 2:
        messages = messages[:-1]  # a trailing user turn carries no target
    exchanges = [(messages[k][1], messages[k + 1][1]) for k in range(0, len(messages), 2)]
    assert all(messages[k][0] == USER and messages[k + 1][0] == ASSISTANT for k in range(0, len(messages), 2))

    def encode(exs: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
        return encode_conversation(_record("", system, exs)["conversations"], tokenizer, template=template)

    try:
        base = len(encode([])[0])
    except AlignmentError:  # a Jinja template that cannot render no messages (Qwen's reads messages[0])
        base = 0  # then each exchange's estimate also counts the prefix: pieces are cut conservatively
    if isinstance(template, Template):
        eos = np.flatnonzero(ids == tokenizer.eos_id)  # only the template places EOS ids (text is plain)
        ends_in_eos = any(p.special for p in template.assistant_suffix)
    else:  # a Jinja template: each reply's targets end with its end-of-turn token
        eos = np.flatnonzero(np.isin(ids, template.end_of_turn_ids) & mask)
        ends_in_eos = True
    if len(eos) == len(exchanges) and ends_in_eos:
        # Each exchange ends at its EOS: read the costs off the whole encoding instead of re-encoding.
        ends = np.concatenate([[base - 1], eos])
        cost = np.diff(ends).tolist()
    else:
        cost = [len(encode([ex])[0]) - base for ex in exchanges]
    pieces: list[list[int]] = []
    current: list[int] = []
    used = base
    for k, c in enumerate(cost):
        if current and used + c > max_length:
            pieces.append(current)
            current, used = [], base
        current.append(k)
        used += c
    if current:
        pieces.append(current)

    out: list[Encoded] = []
    queue = list(pieces)
    while queue:
        idx = queue.pop(0)
        exs = [exchanges[k] for k in idx]
        p_ids, p_mask = encode(exs)
        if len(p_ids) > max_length and len(idx) > 1:  # the estimate was short: the last exchange goes alone
            queue[:0] = [idx[:-1], idx[-1:]]
            stats["estimate_corrected"] += 1
            continue
        if len(p_ids) > max_length:
            stats["long_exchange_" + ("truncated" if long_exchange == "truncate" else "dropped")] += 1
            if long_exchange == "drop":
                continue
        out.append(
            (_record(f"{record['id']}_{len(out)}", system, exs), p_ids[:max_length], p_mask[:max_length])
        )
    stats["split_records"] += 1
    stats["pieces_from_split"] += len(out)
    return out


def split_records(
    records: Iterable[dict],
    tokenizer: Tokenizer,
    max_length: int,
    template: str | Template = "vicuna_v1.1",
    long_exchange: str = "truncate",
    stats: Counter | None = None,
) -> Iterator[dict]:
    """Split a stream of cleaned records (text only; see `split_and_encode` for the ids)."""
    for rec in records:
        for piece, _, _ in split_and_encode(rec, tokenizer, max_length, template, long_exchange, stats):
            yield piece


def load_encoding_inputs(tokenizer: str | Tokenizer, template: str | Template) -> Tokenizer:
    """The tokenizer (loaded if a path), after checking both it and the template name; UserError if not."""
    try:
        get_template(template)
    except ValueError as e:
        raise UserError(f"--template: {e}") from None
    if not isinstance(tokenizer, str | os.PathLike):
        tok = tokenizer
    else:
        try:
            tok = load_tokenizer(tokenizer)
        except (OSError, ValueError) as e:
            raise UserError(f"--tokenizer: {e}") from None
    try:
        chat_for(template, tok)  # a Jinja template must render, have an end-of-turn token, fit the tokenizer
    except ValueError as e:
        raise UserError(f"--template: {e}") from None
    return tok


def split_file(
    input_path: str, output_path: str, tokenizer: Tokenizer, max_length: int,
    template: str | Template = "vicuna_v1.1", long_exchange: str = "truncate",
) -> tuple[int, Counter]:
    """Split a cleaned JSONL file (streamed) into `output_path`; returns (pieces written, stats).

    The input must be the cleaner's output: an unreadable record or one the template cannot encode is a
    UserError naming its file and line (run `vicuna_jax.data.clean` on raw data first)."""
    check_input_file(input_path)
    check_output_dir(os.path.dirname(os.path.abspath(output_path)))
    stats: Counter = Counter()
    hint = "split reads the output of `python -m vicuna_jax.data.clean`"
    with open_jsonl(output_path) as out:
        for raw in read_records(input_path):
            for piece in _split_raw(raw, tokenizer, max_length, template, long_exchange, stats, hint):
                out.append(piece)
        if not stats["records"]:
            raise UserError(f"{input_path}: no records to split")
    return out.count, stats


def _split_raw(raw: RawRecord, tokenizer, max_length, template, long_exchange, stats, hint) -> list[dict]:
    if raw.error:
        raise UserError(f"{raw.where}: {raw.error} ({hint})")
    stats["records"] += 1
    try:
        pieces = split_and_encode(raw.value, tokenizer, max_length, template, long_exchange, stats)
    except (KeyError, TypeError, ValueError) as e:
        what = f"no {e} key" if isinstance(e, KeyError) else str(e)
        raise UserError(f"{raw.where}: cannot split this record: {what} ({hint})") from None
    return [piece for piece, _, _ in pieces]


def add_encoding_flags(ap: argparse.ArgumentParser) -> None:
    """The flags split and prepare share: how conversations are tokenized, templated and cut to length."""
    ap.add_argument("--tokenizer", required=True,
                    help="sentencepiece .model, tokenizer.json, or a directory with either")
    ap.add_argument("--max_length", type=int, default=2048)
    ap.add_argument("--template", default="auto",
                    help="auto (the tokenizer's own chat template, else vicuna_v1.1), hf (the tokenizer's "
                         "own), or a named template")
    ap.add_argument("--long_exchange", choices=("truncate", "drop"), default="truncate")


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", required=True, help="cleaned JSONL (from vicuna_jax.data.clean)")
    ap.add_argument("--output", required=True)
    add_encoding_flags(ap)
    args = ap.parse_args(argv)
    tok = load_encoding_inputs(args.tokenizer, args.template)
    try:
        n, stats = split_file(
            args.input, args.output, tok, args.max_length, args.template, args.long_exchange
        )
    except OSError as e:
        raise UserError(os_error_message(e)) from None
    for key, value in sorted(stats.items()):
        print(f"{key:24s} {value:8d}")
    print(f"wrote {n} records to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_argparse(main)
