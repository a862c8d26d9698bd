"""tokenizer.json tokenizers: ids equal to transformers.AutoTokenizer (locally trained byte-level BPE in the
Llama-3, Qwen and Mistral styles, and the real LLaMA-2 tokenizer converted to tokenizer.json), plain-text
encoding, byte offsets, config files, pickling and errors."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")

from hf_tokenizers import STYLES, save_hf_tokenizer  # noqa: E402

from vicuna_jax.data import load_tokenizer  # noqa: E402
from vicuna_jax.data.hf_tokenizer import HFTokenizer, char_to_byte_offsets  # noqa: E402

TEXTS = [
    "Hello world",
    "  leading spaces and  double  spaces ",
    "Line one\nLine two\n\n    indented code()",
    "ünïcødé, Привет мир, 你好世界, emoji 🦙🚀",
    "digits 1234567 and </s> <s> [INST] <|eot_id|> <|im_end|> <think> literal specials",
    "tabs\tand\r\ncarriage returns",
    "",
]


@pytest.fixture(scope="module", params=sorted(STYLES))
def pair(request, tmp_path_factory):
    # The class each family declares on the hub (transformers 5 rebuilds Qwen2Tokenizer from its own spec).
    cls = "Qwen2Tokenizer" if request.param == "qwen" else "PreTrainedTokenizerFast"
    path = save_hf_tokenizer(str(tmp_path_factory.mktemp(request.param)), request.param, tokenizer_class=cls)
    return request.param, transformers.AutoTokenizer.from_pretrained(path), load_tokenizer(path)


def test_ids_and_special_tokens_equal_autotokenizer(pair):
    style, hf, ours = pair
    assert isinstance(ours, HFTokenizer)
    for text in TEXTS:
        assert ours.encode_hf(text) == hf(text)["input_ids"], (style, text)
        bare = hf(text, add_special_tokens=False)["input_ids"]
        assert ours.encode_hf(text, add_special_tokens=False) == bare
        assert ours.decode(ours.encode_hf(text)) == hf.decode(hf(text)["input_ids"], skip_special_tokens=True)
    assert (ours.bos_id, ours.eos_id, ours.vocab_size) == (hf.bos_token_id, hf.eos_token_id, len(hf))
    assert ours.chat_template == hf.chat_template
    # BOS follows tokenizer.json's post-processor: Llama-3 and Mistral add it, Qwen has none.
    assert (ours.encode_hf("x")[0] == ours.bos_id) == (style != "qwen")


def test_plain_encode_keeps_special_strings_as_text(pair):
    style, _, ours = pair
    eot = "<|eot_id|>" if style == "llama3" else "<|im_end|>" if style == "qwen" else "</s>"
    special = ours.piece_to_id(eot)
    assert special is not None and ours.is_special(special)
    assert special in ours.encode_hf(f"a {eot} b", add_special_tokens=False)
    plain = ours.encode(f"a {eot} b")
    assert special not in plain and ours.decode(plain) == f"a {eot} b"
    ids = ours.encode("hi", bos=True, eos=True)
    assert ids[-1] == ours.eos_id and (ids[0] == ours.bos_id) == (ours.bos_id is not None)


def test_byte_offsets_cover_each_token(pair):
    _, _, ours = pair
    for text in TEXTS[:-1]:
        ids, starts, ends = ours.encode_with_offsets(text)
        raw = text.encode("utf-8")
        assert starts[0] == 0 and ends[-1] == len(raw) and np.all(starts[1:] >= starts[:-1])
        # Tokens of whole characters decode to exactly their byte span.
        for i, s, e in zip(ids, starts, ends, strict=True):
            piece = ours.decode([i])
            if "\ufffd" not in piece:
                assert raw[s:e].decode("utf-8") == piece


def test_char_to_byte_offsets():
    text = "aé你🦙"
    np.testing.assert_array_equal(char_to_byte_offsets(text), [0, 1, 3, 6, 10])


def test_pickle_round_trip_and_fingerprint(pair, tmp_path):
    style, _, ours = pair
    again = pickle.loads(pickle.dumps(ours))
    assert again.fingerprint == ours.fingerprint and again.encode_hf(TEXTS[3]) == ours.encode_hf(TEXTS[3])
    other = load_tokenizer(save_hf_tokenizer(str(tmp_path / "t"), style, chat_template="{{ 'x' }}"))
    # The ids decide the fingerprint; the chat template is recorded on its own (data.chat_format), so a copy
    # saved with the training template keeps the fingerprint.
    assert other.fingerprint == ours.fingerprint


def test_chat_template_file_wins_and_special_tokens_map_fills_in(tmp_path):
    path = save_hf_tokenizer(str(tmp_path / "t"), "llama3")
    with open(os.path.join(path, "chat_template.jinja"), "w") as f:
        f.write("{{ 'from the file' }}")
    config_path = os.path.join(path, "tokenizer_config.json")
    with open(config_path) as f:
        config = json.load(f)
    eos = config.pop("eos_token")
    with open(config_path, "w") as f:
        json.dump(config, f)
    with open(os.path.join(path, "special_tokens_map.json"), "w") as f:
        json.dump({"eos_token": {"content": eos, "special": True}}, f)
    ours, hf = load_tokenizer(path), transformers.AutoTokenizer.from_pretrained(path)
    assert ours.chat_template == hf.chat_template == "{{ 'from the file' }}"
    assert ours.eos_id == hf.eos_token_id == ours.piece_to_id("<|eot_id|>")


def test_bad_files_are_named(tmp_path):
    path = save_hf_tokenizer(str(tmp_path / "t"), "qwen")
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(ValueError, match=r"tokenizer_config.json: invalid JSON"):
        load_tokenizer(path)
    broken = tmp_path / "b"
    broken.mkdir()
    (broken / "tokenizer.json").write_text('{"version": "1.0", "model": 3}')
    with pytest.raises(ValueError, match=r"not a Hugging Face tokenizer.json: .*b/tokenizer.json"):
        load_tokenizer(str(broken))
    with pytest.raises(FileNotFoundError, match=r"tokenizer.model \(nor tokenizer.json\)"):
        load_tokenizer(str(tmp_path))


@pytest.fixture(scope="module")
def llama2_json(tmp_path_factory):
    """The real LLaMA-2 sentencepiece model, converted by transformers into a tokenizer.json directory."""
    model = os.environ.get("VICUNA_JAX_LLAMA_TOKENIZER")
    if not model or not os.path.isfile(model):
        pytest.skip("set VICUNA_JAX_LLAMA_TOKENIZER to the LLaMA-2 tokenizer.model")
    slow = tmp_path_factory.mktemp("llama2_slow")
    shutil.copyfile(model, slow / "tokenizer.model")
    (slow / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "legacy": True, "bos_token": "<s>",
        "eos_token": "</s>", "unk_token": "<unk>"}))
    out = str(tmp_path_factory.mktemp("llama2_json"))
    transformers.AutoTokenizer.from_pretrained(str(slow)).save_pretrained(out)
    os.remove(os.path.join(out, "tokenizer.model")) if os.path.exists(os.path.join(out, "tokenizer.model")) \
        else None
    return model, out


def test_real_llama2_tokenizer_json_equals_autotokenizer_and_sentencepiece(llama2_json):
    model, path = llama2_json
    ours, sp = load_tokenizer(path), load_tokenizer(model)
    hf = transformers.AutoTokenizer.from_pretrained(path)
    assert isinstance(ours, HFTokenizer) and (ours.bos_id, ours.eos_id) == (1, 2)
    for text in TEXTS:
        assert ours.encode_hf(text) == hf(text)["input_ids"], text
        # Plain text without runs of spaces: sentencepiece itself gives the same ids (transformers' conversion
        # to BPE merges differs from sentencepiece on "a  b" and a leading space; we follow tokenizer.json).
        if "<" not in text and "  " not in text and not text.startswith(" "):
            assert ours.encode(text) == sp.encode(text), text
    text = "Hello wörld, 你好"
    ids, starts, ends = ours.encode_with_offsets(text)
    assert ids.tolist() == ours.encode(text) and ends[-1] == len(text.encode())
    assert [text.encode()[s:e].decode() for s, e in zip(starts[:2], ends[:2], strict=True)] == ["Hello", " w"]
