"""Train the bundled LLaMA-style sentencepiece tokenizer on the cleaned sample conversations.

Same model family as LLaMA's tokenizer: BPE, byte fallback, digits split, <unk>=0 <s>=1 </s>=2, no pad id,
identity normalisation, a dummy-prefix "▁", whitespace kept as is. Only the vocabulary size differs (4096).
Single-threaded and unshuffled, so the output is byte-for-byte reproducible.

    python scripts/train_tokenizer.py [--input=vicuna_jax/assets/sharegpt_sample.json]
                                      [--output=vicuna_jax/assets/tokenizer.model] [--vocab_size=4096]
"""

from __future__ import annotations

import argparse
import io
import os
import sys

import sentencepiece as spm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from vicuna_jax.data.clean import Cleaner  # noqa: E402
from vicuna_jax.data.formats import read_records  # noqa: E402
from vicuna_jax.data.template import get_template, template_names  # noqa: E402


def training_lines(input_path: str) -> list[str]:
    """Message texts of the cleaned sample, one line each, plus the templates' fixed strings."""
    lines: list[str] = []
    for rec in Cleaner()(read_records(input_path)):
        for t in rec["conversations"]:
            lines.extend(x for x in t["value"].split("\n") if x.strip())
    for name in template_names():
        t = get_template(name)
        demo = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]
        lines.extend(x for x in t.render(demo * 2).split("\n") if x.strip())
    return lines


def train(input_path: str, output_path: str, vocab_size: int) -> bytes:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_lines(input_path)),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        split_digits=True,
        split_by_unicode_script=True,
        split_by_whitespace=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        normalization_rule_name="identity",
        character_coverage=0.9995,
        max_sentencepiece_length=16,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        unk_surface=" \u2047 ",
        num_threads=1,
        shuffle_input_sentence=False,
        input_sentence_size=0,
        hard_vocab_limit=True,
        minloglevel=2,
    )
    data = model.getvalue()
    with open(output_path, "wb") as f:
        f.write(data)
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", default=os.path.join(ROOT, "vicuna_jax", "assets", "sharegpt_sample.json"))
    ap.add_argument("--output", default=os.path.join(ROOT, "vicuna_jax", "assets", "tokenizer.model"))
    ap.add_argument("--vocab_size", type=int, default=4096)
    args = ap.parse_args()
    data = train(args.input, args.output, args.vocab_size)
    sp = spm.SentencePieceProcessor(model_proto=data)
    print(f"vocab_size={sp.get_piece_size()} bytes={len(data)} -> {args.output}")


if __name__ == "__main__":
    main()
