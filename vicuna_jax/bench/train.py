"""Side-by-side training benchmark: vicuna_jax's jitted train step vs Hugging Face transformers + torch.

    python scripts/bench_train.py [--models=20m,100m] [--steps=6] [--out=bench_results]
    python scripts/bench_train.py --sections=packing          # packed vs FastChat pad-to-2048, our step
    python scripts/bench_train.py --models=20m --jax='loss=step;loss=fused' --profile   # knob study

Same LLaMA config, same initial weights, same packed batch of synthetic ShareGPT conversations, same AdamW
hyperparameters (grad clip 1.0, no weight decay: FastChat's recipe) and the same token-weighted masked loss
(sum over target tokens / their number), fp32 on CPU. Each side runs in its own worker process
(`bench.worker`); the parent alternates single steps between them (ABBA order), so load from other programs
on a shared machine falls on both. Warm-up steps (compilation included) are excluded; the tables report the
median step, tokens/s (all B x T slots; the batch is the same for both sides), the ratio to the first torch
side, CPU seconds per step (all threads), peak resident memory, and compilations during the timed steps
(must be 0: one compile per shape). Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from typing import Any

import numpy as np

from vicuna_jax.bench.report import SPEED_NOTES, machine, model_lines, speed_table
from vicuna_jax.bench.sides import BENCH_MODELS, OPTIMIZER, Worker, worker_env
from vicuna_jax.cli import UserError, unknown_name
from vicuna_jax.fileio import atomic_write_json, atomic_write_text

# Our best CPU settings, found with this benchmark (see the README's performance section): layers in a Python
# loop (no scan: XLA:CPU copies each layer's weights out of the stacked arrays either way, and scan adds
# stacked residual buffers), the fused loss on 128-position chunks, and YNNPACK for dots only (its
# elementwise/reduce fusions are slower than XLA's own on this CPU).
JAX_DEFAULT = dict(scan=False, remat="none", loss_chunk=128, dtype="float32",
                   xla_flags="--xla_cpu_experimental_ynn_fusion_type=individual_dot")
# Named starting points for --jax: "default_flags" = the same without the experimental XLA flag (what
# `python -m vicuna_jax.train --config=configs/tiny.py` runs with).
JAX_PRESETS = {"best": {}, "default_flags": dict(xla_flags="")}
TORCH_DEFAULT = dict(
    threads=os.cpu_count() or 1, attention="sdpa", fused_adamw=True, compile=False, dtype="float32"
)


def parse_variants(text: str, defaults: dict[str, Any],
                   presets: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """'k=v,k=v;k=v' -> one dict per ';' part over `defaults`; an item may name a preset ('' = defaults)."""
    presets = presets or {}
    out = []
    for part in text.split(";"):
        spec, name = dict(defaults), "best" if "best" in presets else "default"
        for item in filter(None, (s.strip() for s in part.split(","))):
            if item in ("default", *presets):
                spec.update(presets.get(item, {}))
                name = item if item != "default" else name
                continue
            key, eq, value = item.partition("=")
            if not eq or key not in defaults:
                raise UserError(f"bad variant item {item!r}; keys: {sorted(defaults)}, "
                                f"presets: {sorted(presets)}")
            kind = type(defaults[key])
            spec[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
        spec["name"] = name
        out.append(spec)
    return out


def describe(spec: dict[str, Any], defaults: dict[str, Any], presets: dict[str, dict[str, Any]] | None = None
             ) -> str:
    """The variant's preset name plus the settings that differ from that preset."""
    base = {**defaults, **(presets or {}).get(spec.get("name", ""), {})}
    diff = [f"{k}={v}" for k, v in spec.items() if k in defaults and v != base[k]]
    return ",".join([spec.get("name", "default"), *diff])


def bench_batch(seq_len: int, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """One packed batch of synthetic ShareGPT conversations (the real encode + pack path)."""
    from vicuna_jax.bench.sharegpt import encoded_conversations, make_batches

    examples = encoded_conversations(max(64, 24 * batch_size), seq_len + 1, seed=seed)
    return make_batches(examples, batch_size, seq_len, packing=True, seed=seed)[0]


def summarise(steps: list[dict[str, Any]], tokens: dict[str, float]) -> dict[str, Any]:
    seconds = [s["seconds"] for s in steps]
    med = statistics.median(seconds)
    return {
        "median_s": med,
        "min_s": min(seconds),
        "max_s": max(seconds),
        "steps": len(steps),
        "cpu_s": statistics.median(s["cpu_seconds"] for s in steps),
        "tokens_per_s": tokens["slots"] / med,
        "nonpad_tokens_per_s": tokens["nonpad"] / med,
        "target_tokens_per_s": tokens["targets"] / med,
        "compiles_timed": sum(s.get("compiles", 0) for s in steps),
    }


def run_model(
    name: str,
    jax_specs: list[dict[str, Any]],
    torch_specs: list[dict[str, Any]],
    steps: int,
    warmup: int,
    seq_len: int,
    batch_size: int | None,
    tmp: str,
    log: Any,
) -> dict[str, Any]:
    """Alternating timed steps of every side for one model; returns the per-side summaries."""
    model, default_batch = BENCH_MODELS[name]
    batch_size = batch_size or default_batch
    batch = bench_batch(seq_len, batch_size)
    batch_path = os.path.join(tmp, f"{name}_batch.npz")
    np.savez(batch_path, **batch)
    weights = os.path.join(tmp, f"{name}_weights")
    tokens = {
        "slots": float(batch_size * seq_len),
        "nonpad": float((batch["segment_ids"] > 0).sum()),
        "targets": float(batch["loss_mask"].sum()),
    }
    common = dict(model=model, optimizer=OPTIMIZER, batch=batch_path, seed=0, total_steps=10_000)
    sides: list[tuple[Worker, dict[str, Any]]] = []
    try:
        for i, spec in enumerate(jax_specs):
            label = f"vicuna_jax [{describe(spec, JAX_DEFAULT, JAX_PRESETS)}]"
            w = Worker(label, worker_env(spec["xla_flags"]), os.path.join(tmp, f"{name}_jax{i}.log"))
            full = {**common, **spec, "side": "jax", "export_weights": weights if i == 0 else ""}
            info = w.call("setup", spec=full)
            sides.append((w, {"label": label, "side": "jax", "spec": spec, "setup": info}))
            log(f"  {label}: set up ({info['num_params'] / 1e6:.1f}M params)")
        for i, spec in enumerate(torch_specs):
            label = f"transformers+torch [{describe(spec, TORCH_DEFAULT)}]"
            w = Worker(label, worker_env(), os.path.join(tmp, f"{name}_torch{i}.log"))
            info = w.call("setup", spec={**common, **spec, "side": "torch", "weights": weights})
            sides.append((w, {"label": label, "side": "torch", "spec": spec, "setup": info}))
            log(f"  {label}: set up")
        for w, rec in sides:
            rec["warmup"] = [w.call("step") for _ in range(warmup)]
            rec["peak_incl_compile_mib"] = w.call("reset_peak")["VmHWM"]
            log(f"  {rec['label']}: warm-up {[round(s['seconds'], 2) for s in rec['warmup']]} s")
        timed: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(sides))}
        load_before = os.getloadavg()
        for k in range(steps):
            order = range(len(sides)) if k % 2 == 0 else reversed(range(len(sides)))
            for i in order:
                timed[i].append(sides[i][0].call("step"))
            log(f"  step {k + 1}/{steps}: " + ", ".join(f"{timed[i][-1]['seconds']:.2f}s" for i in timed))
        load_after = os.getloadavg()
        results = []
        for i, (w, rec) in enumerate(sides):
            stats = w.call("stats")
            results.append(
                {
                    **rec,
                    **summarise(timed[i], tokens),
                    "peak_timed_mib": stats["VmHWM"],
                    "rss_setup_mib": rec["setup"].get("VmRSS"),
                    "first_loss": rec["warmup"][0]["loss"],
                    "step_cache_size": stats.get("step_cache_size"),
                    "xla_argument_mib": stats.get("xla_argument_mib"),
                    "xla_temp_mib": stats.get("xla_temp_mib"),
                    "raw": timed[i],
                }
            )
    finally:
        for w, _ in sides:
            w.close()
    base = next(r for r in results if r["side"] == "torch") if torch_specs else None
    for r in results:
        r["ratio"] = r["tokens_per_s"] / base["tokens_per_s"] if base else None
    first = {r["side"]: r["first_loss"] for r in reversed(results)}
    return {
        "model": name,
        "config": model,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "tokens": tokens,
        "num_params": results[0]["setup"]["num_params"],
        "load_before": load_before,
        "load_after": load_after,
        "first_step_loss": first,
        "sides": results,
    }


def main(argv: list[str]) -> None:
    from absl import flags

    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    sections = [s for s in f.sections.split(",") if s]
    unknown = [s for s in sections if s not in ("speed", "packing")]
    if unknown:
        raise UserError(f"--sections: {unknown_name('section', unknown[0], ('speed', 'packing'))}")
    models = [m for m in f.models.split(",") if m]
    for m in models:
        if m not in BENCH_MODELS:
            raise UserError(f"--models: {unknown_name('model', m, sorted(BENCH_MODELS))}")
    jax_specs = parse_variants(f.jax, JAX_DEFAULT, JAX_PRESETS)
    torch_specs = parse_variants(f.torch, TORCH_DEFAULT) if f.torch != "none" else []
    os.makedirs(f.out, exist_ok=True)
    report: dict[str, Any] = {"machine": machine(), "argv": sys.argv[1:]}
    md = [
        f"# Training benchmark ({report['machine']['date']})",
        "",
        f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, "
        f"{report['machine']['memory_gib']} GiB; load average at start {os.getloadavg()[0]:.2f}.",
        "",
    ]

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        if "speed" in sections:
            runs = []
            for name in models:
                log(f"{name}: {f.steps} timed steps per side after {f.warmup} warm-up")
                runs.append(
                    run_model(
                        name, jax_specs, torch_specs, f.steps, f.warmup, f.seq_len, f.batch_size, tmp, log
                    )
                )
            report["speed"] = runs
            md += [
                "## Step time, vicuna_jax vs transformers + torch (fp32, CPU)",
                "",
                speed_table(runs),
                "",
                *model_lines(runs),
                "",
                SPEED_NOTES,
                "",
            ]
            if runs and runs[0]["sides"]:
                s = runs[0]["sides"][0]
                md += [
                    f"Versions: jax {s['setup'].get('jax')}"
                    + "".join(
                        f", torch {r['setup']['torch']}, transformers {r['setup']['transformers']}"
                        for r in runs[0]["sides"][-1:]
                        if r["side"] == "torch"
                    ),
                    "",
                ]
        if "packing" in sections:
            from vicuna_jax.bench.packing import packing_table, run_packing

            log("packing: packed vs pad-to-2048 batches through our train step")
            packing = run_packing(
                f.packing_model,
                f.packing_seq_len,
                f.packing_batch,
                f.packing_steps,
                f.packing_conversations,
                jax_specs[0],
                tmp,
                log,
            )
            report["packing"] = packing
            md += [
                "## Packing: useful tokens per slot and effective throughput",
                "",
                packing_table(packing),
                "",
            ]
        if f.profile and "speed" in sections:
            from vicuna_jax.bench.profile import format_profile

            prof = profile_jax(models[0], jax_specs[0], f.seq_len, f.batch_size, tmp)
            report["profile"] = prof
            md += [
                "## Profile of one vicuna_jax step (top XLA ops)",
                "",
                "```",
                format_profile(prof),
                "```",
                "",
            ]
    md.append(f"Load average at end {os.getloadavg()[0]:.2f}.")
    text = "\n".join(md) + "\n"
    stem = "bench_train" if "speed" in sections else "bench_packing"  # packing alone keeps the speed file
    atomic_write_text(os.path.join(f.out, f"{stem}.md"), text)
    atomic_write_json(os.path.join(f.out, f"{stem}.json"), report, indent=1, default=str)
    print(text)


def profile_jax(
    name: str, spec: dict[str, Any], seq_len: int, batch_size: int | None, tmp: str
) -> dict[str, Any]:
    """One profiled step of the first JAX side (after warm-up), with the top ops by time."""
    model, default_batch = BENCH_MODELS[name]
    batch_path = os.path.join(tmp, f"{name}_batch.npz")
    w = Worker("profile", worker_env(spec["xla_flags"]), os.path.join(tmp, "profile.log"))
    try:
        w.call(
            "setup",
            spec={
                "model": model,
                "optimizer": OPTIMIZER,
                "batch": batch_path,
                "seed": 0,
                "total_steps": 10_000,
                **spec,
                "side": "jax",
            },
        )
        w.call("step")
        w.call("step")
        return w.call("profile")
    finally:
        w.close()


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("sections", "speed", "Comma list: speed (vs transformers+torch), packing.")
    flags.DEFINE_string("models", "20m,100m", f"Comma list of {sorted(BENCH_MODELS)}.")
    flags.DEFINE_integer("steps", 6, "Timed steps per side (after warm-up).")
    flags.DEFINE_integer("warmup", 2, "Untimed steps per side first (the first one compiles).")
    flags.DEFINE_integer("seq_len", 512, "Tokens per row.")
    flags.DEFINE_integer("batch_size", None, "Rows per batch (default: per model, see BENCH_MODELS).")
    flags.DEFINE_string(
        "jax",
        "best;default_flags",
        "vicuna_jax sides, ';'-separated, each 'k=v,...' over "
        f"{JAX_DEFAULT} or over a preset {sorted(JAX_PRESETS)} named first (xla_flags is passed as "
        "XLA_FLAGS).",
    )
    flags.DEFINE_string(
        "torch", "default", f"torch sides, ';'-separated 'k=v,...' over {TORCH_DEFAULT}, or 'none'."
    )
    flags.DEFINE_bool("profile", False, "Also profile one step of the first vicuna_jax side.")
    flags.DEFINE_string("out", "bench_results", "Directory for bench_train.{md,json} (bench_packing.* when "
                        "only the packing section runs).")
    flags.DEFINE_string("packing_model", "20m", "Model for the packing section.")
    flags.DEFINE_integer("packing_seq_len", 2048, "Row length for the packing section (FastChat: 2048).")
    flags.DEFINE_integer("packing_batch", 2, "Rows per batch in the packing section.")
    flags.DEFINE_integer("packing_steps", 3, "Timed steps per batching in the packing section.")
    flags.DEFINE_integer("packing_conversations", 600, "Synthetic conversations for the packing section.")


if __name__ == "__main__":
    from vicuna_jax.cli import run

    run(main, _define_flags)
