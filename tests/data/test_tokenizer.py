"""Tokenizer wrapper: loading, LLaMA/HF-compatible ids and decoding, offsets, pickling."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from vicuna_jax.data import Tokenizer, load_tokenizer
from vicuna_jax.data.tokenizer import bundled_tokenizer_path

TEXTS = [
    "Hello world",
    "  leading spaces and  double  spaces ",
    "Line one\nLine two\n\n    indented code()",
    "ünïcødé, Привет мир, 你好世界, emoji 🦙🚀",
    "digits 1234567 and </s> <s> [INST] literal specials",
    "a ▁ literal lower-one-eighth block",
    "tabs\tand\r\ncarriage returns",
]


def test_load_file_and_directory(small_tok, tmp_path):
    path = bundled_tokenizer_path()
    assert load_tokenizer(path).fingerprint == small_tok.fingerprint
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "tokenizer.model").write_bytes(open(path, "rb").read())
    tok = load_tokenizer(d)
    assert tok.model_path == str(d / "tokenizer.model")
    assert tok.encode("Hello there") == small_tok.encode("Hello there")


def test_missing_and_invalid_files_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.model"):
        load_tokenizer(tmp_path / "nope.model")
    with pytest.raises(FileNotFoundError, match="tokenizer.model"):
        load_tokenizer(tmp_path)  # a directory without tokenizer.model
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.model"):
        load_tokenizer(bad)


def test_bundled_tokenizer_is_llama_style(small_tok):
    assert small_tok.vocab_size == 4096
    assert (small_tok.unk_id, small_tok.bos_id, small_tok.eos_id, small_tok.pad_id) == (0, 1, 2, None)
    assert small_tok.id_to_piece(1) == "<s>" and small_tok.id_to_piece(2) == "</s>"
    # byte fallback: an unseen character becomes UTF-8 byte pieces, never <unk>
    ids = small_tok.encode("𓂀")
    assert [small_tok.id_to_piece(i) for i in ids][-4:] == ["<0xF0>", "<0x93>", "<0x82>", "<0x80>"]
    # split digits and the dummy prefix, like LLaMA
    assert [small_tok.id_to_piece(i) for i in small_tok.encode("2024")] == ["▁", "2", "0", "2", "4"]


def test_encode_flags_and_literal_specials(small_tok):
    ids = small_tok.encode("hi", bos=True, eos=True)
    assert ids[0] == small_tok.bos_id and ids[-1] == small_tok.eos_id
    assert small_tok.encode("") == []
    # "</s>" typed in text is ordinary text, never the EOS id
    assert small_tok.eos_id not in small_tok.encode("a </s> b")
    assert small_tok.bos_id not in small_tok.encode("<s>")


@pytest.mark.parametrize("which", ["small", "llama"])
def test_ids_match_sentencepiece_and_hf_slow_backend(which, small_tok, request):
    """Our ids == HF's sentencepiece (slow, legacy) backend for plain text, incl. whitespace runs."""
    tok = small_tok if which == "small" else request.getfixturevalue("llama_tok")
    sp_backend = pytest.importorskip("transformers.tokenization_utils_sentencepiece")
    hf = sp_backend.SentencePieceBackend(
        vocab_file=tok.model_path, legacy=True, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    for text in TEXTS:
        plain = text.replace("</s>", "").replace("<s>", "")  # the HF backend splits on special tokens
        assert tok.encode(plain) == hf(plain, add_special_tokens=False).input_ids, plain


@pytest.mark.parametrize("which", ["small", "llama"])
def test_ids_and_decode_match_hf_auto_tokenizer(which, small_tok, request, hf_auto, tmp_path_factory):
    tok = small_tok if which == "small" else request.getfixturevalue("llama_tok")
    hf = hf_auto(tok, str(tmp_path_factory.mktemp("hf")))
    for text in [
        "Hello world",
        "Line one\nLine two",
        "ünïcødé, Привет мир, 你好世界, emoji 🦙",
        "x = f(1, 2) + 3",
    ]:
        assert tok.encode(text, bos=True) == hf(text).input_ids, text
    for text in TEXTS:
        ids = tok.encode(text, bos=True, eos=True)
        assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True), text


def test_decode_skips_specials_and_roundtrips(small_tok):
    for text in TEXTS:
        if "▁" in text:  # sentencepiece decodes a literal "▁" as a space (HF does the same)
            continue
        ids = small_tok.encode(text, bos=True, eos=True)
        assert small_tok.decode(ids) == text
    assert small_tok.decode(np.array([1, 2, 0])) == ""


@pytest.mark.parametrize("which", ["small", "llama"])
def test_offsets_cover_the_text(which, small_tok, request):
    tok = small_tok if which == "small" else request.getfixturevalue("llama_tok")
    for text in TEXTS:
        ids, starts, ends = tok.encode_with_offsets(text)
        assert ids.tolist() == tok.encode(text)
        raw = text.encode("utf-8")
        assert starts[0] == 0 and ends[-1] == len(raw)
        assert (starts[1:] >= starts[:-1]).all() and (ends[1:] >= ends[:-1]).all()
        assert (ends > starts)[1:].all()
        assert ends[0] > starts[0] or tok.id_to_piece(ids[0]) == "▁"  # a lone dummy prefix covers no text
        if "▁" in text:
            continue
        # Each token's span is exactly the text its piece stands for (the dummy prefix is not in the text).
        pieces = [tok.id_to_piece(i) for i in ids]
        for k, (piece, s, e) in enumerate(zip(pieces, starts, ends, strict=True)):
            if piece.startswith("<0x"):
                assert e - s == 1
                continue
            want = piece.replace("▁", " ").encode("utf-8")
            assert raw[s:e] == (want[1:] if k == 0 else want), (text, k, piece)
        assert b"".join(raw[s:e] for s, e in zip(starts, ends, strict=True)) == raw
        # The general (proto) path agrees with the fast one at character granularity (it gives byte-fallback
        # pieces the whole character rather than one byte each).
        slow_ids, slow_starts, slow_ends = tok._offsets_from_proto(text)
        assert slow_ids.tolist() == ids.tolist()
        char_of = np.cumsum([len(ch.encode("utf-8")) for ch in text])  # byte end of each character
        for a, b in ((slow_starts, starts), (slow_ends - 1, ends - 1)):
            same = np.searchsorted(char_of, a, side="right") == np.searchsorted(char_of, b, side="right")
            assert same.all()


def test_pickle_roundtrip(small_tok):
    clone = pickle.loads(pickle.dumps(small_tok))
    assert isinstance(clone, Tokenizer)
    assert clone.fingerprint == small_tok.fingerprint and clone.model_path == small_tok.model_path
    assert clone.encode(TEXTS[3]) == small_tok.encode(TEXTS[3])
    assert len(pickle.dumps(small_tok)) < 2 * os.path.getsize(small_tok.model_path)


@pytest.mark.parametrize("which", ["small", "llama"])
def test_long_texts_encoded_in_parts_give_identical_ids(which, small_tok, request):
    """Long texts are encoded in parts split at single spaces (much faster); the ids must not change."""
    tok = small_tok if which == "small" else request.getfixturevalue("llama_tok")
    assert tok._split_long
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "x=1;", "Привет", "你好世界", "🦙", "  ", "\n", " \n ", "12345", "f():", "\t"]
    for _ in range(20):
        text = " ".join(rng.choice(words, size=int(rng.integers(300, 3000))))
        ids = tok.encode(text)
        assert ids == tok.sp.EncodeAsIds(text)
        got, starts, ends = tok.encode_with_offsets(text)
        assert got.tolist() == ids and ends[-1] == len(text.encode("utf-8"))
