"""The trainer's command line for a person: `--help` lists every config key (type, default, meaning) and
exits 0, a mistyped key gets the full dotted path it probably meant, and a finished run ends with a short
summary whose next commands work as printed."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import pytest
from tiny_run import TINY_CONFIG
from train_utils import REPO, cli_args, env

TRAIN = [sys.executable, "-m", "vicuna_jax.train"]


def _run(args: list[str], timeout: int = 300, cwd: str = REPO, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=env(), timeout=timeout, check=False,
                          cwd=cwd, **kwargs)


def _key_line(text: str, key: str) -> str:
    table = text[text.index("config keys:"):]  # --helpfull lists other modules' absl flags above it
    lines = [line for line in table.splitlines() if line.split()[:1] == [key]]
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


def test_a_finished_run_prints_a_summary_with_working_next_commands(prepared, tmp_path):
    workdir = str(tmp_path / "run")
    proc = _run(cli_args(prepared, workdir, total_steps=4, eval_every=2, export_hf_at_end=True))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert not any(line.lstrip().startswith("{") for line in out.splitlines()), out  # no JSON dump
    assert "param_shardings" not in out and len(out) < 2500, out

    # The JSON summary is kept in the workdir, with what tests and scripts read from it.
    summary = json.loads(open(os.path.join(workdir, "run_summary.json")).read())
    assert summary["final_step"] == 4 and "embed_tokens" in summary["param_shardings"]
    assert summary["tokens"] > 0 and summary["seconds"] > 0
    assert f"{summary['loss']:.4f}" in out and f"{summary['eval_loss']:.4f}" in out
    assert f"{summary['first_loss']:.4f}" in out
    assert re.search(r"\b4 steps\b", out) and f"{summary['tokens']:,}" in out
    checkpoint = os.path.join(workdir, "checkpoints", "4")
    hf_dir = os.path.join(workdir, "hf")
    assert checkpoint in out and os.path.isdir(checkpoint)
    assert hf_dir in out and os.path.isfile(os.path.join(hf_dir, "config.json"))
    assert os.path.join(workdir, "run_summary.json") in out

    # The loss curve is drawn into the workdir; the metrics file and how to view TensorBoard are named.
    png = os.path.join(workdir, "loss.png")
    assert png in out and open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.join(workdir, "metrics.jsonl") in out
    assert "pip install tensorboard" in out and os.path.join(workdir, "tensorboard") in out

    commands = {}
    for line in out.splitlines():
        if line.strip().startswith("python -m vicuna_jax."):
            command = line.strip().split("  #")[0]
            commands[shlex.split(command)[2]] = command
    assert set(commands) >= {"vicuna_jax.chat", "vicuna_jax.generate", "vicuna_jax.serve",
                             "vicuna_jax.eval.answers", "vicuna_jax.eval.judge"}, out

    def run_printed(name: str, *extra: str, **kwargs) -> subprocess.CompletedProcess:
        args = shlex.split(commands[name])
        return _run([sys.executable, *args[1:], *extra], timeout=300, **kwargs)

    # The printed commands run as printed (plus a short reply, to keep the test quick).
    generated = run_printed("vicuna_jax.generate", "--max_new_tokens=4")
    assert generated.returncode == 0 and generated.stdout, generated.stderr[-3000:]  # a tiny model's 4 tokens
    chatted = run_printed("vicuna_jax.chat", "--max_new_tokens=4", input="Hello\n/exit\n")
    assert chatted.returncode == 0 and "Traceback" not in chatted.stderr, chatted.stderr[-3000:]
    answers = run_printed("vicuna_jax.eval.answers", "--first_n=1", "--max_new_tokens=4", cwd=str(tmp_path))
    assert answers.returncode == 0, answers.stderr[-3000:]
    answer_file = shlex.split(commands["vicuna_jax.eval.answers"])
    answer_file = next(a.split("=", 1)[1] for a in answer_file if a.startswith("--answer_file="))
    assert os.path.isfile(os.path.join(str(tmp_path), answer_file))
    judge = shlex.split(commands["vicuna_jax.eval.judge"])
    question_file = next(a.split("=", 1)[1] for a in judge if a.startswith("--question_file="))
    assert os.path.isfile(question_file)
    assert any(a == f"--answer_files={answer_file}" for a in judge), judge

    # Rerunning the finished run says so (train() returns only the step counts then), and points at the
    # same places; its run_summary.json stays the one of the training run.
    from vicuna_jax.train.summary import finish

    again = finish(workdir, {"start_step": 4, "total_steps": 4, "final_step": 4, "already_complete": True,
                             "hf_dir": hf_dir})
    assert "already complete" in again and hf_dir in again and f"{summary['loss']:.4f}" in again
    assert json.loads(open(os.path.join(workdir, "run_summary.json")).read()) == summary
