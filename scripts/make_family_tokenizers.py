"""Build the small bundled Llama-3, Qwen3 and Mistral tokenizers that `configs/tiny_<family>.py` train with.

Each is a BPE trained with the `tokenizers` library on the cleaned sample conversations
(vicuna_jax/assets/sharegpt_sample.json), with its family's real special tokens, pre-tokenizer and chat
template (tokenizer_config.json, as on the hub); 2048 ids each: the ~260K characters of the sample hold only
~2K distinct words, so a larger vocabulary would only memorise them (the tiny presets' 4096-row embedding
leaves the rest unused, as Qwen's padded vocabulary does). The special tokens come first, in the family's
own order, placed so that BOS = 1 and EOS = 2 as the tiny presets declare (Qwen3 has no BOS; its id 2 is
<|im_end|>, the EOS of Qwen3's instruct models):

    llama3   byte-level BPE, Llama-3's split pattern; 0 <|finetune_right_pad_id|>, 1 <|begin_of_text|>,
             2 <|end_of_text|>, <|start_header_id|>, <|end_header_id|>, <|eom_id|>, <|eot_id|>,
             <|python_tag|>; Meta-Llama-3-Instruct's template
    qwen3    byte-level BPE, NFC, Qwen2/3's split pattern; 0 <|endoftext|>, 1 <|im_start|>, 2 <|im_end|>,
             Qwen's other specials, then <think>, </think>, <tool_call>, ... as added tokens (not special,
             as in Qwen3); Qwen3's template (tools and thinking)
    mistral  sentencepiece-style BPE ("▁" for spaces, byte fallback <0x00>..<0xFF>); 0 <unk>, 1 <s>,
             2 </s>, 3 [INST], 4 [/INST], then the tool-call tokens; Mistral-7B-Instruct-v0.3's template

Single-threaded and with a fixed alphabet, so the output is reproducible byte for byte. Needs no network.

    python scripts/make_family_tokenizers.py [--family=llama3,qwen3,mistral]
                                             [--out=vicuna_jax/assets/tokenizers]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys

os.environ["RAYON_NUM_THREADS"] = "1"  # before tokenizers starts its thread pool: reproducible merges

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from family_templates import LLAMA3_TEMPLATE, MISTRAL_V03_TEMPLATE, QWEN3_TEMPLATE  # noqa: E402

from vicuna_jax.data.clean import Cleaner  # noqa: E402
from vicuna_jax.data.formats import read_records  # noqa: E402

VOCAB_SIZE = 2048
SAMPLE = os.path.join(ROOT, "vicuna_jax", "assets", "sharegpt_sample.json")
OUT = os.path.join(ROOT, "vicuna_jax", "assets", "tokenizers")

# The real pre-tokenizer patterns of Llama-3 (tiktoken cl100k-style) and Qwen2/Qwen3.
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")

LLAMA3_SPECIALS = ["<|finetune_right_pad_id|>", "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
QWEN3_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
# Qwen's added tokens that are not special (decode keeps them; typed in text they are still one token).
QWEN3_ADDED = ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
               "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
               "<think>", "</think>"]
QWEN3_SPECIAL_ADDED = {"<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>",
                       "<|file_sep|>"}
MISTRAL_SPECIALS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]",
                    "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"]
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]

# tokenizer_config.json of each family (the hub's keys; tokenizer_class is what transformers 5 loads it with).
CONFIGS = {
    "llama3": {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
               "eos_token": "<|eot_id|>", "clean_up_tokenization_spaces": False,
               "model_input_names": ["input_ids", "attention_mask"], "chat_template": LLAMA3_TEMPLATE},
    "qwen3": {"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>",
              "pad_token": "<|endoftext|>", "unk_token": None, "errors": "replace", "add_prefix_space": False,
              "split_special_tokens": False, "clean_up_tokenization_spaces": False,
              "chat_template": QWEN3_TEMPLATE},
    "mistral": {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False, "legacy": False,
                "clean_up_tokenization_spaces": False, "spaces_between_special_tokens": False,
                "chat_template": MISTRAL_V03_TEMPLATE},
}
FAMILIES = tuple(CONFIGS)


def training_texts(path: str = SAMPLE) -> list[str]:
    """Every message of the cleaned sample (what prepare trains on)."""
    return [t["value"] for rec in Cleaner()(read_records(path)) for t in rec["conversations"] if t["value"]]


def _byte_level(pattern: str, specials: list[str], vocab_size: int, texts: list[str], nfc: bool):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return tok


def build_llama3(texts: list[str]):
    from tokenizers import processors

    tok = _byte_level(LLAMA3_PATTERN, LLAMA3_SPECIALS, VOCAB_SIZE, texts, nfc=False)
    bos = "<|begin_of_text|>"
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                      special_tokens=[(bos, tok.token_to_id(bos))])])
    return tok


def build_qwen3(texts: list[str]):
    from tokenizers import AddedToken, processors

    tok = _byte_level(QWEN_PATTERN, QWEN3_SPECIALS, VOCAB_SIZE - len(QWEN3_ADDED), texts, nfc=True)
    for t in QWEN3_ADDED:
        tok.add_tokens([AddedToken(t, special=t in QWEN3_SPECIAL_ADDED, normalized=False)])
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    return tok


def build_mistral(texts: list[str]):
    """Sentencepiece-style BPE: trained on "▁"-marked words, then re-indexed as Mistral's vocabulary is laid
    out (specials, the 256 byte-fallback pieces, then the learned pieces)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    # The 200 most frequent characters (ties by code point: the trainer's own cut breaks ties at random); the
    # others are spelled in byte-fallback pieces.
    counts = collections.Counter("".join(texts).replace(" ", "▁"))
    alphabet = sorted(counts, key=lambda ch: (-counts[ch], ch))[:200]
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE - len(BYTE_TOKENS), special_tokens=MISTRAL_SPECIALS,
                                  show_progress=False, initial_alphabet=alphabet,
                                  limit_alphabet=len(alphabet), max_token_length=16)
    trainer_tok.train_from_iterator(texts, trainer)
    learned = json.loads(trainer_tok.to_str())["model"]
    by_id = sorted(learned["vocab"].items(), key=lambda kv: kv[1])
    pieces = [p for p, _ in by_id if p not in MISTRAL_SPECIALS]
    vocab = {p: i for i, p in enumerate(MISTRAL_SPECIALS + BYTE_TOKENS + pieces)}
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True,
                               fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(MISTRAL_SPECIALS)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    return tok


BUILDERS = {"llama3": build_llama3, "qwen3": build_qwen3, "mistral": build_mistral}


def write_family(family: str, out_root: str, texts: list[str]) -> str:
    tok = BUILDERS[family](texts)
    size = tok.get_vocab_size(with_added_tokens=True)
    if size != VOCAB_SIZE:
        raise SystemExit(f"{family}: {size} ids, expected {VOCAB_SIZE}")
    directory = os.path.join(out_root, family)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(tok.to_str())
    config = {**CONFIGS[family], "model_max_length": 1024}
    with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return directory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", default=",".join(FAMILIES))
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--input", default=SAMPLE)
    args = ap.parse_args()
    texts = training_texts(args.input)
    for family in args.family.split(","):
        if family not in BUILDERS:
            raise SystemExit(f"error: --family: unknown family {family!r}; known: {', '.join(FAMILIES)}")
        directory = write_family(family, args.out, texts)
        size = sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory))
        print(f"{family}: {VOCAB_SIZE} ids, {size / 1024:.0f} KB -> {directory}")


if __name__ == "__main__":
    main()
