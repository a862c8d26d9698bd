"""LoRA training benchmark: our LoRA (and QLoRA) step vs our full fine-tuning step, and vs Hugging Face
transformers + peft LoRA, on the same model, weights, packed batch, rank and target modules.

    python scripts/bench_lora.py [--models=20m,100m] [--rank=16] [--targets=all] [--steps=6] [--out=DIR]

The sides run in `bench.worker` processes with alternating steps, as `bench.train` runs them (see there):
fp32 on CPU, AdamW with FastChat's settings, dropout 0.05 on the adapters (both frameworks). The table
reports the median step, tokens/s (all B x T slots), each side's ratio to our full step and to
transformers + peft, and peak resident memory during the timed steps. Measured here, never asserted.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

from vicuna_jax.bench.report import machine
from vicuna_jax.bench.sides import BENCH_MODELS
from vicuna_jax.bench.train import JAX_DEFAULT, TORCH_DEFAULT, run_model
from vicuna_jax.cli import UserError, unknown_name
from vicuna_jax.fileio import atomic_write_json, atomic_write_text
from vicuna_jax.lora.config import parse_targets


def sides(rank: int, targets: tuple[str, ...], dropout: float, xla_flags: str
          ) -> tuple[list[str], list[dict[str, Any]], list[dict[str, Any]]]:
    """(names, our specs, torch specs): full, LoRA and QLoRA-nf4 steps of ours; full and peft LoRA."""
    lora = {"rank": rank, "alpha": 2.0 * rank, "dropout": dropout, "target_modules": list(targets),
            "base_dtype": "float32"}
    ours = {**JAX_DEFAULT, "xla_flags": xla_flags, "name": "best"}
    qlora = {**lora, "base_quantization": "nf4", "quant_block_size": 16}  # 16 divides the 20M's MLP (688)
    jax_specs = [ours, {**ours, "lora": lora}, {**ours, "lora": qlora}]
    torch_specs = [{**TORCH_DEFAULT, "name": "default"}, {**TORCH_DEFAULT, "name": "default", "lora": lora}]
    names = ["vicuna_jax full", f"vicuna_jax LoRA r{rank}", f"vicuna_jax QLoRA-nf4 r{rank}",
             "transformers full", f"transformers + peft LoRA r{rank}"]
    return names, jax_specs, torch_specs


def table(run: dict[str, Any], names: list[str]) -> str:
    rows = run["sides"]
    full, peft = rows[0], rows[4]
    lines = ["| side | trainable params | median step (s) | tokens/s | vs our full | vs peft LoRA | "
             "peak RSS (MiB) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in zip(names, rows, strict=True):
        lines.append(f"| {name} | {r['setup'].get('trainable_params', 0) / 1e6:.2f}M | {r['median_s']:.3f} | "
                     f"{r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / full['tokens_per_s']:.2f}x | "
                     f"{r['tokens_per_s'] / peft['tokens_per_s']:.2f}x | {r['peak_timed_mib']:,.0f} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    from absl import flags

    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    models = [m for m in f.models.split(",") if m]
    for m in models:
        if m not in BENCH_MODELS:
            raise UserError(f"--models: {unknown_name('model', m, sorted(BENCH_MODELS))}")
    targets = parse_targets(f.targets, "--targets")
    names, jax_specs, torch_specs = sides(f.rank, targets, f.dropout, f.xla_flags)
    os.makedirs(f.out, exist_ok=True)
    report: dict[str, Any] = {"machine": machine(), "argv": sys.argv[1:], "runs": []}
    m = report["machine"]
    md = [f"# LoRA training benchmark ({m['date']})", "",
          f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; load average at start "
          f"{os.getloadavg()[0]:.2f}. Rank {f.rank}, alpha {2 * f.rank}, dropout {f.dropout}, targets "
          f"{','.join(targets)}; fp32; {f.steps} timed steps per side after {f.warmup} warm-up.", ""]

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            log(f"{name}: {f.steps} timed steps per side after {f.warmup} warm-up")
            run = run_model(name, jax_specs, torch_specs, f.steps, f.warmup, f.seq_len, None, tmp, log)
            report["runs"].append(run)
            md += [f"## {name}: {run['num_params'] / 1e6:.1f}M parameters, batch {run['batch_size']} x "
                   f"{run['seq_len']} (load {run['load_before'][0]:.1f} -> {run['load_after'][0]:.1f})", "",
                   table(run, names), ""]
    text = "\n".join(md) + "\n"
    atomic_write_text(os.path.join(f.out, "bench_lora.md"), text)
    atomic_write_json(os.path.join(f.out, "bench_lora.json"), report, indent=1, default=str)
    print(text)


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("models", "20m,100m", f"Comma list of {sorted(BENCH_MODELS)}.")
    flags.DEFINE_integer("rank", 16, "LoRA rank (alpha = 2 x rank).")
    flags.DEFINE_string("targets", "all", "Target modules: q,k,v,o,gate,up,down or all.")
    flags.DEFINE_float("dropout", 0.05, "LoRA dropout (both frameworks).")
    flags.DEFINE_integer("steps", 6, "Timed steps per side (after warm-up).")
    flags.DEFINE_integer("warmup", 2, "Untimed steps per side first (the first one compiles).")
    flags.DEFINE_integer("seq_len", 512, "Tokens per row.")
    flags.DEFINE_string("xla_flags", JAX_DEFAULT["xla_flags"], "XLA_FLAGS of our sides.")
    flags.DEFINE_string("out", "bench_results", "Directory for bench_lora.{md,json}.")


if __name__ == "__main__":
    from vicuna_jax.cli import run

    run(main, _define_flags)
