"""Training metrics: workdir/metrics.jsonl, TensorBoard event files, and the FLOPs model behind MFU.

MFU = achieved model FLOPs / (device peak x devices), where model FLOPs per trained token are

    6 * N_matmul  +  6 * L * T * d_attn

N_matmul counts the parameters used in matrix multiplies (every linear layer and the LM head; not the
embedding lookup, not the norms); the factor 6 is forward (2) + backward (4). The attention term is the
QK^T and AV products for a causal sequence of length T counted once: per token and layer the forward
costs 2 * 2 * T * d_attn / 2 (the upper triangle is never needed), times 3 for forward + backward.
d_attn = num_heads * head_dim. Rematerialisation is not counted: MFU measures useful work.
"""

from __future__ import annotations

import json
import os
from typing import Any

from vicuna_jax.fileio import open_append
from vicuna_jax.hardware.chips import chip_for_device_kind
from vicuna_jax.model.config import LlamaConfig

# Dense bf16 peak FLOP/s per GPU (vendor datasheets; TPUs: `hardware.chips`, by exact device kind, since
# v5p calls itself "TPU v5"). fp32 compute on GPUs uses TF32 tensor cores.
_PEAK_BF16 = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "A10G": 125e12,
    "L4": 121e12,
}


def peak_flops(device_kind: str, dtype: str = "bfloat16") -> float | None:
    """Per-device dense peak for `dtype` compute, or None when unknown (e.g. CPU)."""
    chip = chip_for_device_kind(device_kind)
    flops = chip.peak_bf16_flops if chip else next(
        (f for name, f in _PEAK_BF16.items() if name.lower() in device_kind.lower()), None)
    if flops is None:
        return None
    return flops / 2 if dtype == "float32" else flops


def flops_per_token(cfg: LlamaConfig, seq_len: int) -> float:
    d_attn = cfg.num_heads * cfg.dim_per_head
    n_matmul = cfg.num_params() - cfg.vocab_size * cfg.hidden_size * (0 if cfg.tie_word_embeddings else 1)
    n_matmul -= cfg.hidden_size * (2 * cfg.num_layers + 1)  # norm scales
    return 6.0 * n_matmul + 6.0 * cfg.num_layers * seq_len * d_attn


class MetricsWriter:
    """Appends one JSON object per logged step to metrics.jsonl and mirrors scalars to TensorBoard.

    metrics.jsonl is only ever appended to (never through a symbolic link). A run resumed from an earlier
    checkpoint than its last logged step logs those steps again, further down: the last row of a step is
    the one that counts.
    """

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if not enabled:
            return
        self._file = open_append(self.path, "metrics log")
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        except ImportError:  # TensorBoard files are optional; metrics.jsonl is the record.
            self._tb = None

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: _plain(v) for k, v in values.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _plain(v: Any) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return v
