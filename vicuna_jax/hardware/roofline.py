"""A roofline estimate of one step from the compiler's own cost analysis: an estimate, not a measurement.

`compiled.cost_analysis()` counts the FLOPs and HBM bytes of one device's program, but a while loop's body
only once (measured: a scanned 4-layer model reports the FLOPs of a 1-layer one). So the caller compiles
loop-free variants (layers unrolled, one loss chunk, one micro-batch) at a few sizes, and `fit_bilinear`
extends them to the real size: cost(rows, layers) = a + b*rows + c*layers + d*rows*layers is exact for a
transformer step's FLOPs (weights and the optimizer are per layer, activations per row and layer); bytes
follow the compiler's fusion choices, which shift a little with size (10% on the tiny model's test).

The Pallas (Mosaic) attention kernels are custom calls the cost analysis counts as free, so their FLOPs are
added analytically (`attention_pairs`: query-key pairs a causal, possibly windowed row computes).

From per-chip FLOPs F and bytes B: compute time F / peak, memory time B / bandwidth, and the step takes at
least the larger of the two (no overlap losses, no collectives, no host work: real steps are slower). MFU
counts model FLOPs only (6N + attention, `train.metrics.flops_per_token`), not rematerialisation.
"""

from __future__ import annotations

from typing import Any

from vicuna_jax.hardware.chips import Chip

COST_KEYS = ("flops", "bytes accessed", "optimal_seconds")


def compiled_cost(compiled: Any) -> dict[str, float]:
    """FLOPs, HBM bytes and XLA's own time estimate of one device's program (loop bodies counted once). The
    TPU compiler's "optimal_seconds" is sometimes negative (seen with LoRA's quantized base); the report
    then leaves it out."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list | tuple):  # older jax: one dict per program
        analysis = analysis[0]
    return {k: float(analysis.get(k, 0.0)) for k in COST_KEYS}


def attention_pairs(length: int, window: int | None = None) -> int:
    """Query-key pairs of one causal row: sum over queries i of min(i + 1, window)."""
    w = length if window is None or window >= length else window
    return w * (w + 1) // 2 + (length - w) * w


def fit_bilinear(costs: dict[tuple[int, int], dict[str, float]], rows: float,
                 layers: float) -> dict[str, float]:
    """Extends costs measured at (rows, layers) in {r0, r1} x {l0, l1} to (`rows`, `layers`)."""
    (r0, r1), (l0, l1) = sorted({r for r, _ in costs}), sorted({n for _, n in costs})
    out = {}
    for key in COST_KEYS:
        c00, c01, c10, c11 = (costs[r, n][key] for r, n in ((r0, l0), (r0, l1), (r1, l0), (r1, l1)))
        u, v = (rows - r0) / (r1 - r0), (layers - l0) / (l1 - l0)
        out[key] = c00 + u * (c10 - c00) + v * (c01 - c00) + u * v * (c11 - c10 - c01 + c00)
    return out


def estimate(cost: dict[str, float], chip: Chip, model_flops: float, tokens: float,
             kernel_flops: float = 0.0) -> dict[str, float]:
    """Per-chip roofline of one step: `cost` the step's FLOPs/bytes per chip as the compiler counts them,
    `kernel_flops` those of Pallas kernels, which it does not count (a Mosaic custom call costs 0 in its
    analysis), `model_flops` the useful FLOPs per chip, `tokens` the tokens each chip trains per step."""
    flops = cost["flops"] + kernel_flops
    compute = flops / chip.peak_bf16_flops
    memory = cost["bytes accessed"] / chip.hbm_bytes_per_s
    step = max(compute, memory)
    return {"flops": flops, "compiler_flops": cost["flops"], "kernel_flops": kernel_flops,
            "bytes": cost["bytes accessed"], "xla_seconds": cost["optimal_seconds"],
            "compute_seconds": compute, "memory_seconds": memory, "step_seconds": step,
            "bound": "compute" if compute >= memory else "memory", "model_flops": model_flops,
            "mfu": model_flops / (step * chip.peak_bf16_flops) if step else 0.0,
            "tokens_per_s_per_chip": tokens / step if step else 0.0}


# MaxText's published figure to set beside ours (docs/reference/models/tiering.md, Trillium Gold tier):
# Llama 3.1 8B on v6e-256, bf16, sequence 8192.
MAXTEXT_REFERENCE = {"model": "Llama 3.1 8B", "slice": "v6e-256", "seq_len": 8192, "mfu": 0.4546,
                     "tokens_per_s_per_chip": 7207,
                     "source": "MaxText docs/reference/models/tiering.md (Trillium, Gold tier)"}


def format_estimate(r: dict[str, float], chip: Chip) -> list[str]:
    ref = MAXTEXT_REFERENCE
    return [
        f"roofline ESTIMATE per chip ({chip.name}: {chip.peak_bf16_flops / 1e12:g} TFLOP/s bf16, "
        f"{chip.hbm_bytes_per_s / 1e9:g} GB/s HBM): {r['flops'] / 1e12:.4g} TFLOP (of which attention "
        f"kernels {r['kernel_flops'] / 1e12:.3g}, counted analytically) and "
        f"{r['bytes'] / 1e9:.4g} GB per step -> compute {r['compute_seconds']:.3g} s, memory "
        f"{r['memory_seconds']:.3g} s ({r['bound']}-bound"
        + (f"; XLA's own estimate {r['xla_seconds']:.3g} s)" if r["xla_seconds"] > 0 else ")"),
        f"  step >= {r['step_seconds']:.3g} s, MFU <= {r['mfu']:.0%}, <= {r['tokens_per_s_per_chip']:,.0f} "
        f"tokens/s per chip (no collectives, overlap or host time: an upper bound on speed)",
        f"  beside: {ref['model']} on {ref['slice']} (seq {ref['seq_len']}) in MaxText: {ref['mfu']:.1%} "
        f"MFU, {ref['tokens_per_s_per_chip']:,} tokens/s per chip, measured ({ref['source']})",
    ]
