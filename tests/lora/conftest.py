"""Fixtures of the LoRA tests: a tiny LLaMA's HF directory, the bundled data prepared once, a LoRA run."""

from __future__ import annotations

import pytest
from lora_utils import random_params, tiny_cfg, train_config


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory) -> str:
    """An HF directory of the tiny random base (fp32)."""
    from vicuna_jax.convert import save_hf

    out = str(tmp_path_factory.mktemp("lora") / "base")
    return save_hf(random_params(0), tiny_cfg(), out, dtype="float32")


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> str:
    """The bundled sample conversations prepared once for 128-token rows."""
    from vicuna_jax.data import bundled_tokenizer_path
    from vicuna_jax.data.prepare import bundled_sample_path, prepare_dataset

    out = str(tmp_path_factory.mktemp("data") / "bundled")
    return prepare_dataset(bundled_sample_path(), out, tokenizer=bundled_tokenizer_path(), max_length=129,
                           validation_fraction=0.05, verbose=False)


@pytest.fixture(scope="session")
def lora_workdir(prepared, tmp_path_factory) -> tuple[str, dict]:
    """A finished LoRA run on a random base (in-process, 8 devices): (workdir, summary)."""
    from vicuna_jax.train import train

    workdir = str(tmp_path_factory.mktemp("lora_run") / "run")
    return workdir, train(train_config(prepared), workdir)
