"""The planner's roofline estimate of a training step on a TPU slice (see `vicuna_jax.hardware.roofline`).

The step as configured hides most of its work in loops that the compiler's cost analysis counts once (the
scan over layers, the chunked loss, gradient accumulation), so four loop-free variants are compiled instead:
layers unrolled, the loss over the whole row, one micro-batch, at 1 or 2 rows per batch shard and 1 or 2
layers, on the same mesh. Their costs extend exactly to the configured rows and layers; accumulation
multiplies the micro-batch (the optimizer update, a small share, is then counted once per micro-batch).
The splash attention kernels' FLOPs, which the compiler counts as zero, are added from their shapes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from vicuna_jax.hardware import roofline
from vicuna_jax.hardware.chips import Chip
from vicuna_jax.train.metrics import flops_per_token

# Matmuls of one attention pass as the splash kernels run them, in units of one q.k product over the
# pairs: forward q.k and p.v; backward: the dkv kernel recomputes q.k and forms dv, dp and dk, the dq kernel
# recomputes q.k and dp and forms dq. A remat policy other than "none" runs the forward once more.
_SPLASH_MATMULS = 2 + 4 + 3
_NO_RECOMPUTE = ("none", "everything_saveable")


def model_flops_per_token(cfg: Any) -> float:
    """Useful FLOPs per trained token: 6N for the matmul weights (4N with LoRA: the frozen base gets no
    weight gradients; the adapters' own FLOPs are negligible), and q.k + p.v over the causal pairs each
    query really has (a sliding window bounds them), forward and backward (x3)."""
    model, seq = cfg.model, cfg.seq_len
    d_attn = model.num_heads * model.dim_per_head
    weights = flops_per_token(model, seq) - 6.0 * model.num_layers * seq * d_attn
    if cfg.lora.enabled:
        weights *= 4 / 6
    pairs_per_token = roofline.attention_pairs(seq, model.sliding_window) / seq
    return weights + 3 * 2 * 2 * model.num_layers * d_attn * pairs_per_token


def kernel_flops_per_chip(cfg: Any, rows_per_chip: float, tensor: int) -> float:
    """FLOPs of the splash attention kernels on one chip for one step (not in the compiler's count)."""
    model = cfg.model
    matmuls = _SPLASH_MATMULS + (0 if cfg.run.remat_policy in _NO_RECOMPUTE else 2)
    pairs = roofline.attention_pairs(cfg.seq_len, model.sliding_window)
    heads = model.num_heads / tensor
    return 2.0 * matmuls * model.num_layers * rows_per_chip * heads * model.dim_per_head * pairs


def estimate(c: Any, setup: dict[str, Any], chips: int, chip: Chip, compile_config: Callable[[Any], Any],
             splash: bool) -> dict[str, Any]:
    """Roofline of one step of config `c` (its planned `setup`) on `chips` chips; `compile_config` compiles a
    config variant on the same devices, as the planner does; `splash`: attention ran as the splash kernels
    (their FLOPs are then added)."""
    cfg, mesh = setup["config"], setup["mesh"]
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    micro_rows = cfg.batch_size // cfg.grad_accum_steps // shards
    costs = {}
    for rows in (1, 2):
        for layers in (1, 2):
            v = copy.deepcopy(c)
            v.batch_size, v.grad_accum_steps, v.scan_layers = rows * shards, 1, False
            v.loss_chunk_size, v.model_overrides.num_layers = 0, layers
            costs[rows, layers] = roofline.compiled_cost(compile_config(v))
    step = roofline.fit_bilinear(costs, micro_rows, cfg.model.num_layers)
    step = {k: value * cfg.grad_accum_steps for k, value in step.items()}
    tokens_per_chip = cfg.batch_size * cfg.seq_len / chips
    kernels = kernel_flops_per_chip(cfg, cfg.batch_size / shards, mesh.shape["tensor"]) if splash else 0.0
    model_flops = model_flops_per_token(cfg) * tokens_per_chip
    out = roofline.estimate(step, chip, model_flops, tokens_per_chip, kernels)
    out["method"] = "loop-free variants at (1|2 rows per shard) x (1|2 layers), extended bilinearly"
    return out
