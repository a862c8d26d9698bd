"""Streaming text: released deltas never change, unfinished UTF-8 characters and possible stop-string starts
are held back, a stop string split over tokens or chunks still ends the text before it; EOS ids."""

from __future__ import annotations

import dataclasses

import pytest

from vicuna_jax.data import bundled_tokenizer_path, load_tokenizer
from vicuna_jax.decoding.text import TextStream, first_stop, resolve_eos_ids, tokens_until_stop


class ByteTokenizer:
    """Token = one UTF-8 byte; an unfinished character decodes to U+FFFD (as with byte fallback)."""

    eos_id = -1

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def stream(tokenizer, ids: list[int], chunks: list[int], stops=()) -> tuple[list[str], TextStream]:
    """Feeds `ids` in chunks of the given sizes; returns every delta (the final one included)."""
    text = TextStream(tokenizer, stops)
    deltas, start = [], 0
    for n in chunks:
        deltas.append(text.extend(ids[start:start + n]))
        start += n
        if text.stopped:
            return deltas, text
    deltas.append(text.finish())
    return deltas, text


def test_first_stop_and_tokens_until_stop():
    assert first_stop("abc USER: x ###", ["###", "USER:"]) == 4
    assert first_stop("abc", ["", "zz"]) is None
    tok = ByteTokenizer()
    ids = tok.encode("hello world")
    # "lo w" is complete with the 7th byte, inside the chunk of the last 6 tokens where it was found.
    assert tokens_until_stop(tok, ids, ["lo w"], new=6) == 7
    assert tokens_until_stop(tok, ids, ["not there"], new=3) == len(ids)


def test_multibyte_character_split_over_byte_tokens_is_held_back():
    tok = ByteTokenizer()
    ids = tok.encode("ab😀c")  # the emoji is 4 byte tokens
    deltas, text = stream(tok, ids, [1] * len(ids))
    assert deltas == ["a", "b", "", "", "", "😀", "c", ""]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == text.text == "ab😀c"


def test_bundled_tokenizer_byte_fallback_streams_whole_characters():
    tok = load_tokenizer(bundled_tokenizer_path())
    ids = tok.encode("Hi 😀 ok", bos=False)
    assert any("\ufffd" in tok.decode(ids[:k]) for k in range(len(ids))), "precondition: byte-fallback pieces"
    deltas, text = stream(tok, ids, [1] * len(ids))
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == text.text == tok.decode(ids)


@pytest.mark.parametrize("chunks", [[1] * 40, [3] * 14, [5, 7, 40], [40]])
def test_stop_string_split_across_chunks(chunks):
    tok = ByteTokenizer()
    ids = tok.encode("The answer is 42.### USER: more")
    deltas, text = stream(tok, ids, chunks, stops=("###", "USER:"))
    assert text.stopped and text.text == "The answer is 42."
    assert "".join(deltas) == "The answer is 42."
    assert not any("#" in d for d in deltas)  # the start of the stop string was never shown
    assert text.stop_tokens == len(tok.encode("The answer is 42.###"))


def test_a_possible_stop_start_is_released_once_it_is_not_one():
    tok = ByteTokenizer()
    ids = tok.encode("a#b##c")
    deltas, text = stream(tok, ids, [1] * len(ids), stops=("###",))
    # Two characters (the longest stop minus one) stay back until the text moves past them.
    assert deltas == ["", "", "a", "#", "b", "#", "#c"]
    assert not text.stopped and "".join(deltas) == "a#b##c"


def test_resolve_eos_ids():
    @dataclasses.dataclass
    class Cfg:
        eos_token_id: int = 2
        extra_eos_token_ids: tuple[int, ...] = ()

        @property
        def eos_token_ids(self) -> tuple[int, ...]:
            return (self.eos_token_id, *self.extra_eos_token_ids)

    class Tok:
        eos_id = 7

    assert resolve_eos_ids(Cfg()) == (2,)
    assert resolve_eos_ids(Cfg(extra_eos_token_ids=(5, 3))) == (2, 3, 5)  # Llama-3: several EOS ids
    assert resolve_eos_ids(Cfg(), extra=[11]) == (2, 11)  # the template's end-of-turn ids
    assert resolve_eos_ids(Cfg(), Tok()) == (2, 7)
    assert resolve_eos_ids(Cfg(), Tok(), [9, 9]) == (7, 9)  # explicit ids replace the config's
    assert resolve_eos_ids(Cfg(), ByteTokenizer(), [-5]) == (-5,)  # eos_id -1: the tokenizer has none
