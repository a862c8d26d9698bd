"""Hugging Face `tokenizer.json` tokenizers (Llama-3, Qwen, Mistral, ...) with the `Tokenizer` interface.

Loaded with the `tokenizers` library (Rust) from an HF directory: `tokenizer.json`, plus
`tokenizer_config.json` (bos/eos/unk/pad tokens, `chat_template`), `chat_template.jinja` (which wins over the
config's template, as in transformers 5) and the older `special_tokens_map.json`. Ids equal
`transformers.AutoTokenizer`'s:

- `encode_hf(text)` is `AutoTokenizer(text)`: special-token strings in the text become their ids and the
  post-processor of tokenizer.json adds BOS/EOS (transformers 5 ignores `add_bos_token`/`add_eos_token` when a
  tokenizer.json exists; without a post-processor nothing is added).
- `encode(text, bos=, eos=)` is plain text, like the sentencepiece `Tokenizer`: `<|eot_id|>` typed in a
  message stays ordinary text; specials come only from the template.

Offsets from the `tokenizers` library are character offsets; `encode_batch_with_offsets` turns them into UTF-8
byte offsets (what `encode.py` expects from every tokenizer), vectorised.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from vicuna_jax.fileio import atomic_open

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
HF_TOKENIZER_FILES = (TOKENIZER_JSON, TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP, CHAT_TEMPLATE_FILE)
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


def _token_text(value: Any) -> str | None:
    """A special token in tokenizer_config.json: a string, or an AddedToken dict with "content"."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def read_hf_tokenizer_config(directory: str) -> dict[str, Any]:
    """tokenizer_config.json (missing: {}), with special_tokens_map.json filling in absent special tokens and
    chat_template.jinja replacing `chat_template`. Raises ValueError naming a file that is not valid JSON."""
    config: dict[str, Any] = {}
    for name in (TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP):
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: invalid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: must hold a JSON object")
        for key, value in data.items():
            config.setdefault(key, value)
    template_file = os.path.join(directory, CHAT_TEMPLATE_FILE)
    if os.path.isfile(template_file):
        with open(template_file, encoding="utf-8") as f:
            config["chat_template"] = f.read()
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": ..., "template": ...}]: the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        config["chat_template"] = named.get("default")
    return config


class HFTokenizer:
    """A `tokenizer.json` tokenizer. Picklable (it pickles the JSON text and the config)."""

    def __init__(self, tokenizer_json: str, config: dict[str, Any], model_path: str | None = None):
        from tokenizers import Tokenizer as RustTokenizer

        self.model_path = model_path
        self._json, self._config = tokenizer_json, config
        self._tok = RustTokenizer.from_str(tokenizer_json)
        names = {key: _token_text(config.get(key)) for key in SPECIAL_KEYS}
        missing = [t for t in names.values() if t is not None and self._tok.token_to_id(t) is None]
        if missing:  # transformers adds special tokens the vocabulary lacks, at the end
            self._tok.add_special_tokens(missing)
        if self._tok.post_processor is None:  # transformers then installs an empty TemplateProcessing
            from tokenizers import processors

            self._tok.post_processor = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1")
        self._plain = RustTokenizer.from_str(self._tok.to_str())
        self._plain.encode_special_tokens = True  # specials typed in text stay text
        self.vocab_size: int = self._tok.get_vocab_size(with_added_tokens=True)
        ids = {key: (self._tok.token_to_id(t) if t is not None else None) for key, t in names.items()}
        self.bos_id: int | None = ids["bos_token"]
        self.eos_id: int | None = ids["eos_token"]
        self.unk_id: int | None = ids["unk_token"]
        self.pad_id: int | None = ids["pad_token"]
        self.bos_piece, self.eos_piece = names["bos_token"], names["eos_token"]
        self.special_tokens: dict[str, str] = {k: v for k, v in names.items() if v is not None}
        self.chat_template: str | None = config.get("chat_template")
        added = self._tok.get_added_tokens_decoder()
        self.added_tokens: dict[str, int] = {t.content: i for i, t in added.items()}
        self._special_ids = frozenset(i for i, t in added.items() if t.special)
        # The ids it gives, not the chat template: the template is recorded on its own (`chat_format`), and a
        # copy saved with the training template must keep the same fingerprint.
        self.fingerprint: str = _fingerprint(tokenizer_json, {"specials": names})
        # What the fingerprint was before chat formats were recorded: datasets prepared then are keyed by it.
        self.fingerprint_with_template = _fingerprint(tokenizer_json, {"specials": names,
                                                                       "chat_template": self.chat_template})

    # -- pickling --------------------------------------------------------------------------------------------
    def __getstate__(self) -> dict:
        return {"tokenizer_json": self._json, "config": self._config, "model_path": self.model_path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["tokenizer_json"], state["config"], state["model_path"])

    def __repr__(self) -> str:
        return f"HFTokenizer({self.model_path!r}, vocab={self.vocab_size}, fingerprint={self.fingerprint})"

    # -- the Tokenizer interface -----------------------------------------------------------------------------
    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        """Plain-text ids (special-token strings in `text` are ordinary text), optionally with BOS/EOS."""
        ids = self._plain.encode(text, add_special_tokens=False).ids if text else []
        if bos and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        if eos and self.eos_id is not None:
            ids = [*ids, self.eos_id]
        return ids

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        """Plain-text ids for many strings in one (Rust, parallel) call."""
        del num_threads  # the Rust side sizes its own pool (RAYON_NUM_THREADS / TOKENIZERS_PARALLELISM)
        if not texts:
            return []
        return [e.ids for e in self._plain.encode_batch(list(texts), add_special_tokens=False)]

    def encode_hf(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Exactly `AutoTokenizer(text, add_special_tokens=...)["input_ids"]`."""
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_with_specials(self, texts: Sequence[str]) -> list[tuple[np.ndarray, Any]]:
        """For rendered chat-template text: (ids, the `tokenizers.Encoding`, whose *character* offsets,
        `char_to_token` and `token_to_chars` place each token) per text, special-token strings split out as
        their ids and nothing added (what `apply_chat_template` tokenizes)."""
        return [(np.asarray(e.ids, np.int32), e)
                for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of `ids` without special tokens (HF `decode(skip_special_tokens=True)`)."""
        keep = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
        return self._tok.decode(keep, skip_special_tokens=True)

    def id_to_piece(self, i: int) -> str:
        return self._tok.id_to_token(int(i))

    def piece_to_id(self, piece: str) -> int | None:
        return self._tok.token_to_id(piece)

    def is_special(self, i: int) -> bool:
        return int(i) in self._special_ids

    def encode_with_offsets(self, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.encode_batch_with_offsets([text])[0]

    def encode_batch_with_offsets(
        self, texts: Sequence[str]
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Plain-text ids with each token's [start, end) UTF-8 *byte* offsets (like the sentencepiece one)."""
        out = []
        empty = np.zeros((0,), np.int32)
        encodings = self._plain.encode_batch(list(texts), add_special_tokens=False) if texts else []
        for text, e in zip(texts, encodings, strict=True):
            if not text:
                out.append((empty, empty, empty))
                continue
            offsets = np.asarray(e.offsets, np.int64).reshape(-1, 2)
            to_bytes = char_to_byte_offsets(text)
            out.append((np.asarray(e.ids, np.int32), to_bytes[offsets[:, 0]].astype(np.int32),
                        to_bytes[offsets[:, 1]].astype(np.int32)))
        return out


def _fingerprint(tokenizer_json: str, extra: dict[str, Any]) -> str:
    digest = hashlib.sha256(tokenizer_json.encode("utf-8"))
    digest.update(json.dumps(extra, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def char_to_byte_offsets(text: str) -> np.ndarray:
    """[len(text) + 1] UTF-8 byte offset of each character boundary (vectorised)."""
    code_points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)
    sizes = 1 + (code_points >= 0x80) + (code_points >= 0x800) + (code_points >= 0x10000)
    return np.concatenate([[0], np.cumsum(sizes)])


def is_hf_tokenizer_path(path: str) -> bool:
    """A tokenizer.json file, or a directory holding one."""
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, TOKENIZER_JSON))
    return os.path.basename(path) == TOKENIZER_JSON or path.endswith(".json")


def load_hf_tokenizer(path: str) -> HFTokenizer:
    """From an HF directory or its tokenizer.json (the config files are read next to it)."""
    path = os.path.abspath(os.fspath(path))
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    json_path = os.path.join(path, TOKENIZER_JSON) if os.path.isdir(path) else path
    if not os.path.isfile(json_path):
        raise FileNotFoundError(f"tokenizer not found: {json_path}")
    with open(json_path, encoding="utf-8") as f:
        text = f.read()
    config = read_hf_tokenizer_config(directory)
    try:
        return HFTokenizer(text, config, model_path=directory)
    except Exception as e:  # the Rust parser raises its own exception type for a malformed file
        raise ValueError(f"not a Hugging Face tokenizer.json: {json_path}: {e}") from None


def save_hf_tokenizer_files(tokenizer: HFTokenizer, directory: str, chat_template: str | None,
                            model_max_length: int | None = None) -> None:
    """tokenizer.json and a tokenizer_config.json (the source's keys, its special tokens, `chat_template`
    inline) that transformers loads to the same tokenizer; no chat_template.jinja, which would win."""
    os.makedirs(directory, exist_ok=True)
    with atomic_open(os.path.join(directory, TOKENIZER_JSON)) as f:  # replaces a link, never its target
        f.write(tokenizer._json)
    config = {k: v for k, v in tokenizer._config.items() if k != "chat_template"}
    config.update(tokenizer.special_tokens)
    config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
    if model_max_length is not None:
        config["model_max_length"] = model_max_length
    if chat_template is not None:
        config["chat_template"] = chat_template
    with atomic_open(os.path.join(directory, TOKENIZER_CONFIG)) as f:
        json.dump(config, f, indent=2, ensure_ascii=False)


def sentencepiece_tokenizer_config(specials: dict[str, str], chat_template: str | None = None,
                                   model_max_length: int = 2048) -> dict[str, Any]:
    """tokenizer_config.json for a LLaMA sentencepiece model. transformers 5 needs it next to
    tokenizer.model (`LlamaTokenizer(vocab_file=...)` alone gives an empty tokenizer); legacy mode matches
    how FastChat tokenized its training data."""
    config: dict[str, Any] = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": True,
        "bos_token": specials.get("bos_token"),
        "eos_token": specials.get("eos_token"),
        "unk_token": specials.get("unk_token"),
        "pad_token": None,
        "model_max_length": model_max_length,
        "padding_side": "right",
        "clean_up_tokenization_spaces": False,
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    return config
