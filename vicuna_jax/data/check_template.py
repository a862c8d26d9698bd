"""Check a chat template before training on it: what is rendered, what is trained on, and that it is exact.

    python -m vicuna_jax.data.check_template --tokenizer=HF_DIR [--template=auto] [--conversations=FILE]
        [--num=3] [--color=auto|always|never]

Renders sample conversations (built-in ones covering a system message, several turns, code, whitespace and
non-ASCII text, then the first `--num` of `--conversations`, a ShareGPT/OpenAI JSON or JSONL file) and prints
each with its training targets highlighted (ANSI colour on a terminal, else `[[...]]`). Then verifies:

- ids: the ids equal `transformers` `apply_chat_template` on the same tokenizer (skipped without it);
  for a named template, the Jinja template an export would carry;
- prompts: the generation prompt before every reply has those same ids and is a prefix of the full ids
  (prefix stability: inference sees exactly what training saw before each reply);
- end of turn: every run of targets ends with an end-of-turn token (the model learns to stop);
- masks: with `{% generation %}` blocks, the mask equals `return_assistant_tokens_mask` (a difference is
  shown: our rule adds a missing end-of-turn token and drops tokens after it).

A conversation the template cannot be aligned on is shown with its reason. Exit status 0 when every check
passes, 1 when one fails, 2 for bad input.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import numpy as np

from vicuna_jax.cli import ArgumentParser, UserError, run_argparse
from vicuna_jax.data import chat_format
from vicuna_jax.data.chat_encode import AlignmentError
from vicuna_jax.data.chat_format import ChatFormat
from vicuna_jax.data.chat_template import has_generation_blocks
from vicuna_jax.data.encode import encode_conversation, encode_prompt

SAMPLES = [
    [{"role": "system", "content": "You are a concise assistant."},
     {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."}],
    [{"role": "user", "content": "Write a Python function that reverses a list."},
     {"role": "assistant", "content": "```python\ndef reverse(xs):\n    return xs[::-1]\n```"},
     {"role": "user", "content": "Now in one line, please: ünïcødé ok? 你好"},
     {"role": "assistant", "content": "  `xs[::-1]` — yes, 你好!  "}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "List two colours."}, {"role": "assistant", "content": "- red\n- blue"}],
]
_ON, _OFF = "\x1b[30;42m", "\x1b[0m"


def _show(tokenizer, ids: Sequence[int]) -> str:
    """Text of `ids` with special tokens written out."""
    rust = getattr(tokenizer, "_tok", None)
    if rust is not None:
        return rust.decode([int(i) for i in ids], skip_special_tokens=False)
    out, plain = [], []
    for i in ids:
        if tokenizer.is_special(i):
            out.append(tokenizer.decode(plain) + tokenizer.id_to_piece(i))
            plain = []
        else:
            plain.append(int(i))
    return "".join(out) + tokenizer.decode(plain)


def highlight(tokenizer, ids: np.ndarray, mask: np.ndarray, color: bool) -> str:
    """The conversation with each run of target tokens marked."""
    on, off = (_ON, _OFF) if color else ("[[", "]]")
    pieces, start, shown = [], 0, ""
    for k in range(1, len(ids) + 1):
        if k == len(ids) or mask[k] != mask[start]:
            # Decoded as a prefix, so a run keeps the space sentencepiece drops at the start of a string.
            upto = _show(tokenizer, ids[:k])
            text, shown = upto[len(shown):], upto
            pieces.append(on + text + off if mask[start] else text)
            start = k
    return "".join(pieces)


def _hf_reference(fmt: ChatFormat):
    """(transformers tokenizer with the format's chat template, its version) or (None, reason): the
    tokenizer loaded the way an export carries it (its files written by `ChatFormat.write_hf_files`)."""
    try:
        import transformers
    except ImportError:
        return None, "transformers is not installed"
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        fmt.write_hf_files(directory, model_max_length=1 << 20)
        hf = transformers.AutoTokenizer.from_pretrained(directory)
    hf.chat_template = fmt.chat_template
    return hf, transformers.__version__


def check(tokenizer_path: str, template: str, conversations: list[list[dict]], color: bool = False,
          out=None) -> bool:
    """Prints the report (to `out`, default stdout); True when every check passes. The template is resolved
    by the one rule (`data.chat_format`; a directory's chat_format.json counts as its record)."""
    out = out or sys.stdout
    directory = tokenizer_path if os.path.isdir(tokenizer_path) else os.path.dirname(tokenizer_path)
    recorded = chat_format.read_record(directory)
    fmt = chat_format.resolve(tokenizer_path, template, recorded=recorded, on_conflict="warn",
                              recorded_in=os.path.join(directory, chat_format.FORMAT_FILE))
    tok = fmt.tokenizer
    template = fmt.encoder
    stops = set(fmt.eos_token_ids)
    eot = ", ".join(f"{_show(tok, [i])} ({i})" for i in sorted(stops))
    kind = "Jinja" if fmt.is_jinja else "built-in (Part-based)"
    blocks = has_generation_blocks(fmt.chat_template)
    print(f"template {fmt.template!r} ({fmt.resolved_from}): {kind}; end-of-turn ids {eot}; generation "
          f"blocks: {'yes' if blocks else 'no'}", file=out)
    hf, version = _hf_reference(fmt)
    failures: list[str] = []
    for n, messages in enumerate(conversations, 1):
        print(f"\n--- conversation {n} ({len(messages)} messages)", file=out)
        try:
            ids, mask = encode_conversation(messages, tok, template=template)
        except AlignmentError as e:
            failures.append(f"conversation {n}: rejected ({e.reason}): {e}")
            print(f"REJECTED: {e}", file=out)
            continue
        print(highlight(tok, ids, mask, color), file=out)
        print(f"({len(ids)} tokens, {int(mask.sum())} targets)", file=out)
        problems, notes = _check_one(tok, template, messages, ids, mask, stops, hf, blocks, encode_prompt)
        failures += [f"conversation {n}: {p}" for p in problems]
        for note in notes:
            print(f"note: {note}", file=out)
    print("\nchecks:", file=out)
    reference = f"transformers {version}" if hf is not None else f"skipped: {version}"
    print(f"  ids equal apply_chat_template: {reference}", file=out)
    for line in failures or ["all passed: ids, prompts (prefix-stable), end-of-turn tokens in the targets"
                             + (", masks" if blocks and hf is not None else "")]:
        print(f"  {line}", file=out)
    print("result: " + ("FAILED" if failures else "OK"), file=out)
    return not failures


def _check_one(tok, template, messages, ids, mask, stops, hf, blocks, encode_prompt):
    """(problems, notes) of one encoded conversation."""
    problems, notes = [], []
    if hf is not None:
        ref = hf.apply_chat_template(messages, tokenize=True, return_dict=True,
                                     return_assistant_tokens_mask=blocks)
        if ids.tolist() != list(ref["input_ids"]):
            problems.append("ids differ from apply_chat_template")
        elif blocks and mask.astype(int).tolist() != list(ref["assistant_masks"]):
            extra = int((mask & ~np.asarray(ref["assistant_masks"], bool)).sum())
            missing = int((~mask & np.asarray(ref["assistant_masks"], bool)).sum())
            notes.append(f"the mask differs from return_assistant_tokens_mask: +{extra} tokens (end-of-turn "
                         f"tokens the generation blocks leave out), -{missing} (tokens after an end of turn)")
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = encode_prompt(messages[:k], tok, template=template)
        if ids[:len(prompt)].tolist() != prompt:
            problems.append(f"the generation prompt before message {k} is not a prefix of the ids")
        if hf is not None:
            ref = hf.apply_chat_template(messages[:k], tokenize=True, add_generation_prompt=True)
            if prompt != list(ref["input_ids"] if hasattr(ref, "keys") else ref):
                problems.append(f"the generation prompt before message {k} differs from apply_chat_template")
    runs = np.flatnonzero(mask & ~np.append(mask[1:], False))  # last token of each run of targets
    for end in runs:
        if int(ids[end]) not in stops:
            last = _show(tok, [ids[end]])
            problems.append(f"a run of targets ends with {last!r}, not an end-of-turn token")
    if len(runs) != sum(m["role"] == "assistant" for m in messages):
        problems.append(f"{len(runs)} runs of targets for "
                        f"{sum(m['role'] == 'assistant' for m in messages)} assistant messages")
    return problems, notes


def main(argv: list[str] | None = None) -> int:
    from vicuna_jax.data.chat_encode import messages_for
    from vicuna_jax.data.formats import conversation_turns, read_records

    ap = ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokenizer", required=True, help="HF directory (tokenizer.json) or tokenizer.model")
    ap.add_argument("--template", default="auto", help="auto (what the directory records, else the "
                    "tokenizer's own template, else vicuna_v1.1), hf (the tokenizer's own), or a named one")
    ap.add_argument("--conversations", help="ShareGPT/OpenAI JSON or JSONL file with more samples")
    ap.add_argument("--num", type=int, default=3, help="how many conversations of that file to show")
    ap.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    args = ap.parse_args(argv)
    conversations = [list(s) for s in SAMPLES]
    if args.conversations:
        for raw in read_records(args.conversations):
            if len(conversations) >= len(SAMPLES) + args.num:
                break
            if raw.error:
                raise UserError(f"{raw.where}: {raw.error}")
            try:
                conversations.append(messages_for(conversation_turns(raw.value)))
            except ValueError as e:
                raise UserError(f"{raw.where}: {e}") from None
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    return 0 if check(args.tokenizer, args.template, conversations, color) else 1


if __name__ == "__main__":
    run_argparse(main)
