"""One-GPU throughput and MFU of a ~1B LLaMA at seq 2048 in bf16, per attention backend x remat policy.

    scripts/bench_gpu.sh            # on a GPU host: the full grid, a table, bench_results/bench_gpu.{md,json}
    scripts/bench_gpu.sh --smoke    # anywhere (CPU included): a tiny model, 2 steps per cell

Every cell runs in its own process (an out-of-memory cell cannot poison the next one) and times vicuna_jax's
real jitted train step, built by `vicuna_jax.train.setup.build` as the trainer builds it (mesh, shardings,
AdamW, donation), on packed batches of
synthetic ShareGPT conversations. MFU = tokens/s x `metrics.flops_per_token(cfg, seq_len)` / `metrics.
peak_flops(device_kind, "bfloat16")`: model FLOPs only (6 N per token plus causal attention), so
recomputation from remat costs MFU, as it should. A backend that cannot run here is reported with the reason
(cuDNN needs an NVIDIA GPU; on CPU the smoke run executes the Pallas GPU kernel in interpret mode, which
checks the plumbing, not the speed).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from vicuna_jax.cli import UserError, unknown_name
from vicuna_jax.fileio import atomic_write_json, atomic_write_text

# ~1.0B parameters: LLaMA proportions (head dim 128, MLP 8/3 E rounded to 256), LLaMA's vocabulary.
MODEL_1B = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_layers=16, num_heads=16,
                num_kv_heads=16, max_position_embeddings=2048, rms_norm_eps=1e-5)
MODEL_SMOKE = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                   num_kv_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5)
BACKENDS = ("xla", "cudnn", "pallas")
POLICIES = ("none", "save_attn_mlp", "dots_with_no_batch_dims_saveable", "nothing_saveable")


def run_cell(spec: dict[str, Any]) -> dict[str, Any]:
    """Times one (attention backend, remat policy) cell in this process; returns its row."""
    import jax
    import jax.numpy as jnp

    from vicuna_jax import parallel
    from vicuna_jax.bench.sharegpt import encoded_conversations, make_batches
    from vicuna_jax.model import attention
    from vicuna_jax.model.config import LlamaConfig
    from vicuna_jax.train.config import RunOptions, TrainConfig
    from vicuna_jax.train.metrics import flops_per_token, peak_flops
    from vicuna_jax.train.optimizer import OptimizerConfig
    from vicuna_jax.train.setup import build

    model = LlamaConfig(**spec["model"])
    backend, seq, rows = spec["attention"], spec["seq_len"], spec["batch_size"]
    platform = jax.default_backend()
    simulate = "gpu" if backend == "pallas" and platform == "cpu" else None
    row = {"attention": backend, "remat": spec["remat"], "device": jax.devices()[0].device_kind,
           "platform": platform, "interpreted": bool(simulate)}
    with attention.simulate_platform(simulate) if simulate else contextlib.nullcontext():
        reason = attention.unavailable_reason(backend, jnp.dtype(spec["dtype"]), model.dim_per_head)
        if reason:
            return {**row, "status": f"skipped: {reason}"}
        cfg = TrainConfig(model=model, optimizer=OptimizerConfig(learning_rate=2e-5, warmup_ratio=0.0),
                          run=RunOptions(dtype=spec["dtype"], param_dtype="float32", scan_layers=True,
                                         remat_policy=spec["remat"], attention=backend),
                          seq_len=seq, batch_size=rows, loss_chunk_size=spec["loss_chunk"])
        setup = build(cfg, parallel.make_mesh(1, 1, 1, devices=jax.devices()[:1]), 1000)
        examples = encoded_conversations(max(40, 3 * rows * seq // 1000), seq + 1)
        batches = make_batches(examples, rows, seq, packing=True)
        if not batches:
            raise UserError("not enough synthetic conversations for one batch")
        state = setup.init_state()
        device_batches = [setup.global_batch(b) for b in batches[:4]]
        with jax.set_mesh(setup.mesh):
            start = time.perf_counter()
            compiled = setup.train_step.lower(state, device_batches[0]).compile()
            compile_s = time.perf_counter() - start
            memory = compiled.memory_analysis()
            times = []
            for i in range(spec["warmup"] + spec["steps"]):
                start = time.perf_counter()
                state, metrics = compiled(state, device_batches[i % len(device_batches)])
                loss = float(metrics.loss)  # waits for the step
                if i >= spec["warmup"]:
                    times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    tokens_per_s = rows * seq / seconds
    peak = peak_flops(row["device"], spec["dtype"])
    mfu = tokens_per_s * flops_per_token(model, seq) / peak if peak else None
    return {**row, "status": "ok", "step_s": seconds, "tokens_per_s": tokens_per_s, "mfu": mfu, "loss": loss,
            "compile_s": compile_s, "temp_gib": memory.temp_size_in_bytes / 2**30,
            "args_gib": memory.argument_size_in_bytes / 2**30}


def _cell_subprocess(spec: dict[str, Any], timeout: int) -> dict[str, Any]:
    row = {"attention": spec["attention"], "remat": spec["remat"]}
    try:
        proc = subprocess.run([sys.executable, "-m", "vicuna_jax.bench.gpu", "--cell", json.dumps(spec)],
                              capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {**row, "status": f"timeout after {timeout} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    err = proc.stderr.strip().splitlines()
    oom = any("RESOURCE_EXHAUSTED" in x or "out of memory" in x.lower() for x in err)
    return {**row, "status": "out of memory" if oom else f"failed: {(err or ['?'])[-1][:160]}"}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| attention | remat | step (s) | tokens/s | MFU | temp GiB | compile (s) | status |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['attention']} | {r['remat']} | | | | | | {r['status']} |")
            continue
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
        note = "ok (Pallas interpreted on CPU)" if r.get("interpreted") else "ok"
        lines.append(f"| {r['attention']} | {r['remat']} | {r['step_s']:.3f} | {r['tokens_per_s']:,.0f} "
                     f"| {mfu} | {r['temp_gib']:.2f} | {r['compile_s']:.1f} | {note} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    from absl import flags

    f = flags.FLAGS
    if f.cell:  # child process: one cell, one JSON line
        print(json.dumps(run_cell(json.loads(f.cell))), flush=True)
        return
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {argv[1:]}")
    smoke = f.smoke
    base = {"model": MODEL_SMOKE if smoke else MODEL_1B, "seq_len": f.seq_len or (128 if smoke else 2048),
            "batch_size": f.batch_size or (2 if smoke else 8), "dtype": "bfloat16",
            "steps": f.steps or (2 if smoke else 10), "warmup": 1 if smoke else 2, "loss_chunk": f.loss_chunk}
    backends = [b for b in f.attention.split(",") if b]
    policies = [p for p in f.remat.split(",") if p]
    for b in backends:
        if b not in BACKENDS:
            raise UserError(f"--attention: {unknown_name('backend', b, BACKENDS)}")
    from vicuna_jax.model.llama import REMAT_POLICIES  # no device is touched: cells run in subprocesses

    for p in policies:
        if p not in REMAT_POLICIES:
            raise UserError(f"--remat: {unknown_name('policy', p, REMAT_POLICIES)}")
    rows = []
    for backend in backends:
        for policy in policies:
            row = _cell_subprocess({**base, "attention": backend, "remat": policy}, f.cell_timeout)
            rows.append(row)
            print(f"{backend:7s} {policy:34s} {row['status']}"
                  + (f"  {row['tokens_per_s']:,.0f} tok/s" if row["status"] == "ok" else ""), file=sys.stderr)
    from vicuna_jax.model.config import LlamaConfig

    device = next((r["device"] for r in rows if "device" in r), "?")
    cfg = LlamaConfig(**base["model"])
    header = (f"# GPU benchmark ({datetime.date.today().isoformat()}): {device}\n\n"
              f"LLaMA {cfg.num_params() / 1e9:.2f}B (hidden {cfg.hidden_size}, {cfg.num_layers} layers, "
              f"{cfg.num_heads} heads, vocab {cfg.vocab_size}), batch {base['batch_size']} x "
              f"{base['seq_len']} packed, bf16 compute / fp32 params + AdamW, loss_chunk "
              f"{base['loss_chunk']}, {base['steps']} timed steps (median)"
              f"{' - SMOKE RUN' if smoke else ''}.\n")
    text = header + "\n" + table(rows) + "\n"
    os.makedirs(f.out, exist_ok=True)
    name = "bench_gpu_smoke" if smoke else "bench_gpu"
    atomic_write_text(os.path.join(f.out, f"{name}.md"), text)
    atomic_write_json(os.path.join(f.out, f"{name}.json"), {"config": base, "rows": rows}, indent=1)
    print(text)


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_bool("smoke", False, "Tiny model, 2 steps per cell: a plumbing check that runs on CPU.")
    flags.DEFINE_string("attention", ",".join(BACKENDS), "Comma list of attention backends.")
    flags.DEFINE_string("remat", ",".join(POLICIES), "Comma list of remat policies.")
    flags.DEFINE_integer("batch_size", 0, "Rows per step (default 8; smoke 2).")
    flags.DEFINE_integer("seq_len", 0, "Tokens per row (default 2048; smoke 128).")
    flags.DEFINE_integer("steps", 0, "Timed steps per cell (default 10; smoke 2).")
    flags.DEFINE_integer("loss_chunk", 512, "config.loss_chunk_size.")
    flags.DEFINE_integer("cell_timeout", 900, "Seconds before a cell is given up.")
    flags.DEFINE_string("out", "bench_results", "Directory for bench_gpu.md / bench_gpu.json.")
    flags.DEFINE_string("cell", "", "Internal: run one cell from this JSON spec and print its row.")


if __name__ == "__main__":
    from vicuna_jax.cli import run

    run(main, _define_flags)
