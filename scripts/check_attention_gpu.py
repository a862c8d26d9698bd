"""Checks every attention backend against the XLA reference on real hardware and times it.

Run on a GPU (or TPU) host:

    python scripts/check_attention_gpu.py                       # LLaMA-7B shapes, bf16, packed rows
    python scripts/check_attention_gpu.py --kv_heads=8          # GQA (G = 4)
    python scripts/check_attention_gpu.py --dtype=float32       # cuDNN is skipped: it needs bf16/fp16
    python scripts/check_attention_gpu.py --sweep_gpu_blocks    # tune the Triton kernel's block sizes

For each backend that can run here it prints the max abs difference of the output and of dq/dk/dv against
the reference computed in fp32 (relative to the reference's max magnitude), and the median time of forward
and forward+backward with the achieved TFLOP/s. FLOPs: full attention forward is 4·B·H·T²·D (two matmuls);
causal counts half, 2·B·H·T²·D; backward is 2.5x forward, so forward+backward is 3.5x.
On a CPU host, `--simulate=gpu|tpu` runs the Pallas kernels in interpret mode at small sizes (smoke test).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vicuna_jax.model import attention as attn
from vicuna_jax.model import attention_kernels as kernels


def packed_segment_ids(batch: int, length: int, seed: int) -> np.ndarray:
    """3-8 conversations per row with random lengths, the last row unpadded, the others with padding."""
    rng = np.random.default_rng(seed)
    rows = np.zeros((batch, length), np.int32)
    for b in range(batch):
        n = int(rng.integers(3, 9))
        used = length if b == batch - 1 else int(length * rng.uniform(0.7, 0.98))
        cuts = np.sort(rng.choice(np.arange(1, used), size=n - 1, replace=False))
        for i, (lo, hi) in enumerate(zip(np.r_[0, cuts], np.r_[cuts, used], strict=True)):
            rows[b, lo:hi] = i + 1
    return rows


def timed(fn: Callable[[], object], repeats: int) -> float:
    jax.block_until_ready(fn())  # compile + warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fwd_bwd(fn: Callable, q, k, v, cotangent):
    out, pullback = jax.vjp(fn, q, k, v)
    return out, pullback(cotangent)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv_heads", type=int, default=32)
    p.add_argument("--head_dim", type=int, default=128)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--no_segments", action="store_true", help="one causal sequence per row")
    p.add_argument("--sweep_gpu_blocks", action="store_true")
    p.add_argument("--simulate", choices=["gpu", "tpu"], help="CPU smoke test: interpret the Pallas kernels")
    args = p.parse_args()
    with attn.simulate_platform(args.simulate) if args.simulate else contextlib.nullcontext():
        run(args)


def run(args: argparse.Namespace) -> None:
    dtype = jnp.dtype(args.dtype)
    b, t, h, kv, d = args.batch, args.length, args.heads, args.kv_heads, args.head_dim
    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (b, t, h, d), jnp.float32)
    k = jax.random.normal(keys[1], (b, t, kv, d), jnp.float32)
    v = jax.random.normal(keys[2], (b, t, kv, d), jnp.float32)
    ct = jax.random.normal(keys[3], (b, t, h, d), jnp.float32)
    seg = None if args.no_segments else jnp.asarray(packed_segment_ids(b, t, seed=0))
    print(f"devices: {jax.devices()}\nshape B={b} T={t} H={h} K={kv} D={d} {dtype.name}, "
          f"{'no segments' if seg is None else f'up to {int(seg.max())} segments/row, padded rows'}")

    ref_out, ref_grads = jax.jit(lambda q, k, v: fwd_bwd(
        lambda q, k, v: attn.xla_attention(q, k, v, seg), q, k, v, ct))(q, k, v)
    ref_scale = [float(jnp.abs(x).max()) for x in (ref_out, *ref_grads)]
    flops_fwd = 2 * b * h * t * t * d
    low = [x.astype(dtype) for x in (q, k, v, ct)]

    candidates: list[tuple[str, Callable]] = [
        (impl, lambda q, k, v, impl=impl: attn.attention(q, k, v, seg, impl=impl))
        for impl in ("xla", "cudnn", "pallas")]
    if args.sweep_gpu_blocks:
        for blocks in ((128, 32), (128, 64), (64, 64), (64, 32), (128, 128)):
            candidates.append((f"pallas-gpu{blocks}", lambda q, k, v, blocks=blocks:
                               kernels.pallas_gpu_attention(q, k, v, seg, blocks=blocks,
                                                            interpret=args.simulate is not None)))

    print(f"auto resolves to: {attn.resolve_backend('auto', dtype, d)!r}")
    print(f"{'backend':22s} {'out':>9s} {'dq':>9s} {'dk':>9s} {'dv':>9s}   {'fwd ms':>8s} {'TF/s':>6s}"
          f" {'fwd+bwd ms':>10s} {'TF/s':>6s}   (diffs: max abs / max |ref|)")
    for name, fn in candidates:
        try:
            if name in ("cudnn", "pallas"):
                attn.resolve_backend(name, dtype, d)
            fwd = jax.jit(fn)
            both = jax.jit(lambda q, k, v, fn=fn: fwd_bwd(fn, q, k, v, low[3]))
            out, grads = both(*low[:3])
        except Exception as e:  # noqa: BLE001 - report and go on to the next backend
            print(f"{name:22s} skipped: {type(e).__name__}: {str(e).splitlines()[0][:150]}")
            continue
        diffs = [float(jnp.abs(x.astype(jnp.float32) - r).max()) / s
                 for x, r, s in zip((out, *grads), (ref_out, *ref_grads), ref_scale, strict=True)]
        t_fwd = timed(lambda fwd=fwd: fwd(*low[:3]), args.repeats)
        t_both = timed(lambda both=both: both(*low[:3]), args.repeats)
        print(f"{name:22s} " + " ".join(f"{x:9.2e}" for x in diffs)
              + f"   {t_fwd * 1e3:8.2f} {flops_fwd / t_fwd / 1e12:6.1f}"
              f" {t_both * 1e3:10.2f} {3.5 * flops_fwd / t_both / 1e12:6.1f}")


if __name__ == "__main__":
    main()
