"""The optimizer: AdamW with linear warmup and cosine decay, gradient clipping, no decay on norm scales."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import optax


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with linear warmup then cosine decay to `final_lr_ratio * lr` (HF/FastChat semantics)."""

    learning_rate: float = 2e-5
    warmup_ratio: float = 0.03
    final_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 1.0


def lr_schedule(opt: OptimizerConfig, total_steps: int) -> optax.Schedule:
    warmup = math.ceil(opt.warmup_ratio * total_steps)
    if total_steps <= 1:
        return optax.constant_schedule(opt.learning_rate)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=opt.learning_rate, warmup_steps=warmup, decay_steps=total_steps,
        end_value=opt.learning_rate * opt.final_lr_ratio)


def _decay_mask(params: Any) -> Any:
    """Weight decay on everything but the RMSNorm scales, as HF's Trainer does for LLaMA."""
    def decays(path, _):
        return not any("norm" in str(getattr(k, "key", "")) for k in path)

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(opt: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    parts = []
    if opt.grad_clip and opt.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(opt.grad_clip))
    parts.append(optax.adamw(lr_schedule(opt, total_steps), b1=opt.b1, b2=opt.b2, eps=opt.eps,
                             weight_decay=opt.weight_decay, mask=_decay_mask))
    return optax.chain(*parts)
