"""What a finished training run leaves for a person: `workdir/run_summary.json` (the full summary `train`
returns, parameter shardings included), `workdir/loss.png` (training and validation loss by step, drawn from
metrics.jsonl) and a short text: steps, tokens, time, losses, where the checkpoint and the export are, and
the commands to try the model next, with the paths filled in."""

from __future__ import annotations

import json
import os
import shlex
from typing import Any

import vicuna_jax
from vicuna_jax.checkpoint import latest_step_dir
from vicuna_jax.fileio import atomic_write_json

SUMMARY_FILE = "run_summary.json"
LOSS_PLOT = "loss.png"
QUESTIONS = os.path.join(os.path.dirname(vicuna_jax.__file__), "assets", "questions.jsonl")


def write_summary(workdir: str, summary: dict[str, Any]) -> str:
    """workdir/run_summary.json; a run found already complete keeps the file its training run wrote."""
    path = os.path.join(workdir, SUMMARY_FILE)
    if not (summary.get("already_complete") and os.path.isfile(path)):
        atomic_write_json(path, summary, indent=1, default=str)
    return path


def metrics_rows(workdir: str) -> list[dict[str, Any]]:
    rows = []
    path = os.path.join(workdir, "metrics.jsonl")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill
    return rows


def plot_losses(workdir: str, rows: list[dict[str, Any]]) -> str | None:
    """workdir/loss.png: training loss (every logged step) and validation loss by step; None without rows."""
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", linewidth=1.2)
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="validation loss", linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per target token)")
    ax.set_title(os.path.basename(os.path.normpath(workdir)))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = os.path.join(workdir, LOSS_PLOT)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _last(rows: list[dict[str, Any]], key: str) -> float | None:
    return next((r[key] for r in reversed(rows) if key in r), None)


def summary_text(workdir: str, summary: dict[str, Any], rows: list[dict[str, Any]],
                 plot: str | None) -> str:
    """The lines printed at the end of a run."""
    workdir = os.path.abspath(workdir)
    done, total = summary.get("final_step", 0), summary.get("total_steps", 0)
    lines = []
    if summary.get("already_complete"):
        lines.append(f"This run is already complete: {done} of {total} steps were trained before; nothing "
                     "was changed.")
    else:
        trained = done - summary.get("start_step", 0)
        seconds = summary.get("seconds") or 0.0
        tokens, targets = summary.get("tokens") or 0, summary.get("target_tokens") or 0
        lines.append(f"Trained {trained} steps (step {done} of {total}) in {seconds:,.1f} s, compilation "
                     f"included: {tokens:,} tokens, {targets:,} of them targets.")
        if summary.get("stopped_by"):
            lines.append(f"Stopped by {summary['stopped_by']} (checkpoint saved): run the same command to "
                         "resume.")
    loss = summary.get("loss", _last(rows, "loss"))
    eval_loss = summary.get("eval_loss", _last(rows, "eval_loss"))
    if loss is not None:
        first = summary.get("first_loss")
        start = f"{first:.4f} -> " if first is not None else ""
        held_out = f"; validation loss {eval_loss:.4f}" if eval_loss is not None else ""
        lines.append(f"Training loss {start}{loss:.4f}{held_out}.")
    lines.append("")
    checkpoint = latest_step_dir(os.path.join(workdir, "checkpoints"))
    if checkpoint:
        lines.append(f"  checkpoint   {checkpoint}")
    hf_dir = summary.get("hf_dir")
    if hf_dir and os.path.isfile(os.path.join(hf_dir, "config.json")):
        lines.append(f"  HF export    {hf_dir}  (transformers: AutoModelForCausalLM.from_pretrained)")
    if summary.get("adapter_dir"):
        lines.append(f"  adapter      {summary['adapter_dir']}  (PEFT: PeftModel.from_pretrained)")
    metrics = os.path.join(workdir, "metrics.jsonl")
    lines.append(f"  metrics      {metrics}  (one JSON object per logged step)")
    if plot:
        lines.append(f"  loss curve   {plot}")
    tensorboard = os.path.join(workdir, "tensorboard")
    if os.path.isdir(tensorboard):
        lines.append(f"  TensorBoard  pip install tensorboard && tensorboard --logdir "
                     f"{shlex.quote(tensorboard)}")
    lines.append(f"  summary      {os.path.join(workdir, SUMMARY_FILE)}  (JSON)")
    lines += ["", "Next:", *next_commands(workdir)]
    return "\n".join(lines)


def next_commands(workdir: str) -> list[str]:
    """Commands that use this run's model as printed (a workdir loads its latest checkpoint; a LoRA workdir
    loads onto its recorded base)."""
    model = shlex.quote(workdir)
    model_id = os.path.basename(os.path.normpath(workdir))
    answers = f"answers/{model_id}.jsonl"
    return [
        f"  python -m vicuna_jax.chat --model={model}",
        f"  python -m vicuna_jax.generate --model={model} --prompt='How do I reverse a list in Python?'",
        f"  python -m vicuna_jax.serve --model={model}  # OpenAI API + chat page at http://127.0.0.1:8000/",
        f"  python -m vicuna_jax.eval.answers --model={model} --answer_file={shlex.quote(answers)}",
        f"  python -m vicuna_jax.eval.judge --mode=single --judge_model=gpt-4.1 "
        f"--question_file={shlex.quote(QUESTIONS)} --answer_files={shlex.quote(answers)} "
        f"--output_file={shlex.quote(f'judgments/{model_id}_single.jsonl')}  # needs OPENAI_API_KEY",
    ]


def finish(workdir: str, summary: dict[str, Any]) -> str:
    """Writes run_summary.json and loss.png into the workdir and returns the text to print."""
    write_summary(workdir, summary)
    rows = metrics_rows(workdir)
    plot = plot_losses(workdir, rows)
    return summary_text(workdir, summary, rows, plot)
