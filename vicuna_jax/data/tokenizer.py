"""SentencePiece tokenizer wrapper with LLaMA semantics and cheap per-token byte offsets.

Encoding matches the Hugging Face LLaMA *slow* (sentencepiece) tokenizer in legacy mode for plain text: the
dummy-prefix "▁" is added to every encoded string, and nothing in the text is ever a special token. Offsets
let `encode.py` derive loss masks from character positions instead of FastChat's token arithmetic.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_model_pb2

from vicuna_jax.data.hf_tokenizer import (
    char_to_byte_offsets,
    is_hf_tokenizer_path,
    load_hf_tokenizer,
    read_hf_tokenizer_config,
    save_hf_tokenizer_files,
)
from vicuna_jax.fileio import atomic_open

# sentencepiece's BPE slows down on long strings (~2.7M tok/s at 1K chars, ~1.1M at 10K on our CPU). A single
# space between two non-space characters is a word boundary no piece crosses, so long texts are encoded in
# parts split there: the dummy prefix of each later part stands for the removed space. Exactly the same ids.
_PART_CHARS = 1024
_SPLIT_SPACE = re.compile(r"(?<=\S) (?=\S)")


class Tokenizer:
    """A loaded sentencepiece model. Picklable (it pickles the serialized model, ~0.5 MB for LLaMA)."""

    def __init__(self, model_proto: bytes, model_path: str | None = None, chat_template: str | None = None):
        self.model_path = model_path
        self._proto = model_proto
        # The Jinja chat template of a tokenizer_config.json next to the model (HF layout), if any.
        self.chat_template = chat_template
        self.sp = spm.SentencePieceProcessor()
        self.sp.LoadFromSerializedProto(model_proto)
        self.vocab_size: int = self.sp.get_piece_size()
        self.bos_id: int = self.sp.bos_id()
        self.eos_id: int = self.sp.eos_id()
        self.unk_id: int = self.sp.unk_id()
        self.pad_id: int | None = self.sp.pad_id() if self.sp.pad_id() >= 0 else None
        self.bos_piece = self.sp.id_to_piece(self.bos_id) if self.bos_id >= 0 else None
        self.eos_piece = self.sp.id_to_piece(self.eos_id) if self.eos_id >= 0 else None
        self.fingerprint: str = hashlib.sha256(model_proto).hexdigest()[:16]
        self._special_ids = frozenset(
            i for i in range(self.vocab_size) if self.sp.is_control(i) or self.sp.is_unknown(i)
        )
        # What a chat template's text may hold as tokens (`<s>`, `</s>`, `<unk>`), as HF's LlamaTokenizer
        # has them: the Jinja path (`encode_with_specials`) splits rendered text at these strings.
        self.added_tokens: dict[str, int] = {self.sp.id_to_piece(i): i for i in sorted(self._special_ids)}
        unk = self.sp.id_to_piece(self.unk_id) if self.unk_id >= 0 else None
        names = {"bos_token": self.bos_piece, "eos_token": self.eos_piece, "unk_token": unk}
        self.special_tokens: dict[str, str] = {k: v for k, v in names.items() if v is not None}
        self._specials_re = re.compile("|".join(map(re.escape, sorted(self.added_tokens, key=len,
                                                                        reverse=True))))
        self._byte_len = self._piece_byte_lengths()
        spec = sp_model_pb2.ModelProto.FromString(model_proto).normalizer_spec
        # Offsets from piece lengths are exact only when the text reaches the model unchanged.
        self._fast_offsets = spec.name == "identity" and not spec.remove_extra_whitespaces
        self._dummy_prefix = 1 if spec.add_dummy_prefix else 0
        trainer = sp_model_pb2.ModelProto.FromString(model_proto).trainer_spec
        interior_space = any(
            "\u2581" in p.strip("\u2581") for p in map(self.sp.id_to_piece, range(self.vocab_size))
        )
        self._split_long = (
            self._fast_offsets
            and spec.add_dummy_prefix
            and trainer.split_by_whitespace
            and not trainer.treat_whitespace_as_suffix
            and not interior_space
        )

    # -- pickling: grain workers re-create the processor from the serialized model -----------------------
    def __getstate__(self) -> dict:
        return {"model_proto": self._proto, "model_path": self.model_path,
                "chat_template": self.chat_template}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model_proto"], state["model_path"], state.get("chat_template"))

    def __repr__(self) -> str:
        return f"Tokenizer({self.model_path!r}, vocab_size={self.vocab_size}, fingerprint={self.fingerprint})"

    # -- public API --------------------------------------------------------------------------------------
    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of `text` (plain text: `</s>` in it is three ordinary pieces, never the EOS id)."""
        ids = self._sp_ids(text) if text else []
        if bos:
            ids = [self.bos_id, *ids]
        if eos:
            ids = [*ids, self.eos_id]
        return ids

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        """Plain-text ids for many strings in one C++ call (faster than a Python loop)."""
        return self.sp.encode(list(texts), num_threads=num_threads) if texts else []

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of `ids`, skipping BOS/EOS/UNK/control ids like HF `decode(skip_special_tokens=True)`."""
        keep = [int(i) for i in ids if int(i) not in self._special_ids and 0 <= int(i) < self.vocab_size]
        return self.sp.decode(keep)

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))

    def piece_to_id(self, piece: str) -> int:
        return self.sp.piece_to_id(piece)

    def is_special(self, i: int) -> bool:
        return int(i) in self._special_ids

    def encode_with_offsets(self, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ids plus each token's [start, end) *byte* offsets into `text.encode('utf-8')`.

        The dummy-prefix space is not part of `text`, so the first token starts at 0. A character split into
        several byte-fallback tokens gives each of them a non-empty span inside that character.
        """
        return self.encode_batch_with_offsets([text])[0]

    def encode_batch_with_offsets(
        self, texts: Sequence[str]
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """`encode_with_offsets` for many strings, with one sentencepiece call for all of them."""
        out = []
        empty = np.zeros((0,), np.int32)
        for text in texts:
            if not text:
                out.append((empty, empty, empty))
            else:
                # EncodeAsIds per string: a list call pays ~0.2 ms of thread-pool setup per call.
                out.append(self._offsets(text, np.asarray(self._sp_ids(text), dtype=np.int32)))
        return out

    def encode_with_specials(self, texts: Sequence[str]) -> list[tuple[np.ndarray, SpanEncoding]]:
        """For rendered chat-template text, as HF's LlamaTokenizer (legacy) tokenizes it: `<s>`, `</s>` and
        `<unk>` in the text become their ids; each text between them is encoded with sentencepiece's dummy
        prefix, which a leading space stands in for (HF's Metaspace prepends "▁" only when the text does not
        already start with one). (ids, character-offset encoding) per text; nothing is added."""
        out = []
        for text in texts:
            ids: list[np.ndarray] = []
            spans: list[np.ndarray] = []
            at = 0
            for m in [*self._specials_re.finditer(text), None]:
                end = m.start() if m is not None else len(text)
                if end > at:
                    ids_, spans_ = self._segment(text[at:end])
                    ids.append(ids_)
                    spans.append(spans_ + at)
                if m is not None:
                    ids.append(np.array([self.added_tokens[m.group()]], np.int32))
                    spans.append(np.array([[m.start(), m.end()]], np.int64))
                    at = m.end()
            ids_all = np.concatenate(ids).astype(np.int32) if ids else np.zeros((0,), np.int32)
            spans_all = np.concatenate(spans) if spans else np.zeros((0, 2), np.int64)
            out.append((ids_all, SpanEncoding(ids_all, spans_all, len(text))))
        return out

    def _segment(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids, [N, 2] character spans) of text between special tokens."""
        lead = 1 if text.startswith(" ") and self._dummy_prefix else 0
        body = text[lead:]
        if not body:  # a lone space: the dummy prefix alone
            return np.array([self.sp.piece_to_id("\u2581")], np.int32), np.array([[0, 1]], np.int64)
        ids, starts, ends = self.encode_with_offsets(body)
        bounds = char_to_byte_offsets(body)
        char_starts = np.searchsorted(bounds, starts, side="right") - 1 + lead
        char_ends = np.searchsorted(bounds, ends, side="left") + lead
        if lead and len(char_starts):
            char_starts[0] = 0  # the first token's "▁" is the leading space
        # A lone dummy-prefix "▁" (before a digit, say) covers no text; HF gives it the next character.
        empty = char_ends <= char_starts
        char_ends[empty] = np.minimum(char_starts[empty] + 1, len(text))
        return ids, np.stack([char_starts, char_ends], axis=1).astype(np.int64)

    # -- internals ---------------------------------------------------------------------------------------
    def _sp_ids(self, text: str) -> list[int]:
        """sentencepiece ids of `text`, long texts in parts (see `_PART_CHARS`)."""
        if not self._split_long or len(text) <= 2 * _PART_CHARS:
            return self.sp.EncodeAsIds(text)
        ids: list[int] = []
        start = 0
        while len(text) - start > 2 * _PART_CHARS:
            m = _SPLIT_SPACE.search(text, start + _PART_CHARS)
            if m is None:
                break
            ids += self.sp.EncodeAsIds(text[start : m.start()])
            start = m.end()
        return ids + self.sp.EncodeAsIds(text[start:])

    def _offsets(self, text: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._fast_offsets:
            lens = self._byte_len[ids]
            if int(lens.sum()) == len(text.encode("utf-8")) + self._dummy_prefix and (lens >= 0).all():
                ends = np.cumsum(lens) - self._dummy_prefix
                starts = np.maximum(ends - lens, 0)
                return ids, starts.astype(np.int32), ends.astype(np.int32)
        return self._offsets_from_proto(text)

    def _piece_byte_lengths(self) -> np.ndarray:
        """Bytes of text each piece stands for; -1 where unknown (offsets then come from the proto)."""
        lens = np.full((self.vocab_size,), -1, np.int64)
        for i in range(self.vocab_size):
            if self.sp.is_control(i):
                lens[i] = 0
            elif self.sp.is_byte(i):
                lens[i] = 1
            elif not self.sp.is_unknown(i):
                lens[i] = len(self.sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
        return lens

    def _offsets_from_proto(self, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Slow but general path (normalising models, unknown pieces, literal '▁' in the text)."""
        proto = self.sp.encode(text, out_type="proto")
        ids = np.array([p.id for p in proto.pieces], np.int32)
        starts = np.array([p.begin for p in proto.pieces], np.int64)
        ends = np.array([p.end for p in proto.pieces], np.int64)
        # Byte-fallback pieces of one character: all but the last have an empty span; give them the char's.
        for k in range(len(ids) - 2, -1, -1):
            if ends[k] == starts[k]:
                ends[k] = ends[k + 1]
        return ids, starts.astype(np.int32), ends.astype(np.int32)


class SpanEncoding:
    """The parts of a `tokenizers.Encoding` the chat encoder uses, for sentencepiece ids: character offsets,
    `char_to_token` and `token_to_chars`."""

    def __init__(self, ids: np.ndarray, spans_Nx2: np.ndarray, num_chars: int):
        self.ids = [int(i) for i in ids]
        self.offsets = [(int(a), int(b)) for a, b in spans_Nx2]
        self._token_of_char = np.full((num_chars,), -1, np.int64)
        for k in range(len(self.offsets) - 1, -1, -1):  # the first token covering a character wins
            a, b = self.offsets[k]
            self._token_of_char[a:b] = k

    def char_to_token(self, c: int) -> int | None:
        if not 0 <= c < len(self._token_of_char) or self._token_of_char[c] < 0:
            return None
        return int(self._token_of_char[c])

    def token_to_chars(self, k: int) -> tuple[int, int]:
        return self.offsets[k]


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer: a sentencepiece `.model` file, a Hugging Face `tokenizer.json`, or a directory
    holding either (HF checkpoint layout; `tokenizer.json` wins, as in transformers). A tokenizer.json
    tokenizer is an `hf_tokenizer.HFTokenizer`, which has this class's interface."""
    path = os.fspath(path)
    if is_hf_tokenizer_path(path):
        return load_hf_tokenizer(path)
    model_file = os.path.join(path, "tokenizer.model") if os.path.isdir(path) else path
    if not os.path.isfile(model_file):
        extra = " (nor tokenizer.json)" if os.path.isdir(path) else ""
        raise FileNotFoundError(f"tokenizer model not found: {model_file}{extra}")
    with open(model_file, "rb") as f:
        proto = f.read()
    # An HF LLaMA directory keeps the chat template in tokenizer_config.json next to tokenizer.model.
    config = read_hf_tokenizer_config(os.path.dirname(os.path.abspath(model_file)))
    template = config.get("chat_template")
    try:
        return Tokenizer(proto, model_path=os.path.abspath(model_file),
                         chat_template=template if isinstance(template, str) and template else None)
    except (RuntimeError, OSError) as e:
        raise ValueError(f"not a sentencepiece model: {model_file}: {e}") from e


TOKENIZER_DIR = "tokenizer"  # where a checkpoint or workdir keeps an HF tokenizer (tokenizer.json + config)


def find_tokenizer_in(directory: str) -> str | None:
    """The tokenizer stored in `directory`: itself when it holds tokenizer.json, its `tokenizer/` folder,
    or its tokenizer.model; None if there is none."""
    for candidate in (directory, os.path.join(directory, TOKENIZER_DIR)):
        if os.path.isfile(os.path.join(candidate, "tokenizer.json")):
            return candidate
    model = os.path.join(directory, "tokenizer.model")
    return model if os.path.isfile(model) else None


def copy_tokenizer(path: str, directory: str, chat_template: str | None = None) -> str:
    """Stores the tokenizer at `path` in `directory` (tokenizer.model, or an HF tokenizer in `tokenizer/`,
    its tokenizer_config.json carrying `chat_template` when given); returns the stored path."""
    import shutil

    if is_hf_tokenizer_path(path):
        out = os.path.join(directory, TOKENIZER_DIR)
        tok = load_hf_tokenizer(path)
        save_hf_tokenizer_files(tok, out, chat_template or tok.chat_template)
        return out
    source = os.path.join(path, "tokenizer.model") if os.path.isdir(path) else path
    out = os.path.join(directory, "tokenizer.model")
    with open(source, "rb") as src, atomic_open(out, "wb") as dst:  # replaces a link at `out`, not its target
        shutil.copyfileobj(src, dst)
    return out


def bundled_tokenizer_path() -> str:
    """Path of the small demo tokenizer trained on the bundled sample (see scripts/train_tokenizer.py)."""
    return os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "tokenizer.model")


BUNDLED_FAMILIES = ("llama3", "qwen3", "mistral")


def bundled_family_tokenizer_path(family: str) -> str:
    """Directory of a model family's small bundled tokenizer.json (its real special tokens and chat template,
    a BPE trained on the bundled sample: scripts/make_family_tokenizers.py); configs/tiny_<family>.py train
    with it."""
    if family not in BUNDLED_FAMILIES:
        raise ValueError(f"no bundled tokenizer for {family!r}; bundled: {', '.join(BUNDLED_FAMILIES)}")
    return os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "tokenizers", family)


def is_bundled_family_tokenizer(path: str) -> bool:
    """Whether `path` is (inside) one of the bundled family tokenizers' directories."""
    root = os.path.realpath(os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "tokenizers"))
    return os.path.realpath(path).startswith(root + os.sep)
