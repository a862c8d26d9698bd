"""Every CLI flag (or config key) that takes a name ends a misspelt name with one `error:` line that names
the flag, suggests the closest valid name and lists the valid ones: never a traceback, never usage text.
Names are checked when the flags are parsed, before a model is loaded, so these runs take seconds."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.py")
TOKENIZER = os.path.join(REPO, "vicuna_jax", "assets", "tokenizer.model")
SAMPLE = os.path.join(REPO, "vicuna_jax", "assets", "sharegpt_sample.json")
NO_MODEL = "/nonexistent/model"  # the name is refused before the model would be read

# (module, arguments, what the error line starts with, the suggestion, another valid name it lists)
CASES = [
    ("generate", [f"--model={NO_MODEL}", "--prompt=hi", "--template=vicunna"], "--template", "vicuna_v1.1",
     "none"),
    ("generate", [f"--model={NO_MODEL}", "--prompt=hi", "--dtype=bf16"], "--dtype", "bfloat16", "float32"),
    ("chat", [f"--model={NO_MODEL}", "--template=chatlm"], "--template", "chatml", "llama-3"),
    ("serve", [f"--model={NO_MODEL}", "--template=lama-3"], "--template", "llama-3", "vicuna_v1.1"),
    ("serve", [f"--model={NO_MODEL}", "--dtype=bf16"], "--dtype", "bfloat16", "float32"),
    ("serve", [f"--model={NO_MODEL}", "--log_level=warnings"], "--log_level", "warning", "debug"),
    ("eval.answers", [f"--model={NO_MODEL}", "--answer_file=/tmp/a.jsonl", "--template=vicuna_v11"],
     "--template", "vicuna_v1.1", "hf"),
    ("eval.answers", [f"--model={NO_MODEL}", "--answer_file=/tmp/a.jsonl", "--dtype=bfloat"], "--dtype",
     "bfloat16", "float32"),
    ("eval.answers", [f"--model={NO_MODEL}", "--answer_file=/tmp/a.jsonl", "--categories=codin"],
     "--categories", "coding", "writing"),
    ("eval.answers", [f"--model={NO_MODEL}", "--answer_file=/tmp/a.jsonl", "--category_temperatures=maths=0"],
     "--category_temperatures", "math", "coding"),
    ("eval.judge", ["--mode=singel"], "--mode", "single", "pairwise_all"),
    ("eval.judge", ["--verdicts=tree"], "--verdicts", "three", "five"),
    ("convert", [f"--from_checkpoint={NO_MODEL}", "--to_hf=/tmp/x", "--dtype=bf16"], "--dtype", "bfloat16",
     "float16"),
    ("convert", [f"--from_checkpoint={NO_MODEL}", "--to_hf=/tmp/x", "--template=mistrl"], "--template",
     "mistral", "chatml"),
    ("lora", [f"--adapter={NO_MODEL}", "--out=/tmp/x", "--dtype=bf16"], "--dtype", "bfloat16", "float32"),
    ("lora", [f"--adapter={NO_MODEL}", "--out=/tmp/x", "--template=vicunna"], "--template", "vicuna_v1.1",
     "auto"),
    ("train", [f"--config={TINY}", "--workdir=/tmp/x", "--config.remat_policy=dots_saveabel"],
     "config.remat_policy", "dots_saveable", "nothing_saveable"),
    ("train", [f"--config={TINY}", "--workdir=/tmp/x", "--config.attention=palas"], "config.attention",
     "pallas", "cudnn"),
    ("train", [f"--config={TINY}", "--workdir=/tmp/x", "--config.dtype=bf16"], "config.dtype", "bfloat16",
     "float32"),
    ("train", [f"--config={TINY}", "--workdir=/tmp/x", "--config.model=tinyy"], "config.model", "tiny",
     "llama2_7b"),
    ("train", [f"--config={TINY}", "--workdir=/tmp/x", "--config.data.template=vicunna"],
     "config.data.template", "vicuna_v1.1", "chatml"),
    ("train", [f"--config={TINY}", "--workdir=/tmp/x", "--config.distributed=of"], "config.distributed",
     "off", "auto"),
    ("train", [f"--config={TINY}", "--workdir=/tmp/x", "--config.lora.base_quantization=nf5"],
     "config.lora.base_quantization", "nf4", "int8"),
    ("train", [f"--config={TINY}", "--workdir=/tmp/x", "--config.model_overrides.architecture=qwen"],
     "config.model_overrides.architecture", "qwen2", "mistral"),
    ("train.planner", [f"--config={TINY}", "--simulate=gpux"], "--simulate", "gpu", "tpu"),
    ("train.planner", [f"--config={TINY}", "--policies=dots_saveabel"], "--policies", "dots_saveable",
     "nothing_saveable"),
    ("serve.planner", ["--model=llama2_7x"], "--model", "llama2_7b", "mistral_7b"),
    ("data.prepare", [f"--input={SAMPLE}", "--output_dir=/tmp/x", f"--tokenizer={TOKENIZER}",
                      "--template=vicunna"], "--template", "vicuna_v1.1", "llama-2"),
    ("data.split", [f"--input={SAMPLE}", "--output=/tmp/x.jsonl", f"--tokenizer={TOKENIZER}",
                    "--long_exchange=dorp"], "--long_exchange", "drop", "truncate"),
    ("data.check_template", [f"--tokenizer={TOKENIZER}", "--color=nevr"], "--color", "never", "always"),
    ("data.check_template", [f"--tokenizer={TOKENIZER}", "--template=vicunna"], "--template", "vicuna_v1.1",
     "llama-2"),
    ("bench.train", ["--sections=sped"], "--sections", "speed", "packing"),
    ("bench.lora", ["--models=20n"], "--models", "20m", "100m"),
]


def run_module(module: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", f"vicuna_jax.{module}", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=REPO, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize(("module", "args", "flag", "suggestion", "listed"), CASES,
                         ids=[f"{c[0]}:{c[2]}" for c in CASES])
def test_a_misspelt_name_is_one_error_line_with_a_suggestion(module, args, flag, suggestion, listed):
    proc = run_module(module, *args)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0] == proc.stderr.strip().splitlines()[-1], proc.stderr[-3000:]
    line = errors[0]
    assert line.startswith(f"error: {flag}"), line
    assert "did you mean " in line, line
    assert f"'{suggestion}'" in line.split("did you mean ", 1)[1].split("?", 1)[0], line
    assert listed in line, line
    assert "usage:" not in proc.stderr.lower()


@pytest.mark.parametrize("module", ["generate", "serve", "eval.judge", "data.prepare"])
def test_help_exits_zero(module):
    proc = run_module(module, "--help")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--" in proc.stdout and "Traceback" not in proc.stderr
