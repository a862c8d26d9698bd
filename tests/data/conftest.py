"""Fixtures for the data tests: the real LLaMA-2 tokenizer (optional), the bundled one, HF tokenizer dirs."""

from __future__ import annotations

import json
import os

import pytest

from vicuna_jax.data import load_tokenizer
from vicuna_jax.data.tokenizer import bundled_tokenizer_path

LLAMA_ENV = "VICUNA_JAX_LLAMA_TOKENIZER"


def llama_tokenizer_path() -> str | None:
    path = os.environ.get(LLAMA_ENV)
    return path if path and os.path.isfile(path) else None


@pytest.fixture(scope="session")
def llama_tok():
    """The real LLaMA-2 sentencepiece model; its tests skip when the env var or the file is missing."""
    path = llama_tokenizer_path()
    if path is None:
        pytest.skip(f"{LLAMA_ENV} is unset or does not name a file")
    return load_tokenizer(path)


@pytest.fixture(scope="session")
def small_tok():
    return load_tokenizer(bundled_tokenizer_path())


def write_hf_dir(directory: str, model_path: str, chat_template: str | None = None) -> str:
    """A minimal HF tokenizer directory (transformers 5 needs the config next to tokenizer.model)."""
    os.makedirs(directory, exist_ok=True)
    with open(model_path, "rb") as src, open(os.path.join(directory, "tokenizer.model"), "wb") as dst:
        dst.write(src.read())
    from vicuna_jax.data.hf_tokenizer import sentencepiece_tokenizer_config

    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    config = sentencepiece_tokenizer_config(specials, chat_template)
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    return directory


@pytest.fixture(scope="session")
def hf_auto():
    """Factory: transformers.AutoTokenizer for a sentencepiece model (skips without transformers)."""
    transformers = pytest.importorskip("transformers")
    cache: dict = {}

    def make(tok, tmp_root, chat_template=None):
        key = (tok.model_path, chat_template)
        if key not in cache:
            d = write_hf_dir(os.path.join(tmp_root, f"hf{len(cache)}"), tok.model_path, chat_template)
            cache[key] = transformers.AutoTokenizer.from_pretrained(d)
        return cache[key]

    return make


SAMPLE_MAX_LENGTH = 256


@pytest.fixture(scope="session")
def prepared_sample(tmp_path_factory):
    """The bundled raw sample prepared once per session (bundled tokenizer, max_length 256)."""
    from vicuna_jax.data.prepare import bundled_sample_path, prepare_dataset

    sample = bundled_sample_path()
    out = str(tmp_path_factory.mktemp("prepared"))
    return prepare_dataset(
        sample,
        out,
        tokenizer=bundled_tokenizer_path(),
        max_length=SAMPLE_MAX_LENGTH,
        validation_fraction=0.05,
        verbose=False,
    )
