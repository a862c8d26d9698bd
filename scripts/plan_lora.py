"""Per-device memory of LoRA and QLoRA fine-tuning (and full fine-tuning, for scale) for 7B / 8B / 13B
models on 1 and 8 GPUs, from the memory planner (`vicuna_jax.train.planner`: the real training step,
compiled from abstract shapes), and which of them fit a 24 GB, 48 GB and 80 GB GPU.

    python scripts/plan_lora.py [--rank=16] [--targets=all] [--rows_per_device=1] [--seq_len=2048]
        [--modes=full,lora,qlora-int8,qlora-nf4] [--models=7b,8b,13b] [--json=plan_lora.json]

Each row is one compile (~10-40 s on a CPU). Attention is traced as the GPU Pallas flash kernel
(`--simulate=gpu`), remat saves nothing (`nothing_saveable`), one packed 2048-token row per device per
step, bf16 compute; adapters and AdamW in fp32; the frozen base in bf16 (LoRA) or int8 / NF4 kernels with
bf16 embeddings, norms and LM head (QLoRA).

"GPU est." is the compiled total, except for LoRA on a 16-bit base: XLA:CPU has no bf16 matmul and converts
the whole stacked base to fp32 up front (an fp32 copy of every layer kernel, in the temporaries; a GPU
multiplies bf16 directly), so that copy (2x the 16-bit kernels) is taken out. "fits": the GPU estimate is
within 90% of the GPU's memory.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from vicuna_jax.train import planner

GIB = 2**30
# LLaMA-2 7B / 13B presets; "8b" = Llama-3-8B's shapes (vocab 128256, GQA 32/8, MLP 14336, theta 5e5).
MODELS = {
    "7b": ("llama2_7b", {}),
    "8b": ("llama2_7b", {"vocab_size": 128256, "intermediate_size": 14336, "num_kv_heads": 8,
                         "rope_theta": 500000.0, "max_position_embeddings": 8192}),
    "13b": ("llama2_13b", {}),
}
MODES = {"full": None, "lora": "none", "qlora-int8": "int8", "qlora-nf4": "nf4"}
GPUS = (24, 48, 80)


def config(model: str, mode: str, devices: int, args: argparse.Namespace):
    from vicuna_jax.train.config import base_config

    preset, overrides = MODELS[model]
    c = base_config()
    c.model = preset
    for key, value in overrides.items():
        c.model_overrides[key] = value
    c.seq_len, c.batch_size = args.seq_len, args.rows_per_device * devices
    c.total_steps = 1000
    c.remat_policy = "nothing_saveable"
    if MODES[mode] is not None:
        c.lora.rank, c.lora.target_modules = args.rank, args.targets
        c.lora.base_quantization = MODES[mode]
    return c


def cpu_fp32_copy(c, devices: int) -> int:
    """Per-device bytes of the fp32 copy XLA:CPU makes of a 16-bit frozen base's layer kernels."""
    import jax

    if c.lora.rank == 0 or c.lora.base_quantization != "none":
        return 0
    state = planner.build(c, devices)["state"]
    kernels = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(state.frozen["layers"])[0]
               if getattr(path[-1], "key", None) == "kernel"]
    return sum(2 * math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize for leaf in kernels
               if leaf.dtype.itemsize == 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--targets", default="all")
    parser.add_argument("--rows_per_device", type=int, default=1)
    parser.add_argument("--seq_len", type=int, default=2048)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--devices", default="1,8")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    device_counts = [int(d) for d in args.devices.split(",")]
    planner.set_device_env(max(device_counts), "cpu")

    rows = []
    header = ("| model | mode | GPUs | frozen base | trained + AdamW | temporaries | total (compiled) | "
              "total (analytic) | GPU est. | " + " | ".join(f"{g} GB" for g in GPUS) + " |")
    print(header)
    print("|" + "---|" * (9 + len(GPUS)))
    for model in args.models.split(","):
        for mode in args.modes.split(","):
            for devices in device_counts:
                c = config(model, mode, devices, args)
                r = planner.plan(c, devices, hbm_gb=80, simulate="gpu")
                m, s, a = r["compiled"], r["state"], r["analytic"]
                total = m["total"] / GIB
                estimate = total - cpu_fp32_copy(c, devices) / GIB
                fits = ["yes" if estimate <= 0.9 * g else "no" for g in GPUS]  # GPU "GB" are GiB
                row = {"model": model, "mode": mode, "devices": devices, "frozen_gib": s["frozen"] / GIB,
                       "trained_gib": (s["params"] + s["opt_state"]) / GIB, "temp_gib": m["temp"] / GIB,
                       "total_gib": total, "analytic_gib": a["total"] / GIB, "gpu_estimate_gib": estimate,
                       "fits": dict(zip(GPUS, fits, strict=True))}
                rows.append(row)
                print(f"| {model} | {mode} | {devices} | {row['frozen_gib']:.2f} | "
                      f"{row['trained_gib']:.2f} | {row['temp_gib']:.2f} | {total:.2f} | "
                      f"{row['analytic_gib']:.2f} | {estimate:.2f} | " + " | ".join(fits) + " |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
