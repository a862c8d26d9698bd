"""Packing benchmark: useful tokens per slot and effective throughput of packed vs FastChat-padded batches.

FastChat pads every conversation to `model_max_length` (2048) and trains one per row; vicuna_jax packs several
conversations per row (best-fit decreasing within shuffled windows) with segment ids, so attention and targets
never cross a conversation. On the synthetic ShareGPT-like distribution of `bench.sharegpt` both are planned
over the same conversations; then our real jitted train step runs batches of each kind, alternating, on the
same shapes ([B, seq_len]: one compile). Effective tokens/s = target tokens (assistant replies, the tokens
that train) per second. The step costs about the same for both layouts (the fused loss skips LM-head work on
non-targets, so padded batches are a little cheaper), so the gain is close to the ratio of targets per slot.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from typing import Any

import numpy as np


def _stats(batches: list[dict[str, np.ndarray]]) -> dict[str, float]:
    slots = sum(b["segment_ids"].size for b in batches)
    return {"batches": len(batches), "slots": float(slots),
            "nonpad_per_slot": sum(float((b["segment_ids"] > 0).sum()) for b in batches) / slots,
            "targets_per_slot": sum(float(b["loss_mask"].sum()) for b in batches) / slots,
            "targets_per_batch": sum(float(b["loss_mask"].sum()) for b in batches) / len(batches)}


def run_packing(model_name: str, seq_len: int, batch_size: int, steps: int, conversations: int,
                jax_spec: dict[str, Any], tmp: str, log: Callable[[str], None]) -> dict[str, Any]:
    from vicuna_jax.bench.sharegpt import encoded_conversations, make_batches
    from vicuna_jax.bench.sides import BENCH_MODELS, OPTIMIZER, Worker, worker_env

    examples = encoded_conversations(conversations, seq_len + 1)
    lengths = np.array([len(ids) for ids, _ in examples])
    layouts = {"packed (vicuna_jax)": make_batches(examples, batch_size, seq_len, packing=True),
               f"pad to {seq_len} (FastChat)": make_batches(examples, batch_size, seq_len, packing=False)}
    result: dict[str, Any] = {
        "model": model_name, "seq_len": seq_len, "batch_size": batch_size, "conversations": conversations,
        "pieces": len(examples), "tokens_mean": float(lengths.mean()),
        "tokens_p50": float(np.median(lengths)), "tokens_p99": float(np.percentile(lengths, 99)),
        "layouts": {}}
    paths, index = [], {}
    for name, batches in layouts.items():
        result["layouts"][name] = _stats(batches)
        index[name] = []
        for b in batches[:steps]:
            index[name].append(len(paths))
            paths.append(os.path.join(tmp, f"packing_{len(paths)}.npz"))
            np.savez(paths[-1], **b)
    model, _ = BENCH_MODELS[model_name]
    model = {**model, "max_position_embeddings": max(model["max_position_embeddings"], seq_len)}
    w = Worker("packing", worker_env(jax_spec["xla_flags"]), os.path.join(tmp, "packing.log"))
    try:
        w.call("setup", spec={"model": model, "optimizer": OPTIMIZER, "batch": paths, "seed": 0,
                              "total_steps": 10_000, **jax_spec, "side": "jax"})
        w.call("step", index=0)  # compile (one shape for both layouts)
        timed: dict[str, list[dict[str, Any]]] = {name: [] for name in layouts}
        for k in range(steps):
            for name in layouts if k % 2 == 0 else reversed(list(layouts)):
                if k < len(index[name]):
                    timed[name].append(w.call("step", index=index[name][k]))
            log(f"  packing step {k + 1}/{steps}")
        compiles = sum(s["compiles"] for rows in timed.values() for s in rows)
    finally:
        w.close()
    for name, rows in timed.items():
        r = result["layouts"][name]
        r["median_s"] = statistics.median(s["seconds"] for s in rows)
        r["slots_per_s"] = batch_size * seq_len / r["median_s"]
        r["effective_tokens_per_s"] = r["targets_per_batch"] / r["median_s"]
    result["compiles_timed"] = compiles
    names = list(layouts)
    result["gain"] = (result["layouts"][names[0]]["effective_tokens_per_s"]
                      / result["layouts"][names[1]]["effective_tokens_per_s"])
    return result


def packing_table(r: dict[str, Any]) -> str:
    lines = [f"{r['conversations']} synthetic ShareGPT-like conversations -> {r['pieces']} pieces of at most "
             f"{r['seq_len'] + 1} tokens (mean {r['tokens_mean']:.0f}, median {r['tokens_p50']:.0f}, p99 "
             f"{r['tokens_p99']:.0f}); model {r['model']}, batch {r['batch_size']} x {r['seq_len']}, fp32, "
             f"our train step; compilations during timed steps: {r['compiles_timed']}.", "",
             "| batching | batches | non-pad tokens / slot | target tokens / slot | median step (s) | "
             "slots/s | effective (target) tokens/s |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, s in r["layouts"].items():
        lines.append(f"| {name} | {s['batches']} | {s['nonpad_per_slot']:.1%} | {s['targets_per_slot']:.1%} "
                     f"| {s['median_s']:.2f} | {s['slots_per_s']:,.0f} "
                     f"| {s['effective_tokens_per_s']:,.0f} |")
    packed, padded = list(r["layouts"].values())
    fewer = padded["batches"] / packed["batches"]
    lines += ["", f"Packing trains {r['gain']:.2f}x more target tokens per second than padding to "
                  f"{r['seq_len']}, and an epoch takes {fewer:.2f}x fewer steps."]
    return "\n".join(lines)
