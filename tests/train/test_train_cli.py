"""The trainer's command line for a person: `--help` lists every config key (type, default, meaning) and
exits 0, and a mistyped key gets the full dotted path it probably meant."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from tiny_run import TINY_CONFIG
from train_utils import REPO, env

TRAIN = [sys.executable, "-m", "vicuna_jax.train"]


def _run(args: list[str], timeout: int = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=env(), timeout=timeout, check=False,
                          cwd=REPO, **kwargs)


def _key_line(text: str, key: str) -> str:
    lines = [line for line in text.splitlines() if line.split()[:1] == [key]]
    assert len(lines) == 1, (key, text[-3000:])
    return lines[0]


def test_every_config_key_has_a_description():
    from vicuna_jax.cli import config_keys
    from vicuna_jax.train.config import KEY_HELP, base_config

    keys = set(config_keys(base_config()))
    assert "optimizer.learning_rate" in keys and "lora.rank" in keys and "model_overrides.num_layers" in keys
    described = set(KEY_HELP)
    assert keys - described == set(), "keys without a description in KEY_HELP"
    assert described - keys == set(), "descriptions of keys that do not exist"
    assert all(text.strip() and "\n" not in text for text in KEY_HELP.values())


@pytest.mark.parametrize("flag", ["--help", "--helpfull"])
def test_help_lists_every_config_key_with_type_default_and_meaning(flag):
    from vicuna_jax.cli import config_keys
    from vicuna_jax.train.config import KEY_HELP, base_config

    proc = _run([*TRAIN, flag], timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--workdir" in proc.stdout and "--config" in proc.stdout
    for key in config_keys(base_config()):
        _key_line(proc.stdout, key)
    line = _key_line(proc.stdout, "optimizer.learning_rate")
    assert re.search(r"\bfloat\b", line) and "2e-05" in line and KEY_HELP["optimizer.learning_rate"] in line
    assert "int" in _key_line(proc.stdout, "model_overrides.num_layers")


def test_help_shows_the_values_of_the_config_file_given():
    proc = _run([*TRAIN, f"--config={TINY_CONFIG}", "--help"], timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "0.002" in _key_line(proc.stdout, "optimizer.learning_rate")  # configs/tiny.py's, not 2e-05
    assert "configs/tiny.py" in proc.stdout


@pytest.mark.parametrize(("override", "meant"), [
    ("leraning_rate", "optimizer.learning_rate"),  # misspelt, and at the wrong level
    ("learning_rate", "optimizer.learning_rate"),  # right name, wrong level
    ("optimizer.leraning_rate", "optimizer.learning_rate"),
    ("seqlen", "seq_len"),
    ("data.templte", "data.template"),
    ("lora.targets", "lora.target_modules"),
    ("model_overrides.num_layer", "model_overrides.num_layers"),
])
def test_a_mistyped_key_suggests_the_full_dotted_path(tmp_path, override, meant):
    proc = _run([*TRAIN, f"--config={TINY_CONFIG}", f"--workdir={tmp_path}/w", f"--config.{override}=1"],
                timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: --config.{override}: no such config key"), lines[0]
    assert f"did you mean --config.{meant}" in lines[0], lines[0]
    assert not os.path.exists(tmp_path / "w")
