"""Markdown for the training benchmark: the machine, the speed table, the per-model lines, the notes."""

from __future__ import annotations

import datetime
import os
import platform
from typing import Any


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gb, 1),
        "python": platform.python_version(),
        "date": datetime.date.today().isoformat(),
    }


def speed_table(runs: list[dict[str, Any]]) -> str:
    lines = [
        "| model | side | median step (s) | min (s) | tokens/s | ratio | CPU s/step | peak RSS timed (MiB) | "
        "peak RSS incl. compile (MiB) | XLA state+batch / temps (MiB) | compiles in timed steps |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        for r in run["sides"]:
            ratio = f"{r['ratio']:.2f}x" if r["ratio"] else "-"
            xla = (f"{r['xla_argument_mib']:,.0f} / {r['xla_temp_mib']:,.0f}"
                   if r.get("xla_temp_mib") is not None else "-")
            cache = f" (cache {r['step_cache_size']})" if r["side"] == "jax" else ""
            compiles = f"{r['compiles_timed']}{cache}"
            lines.append(
                f"| {run['model']} | {r['label']} | {r['median_s']:.3f} | {r['min_s']:.3f} | "
                f"{r['tokens_per_s']:,.0f} | {ratio} | {r['cpu_s']:.2f} | {r['peak_timed_mib']:,.0f} | "
                f"{r['peak_incl_compile_mib']:,.0f} | {xla} | {compiles} |"
            )
    return "\n".join(lines)


def model_lines(runs: list[dict[str, Any]]) -> list[str]:
    out = []
    for run in runs:
        c = run["config"]
        losses = ", ".join(f"{k} {v:.5f}" for k, v in run["first_step_loss"].items())
        out.append(
            f"- {run['model']}: {run['num_params'] / 1e6:.1f}M params (vocab {c['vocab_size']}, hidden "
            f"{c['hidden_size']}, MLP {c['intermediate_size']}, {c['num_layers']} layers, {c['num_heads']} "
            f"heads), batch {run['batch_size']} x {run['seq_len']} = {run['tokens']['slots']:.0f} slots "
            f"({run['tokens']['nonpad']:.0f} non-pad, {run['tokens']['targets']:.0f} targets); "
            f"first-step loss {losses}; load avg {run['load_before'][0]:.2f} -> {run['load_after'][0]:.2f}"
        )
    return out


SPEED_NOTES = (
    "tokens/s counts every slot of the batch (both sides train on the identical batch). ratio = tokens/s "
    "over the first transformers+torch side. CPU s/step = process CPU time of all threads (robust to other "
    "load). "
    "Peak RSS = VmHWM of the side's worker process: 'timed' is reset after warm-up (steady-state training "
    "memory: weights, AdamW state, gradients, activations, framework), 'incl. compile' covers setup and "
    "compilation too (freed heap is handed back with malloc_trim before the reset). XLA state+batch / temps: "
    "the compiled step's own account of its buffers. Compiles in timed steps must be 0 (one compile per "
    "shape); cache = entries in the jitted step's cache. First-step loss: both sides start from the same "
    "weights, so they must agree."
)
