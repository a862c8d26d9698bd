"""The bundled sample and tokenizer are reproducible from the scripts that made them."""

from __future__ import annotations

import os
import subprocess
import sys

import sentencepiece as spm

from vicuna_jax.data.prepare import bundled_sample_path
from vicuna_jax.data.tokenizer import bundled_tokenizer_path

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_script(name: str, *args: str) -> None:
    subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", name), *args], check=True, capture_output=True
    )


def test_sample_data_is_regenerated_byte_for_byte(tmp_path):
    out = tmp_path / "sample.json"
    run_script("make_sample_data.py", f"--output={out}")
    assert out.read_bytes() == open(bundled_sample_path(), "rb").read()
    assert os.path.getsize(out) < 1.5e6


def test_tokenizer_training_is_deterministic(tmp_path):
    a, b = tmp_path / "a.model", tmp_path / "b.model"
    run_script("train_tokenizer.py", f"--output={a}")
    run_script("train_tokenizer.py", f"--output={b}")
    assert a.read_bytes() == b.read_bytes()
    sp = spm.SentencePieceProcessor(model_file=str(a))
    bundled = spm.SentencePieceProcessor(model_file=bundled_tokenizer_path())
    assert sp.get_piece_size() == bundled.get_piece_size() == 4096
    text = open(bundled_sample_path(), encoding="utf-8").read()[:20000]
    assert sp.encode(text) == bundled.encode(text)
