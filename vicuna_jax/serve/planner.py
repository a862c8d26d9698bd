"""Serving memory on one TPU chip, before renting it: the engine's own prefill and decode programs compiled
by the real TPU compiler on this host (libtpu installed, no TPU).

    python -m vicuna_jax.serve.planner --model=llama3_1_8b --topology=v6e-1 --max_batch=16 \
        --max_seq_len=4096 [--dtype=bfloat16] [--param_dtype=bfloat16] [--max_prefill_tokens=8192]

`--model` is a preset (`vicuna_jax.model.config.PRESETS`): no weights are read. The programs are those of
`decoding.batch.DecodeBatch`, as `serve` builds it: decode runs `--decode_steps` tokens for every one of the
`--max_batch` cache rows of `--max_seq_len` slots; prefill runs the largest call the engine makes (prompts of
`--max_seq_len` tokens, as many as `--max_prefill_tokens` allows). Per chip: the weights and the KV cache
(exact), each program's temporaries (TPU's buffer assignment), and each one's peak (prefill's with the
resident cache) against the chip's HBM. The
serving engine keeps its parameters in float32 unless told otherwise (`--param_dtype` shows bfloat16
storage).
"""

from __future__ import annotations

import os
import time
from typing import Any

from vicuna_jax.cli import UserError

GIB = 2**30


def _compile(fn: Any, *args: Any, **kwargs: Any) -> tuple[dict[str, int] | None, float, str | None]:
    """(memory, seconds, the compiler's out-of-memory message) of `fn` lowered for `args`."""
    from vicuna_jax.train.planner import compiled_memory

    start = time.perf_counter()
    try:
        compiled = fn.lower(*args, **kwargs).compile()
    except Exception as e:  # noqa: BLE001 - only the compiler's out-of-memory verdict is an answer
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        return None, time.perf_counter() - start, str(e).strip().splitlines()[0][:400]
    return compiled_memory(compiled), time.perf_counter() - start, None


def plan(model: str, topology: str, max_batch: int, max_seq_len: int, dtype: str = "bfloat16",
         param_dtype: str = "float32", max_prefill_tokens: int = 8192,
         decode_steps: int = 8) -> dict[str, Any]:
    """Compiles the engine's decode and largest prefill program for one chip of `topology`; the report."""
    import jax
    import jax.numpy as jnp

    from vicuna_jax.decoding.batch import DecodeBatch, RowParams, next_pow2, prompt_bucket
    from vicuna_jax.hardware import topology as topology_lib
    from vicuna_jax.model.config import ConfigError, get_preset
    from vicuna_jax.model.llama import KVCache, abstract_model

    target = topology_lib.parse(topology)
    if target.chips != 1:
        raise UserError(f"--topology: the serving engine runs on one chip; {topology} has {target.chips}")
    try:
        cfg = get_preset(model)
    except ConfigError as e:
        raise UserError(f"--model: {e}") from None
    device = topology_lib.compile_only_devices(target)[0]
    on_chip = jax.sharding.SingleDeviceSharding(device)
    put = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=on_chip)  # noqa: E731

    batch = DecodeBatch(abstract_model(cfg, dtype=jnp.dtype(dtype), param_dtype=jnp.dtype(param_dtype)),
                        eos_ids=[cfg.eos_token_id], max_rows=max_batch, context_len=max_seq_len,
                        max_prefill_tokens=max_prefill_tokens)
    state = jax.tree.map(put, batch.state)
    rows, length = batch.bucket(max_batch, batch.max_len)
    cache = jax.tree.map(put, jax.eval_shape(lambda: KVCache.create(cfg, rows, length, batch.cache_dtype)))
    logits = put(jax.ShapeDtypeStruct((rows, cfg.vocab_size), jnp.float32))
    row_params = [put(jax.ShapeDtypeStruct(x.shape, x.dtype)) for x in RowParams.empty(rows).head(rows)]
    decode = _compile(batch._decode, state, cache, logits, *row_params, steps=decode_steps)

    prompt = min(prompt_bucket(max_seq_len), length)  # the longest prompt's bucket, as `admit` pads it
    prompts = min(next_pow2(max(max_prefill_tokens // prompt, 1)), rows)
    prefill = _compile(batch._prefill, state, put(jax.ShapeDtypeStruct((prompts, prompt), jnp.int32)),
                       put(jax.ShapeDtypeStruct((prompts,), jnp.int32)))

    nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))  # noqa: E731
    return {"model": model, "topology": target.cloud_name, "chip": target.chip.name,
            "usable_hbm_gib": target.chip.usable_hbm_gib, "dtype": dtype, "param_dtype": param_dtype,
            "rows": rows, "length": length, "prefill_shape": [prompts, prompt], "decode_steps": decode_steps,
            "weights": nbytes(state), "cache": nbytes(cache) + nbytes(logits),
            "decode": {"memory": decode[0], "seconds": decode[1], "out_of_memory": decode[2]},
            "prefill": {"memory": prefill[0], "seconds": prefill[1], "out_of_memory": prefill[2]}}


def format_report(r: dict[str, Any]) -> str:
    usable = r["usable_hbm_gib"]
    lines = [f"{r['model']} serving on one {r['chip']} ({r['topology']}, {usable:g} GiB usable by a "
             f"program): {r['rows']} cache rows x {r['length']} slots, {r['dtype']} compute, "
             f"{r['param_dtype']} weights",
             "", "per chip (GiB)",
             f"  weights                  {r['weights'] / GIB:8.2f}",
             f"  KV cache + row logits    {r['cache'] / GIB:8.2f}"]
    for name, what in (("decode", f"{r['decode_steps']} tokens x {r['rows']} rows"),
                       ("prefill", "{} prompts x {} tokens".format(*r["prefill_shape"]))):
        p = r[name]
        if p["memory"] is None:
            lines.append(f"  {name} ({what}): does NOT fit, the compiler refused it: {p['out_of_memory']}")
            continue
        m = p["memory"]
        # The cache stays on the chip while prefill runs (prefill writes a cache of its own, then inserts it).
        resident = r["cache"] if name == "prefill" else 0
        peak = m["total"] + resident
        verdict = "fits" if peak <= usable * GIB else "does NOT fit"
        cache = f" + the resident cache {resident / GIB:.2f}" if resident else ""
        lines.append(f"  {name} ({what}): arguments {m['argument'] / GIB:.2f} + temporaries "
                     f"{m['temp'] / GIB:.2f} + outputs not aliased {(m['output'] - m['alias']) / GIB:.2f}"
                     f"{cache} = {peak / GIB:.2f}: {verdict} (compiled in {p['seconds']:.1f} s)")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    from absl import flags

    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    print(format_report(plan(f.model, f.topology, f.max_batch, f.max_seq_len, f.dtype, f.param_dtype,
                             f.max_prefill_tokens, f.decode_steps)))


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("model", None, "Model preset (e.g. llama2_7b, llama3_1_8b, mistral_7b).")
    flags.DEFINE_string("topology", "v6e-1", "One TPU chip: v5e-1 or v6e-1 (needs libtpu, not a TPU).")
    flags.DEFINE_integer("max_batch", 16, "Cache rows (serve --max_batch).")
    flags.DEFINE_integer("max_seq_len", 4096, "Slots per row: prompt + reply (serve --max_seq_len).")
    flags.DEFINE_enum("dtype", "bfloat16", ["float32", "bfloat16"], "Compute dtype (serve --dtype).")
    flags.DEFINE_enum("param_dtype", "float32", ["float32", "bfloat16"], "How the weights are stored (the "
                      "engine keeps float32).")
    flags.DEFINE_integer("max_prefill_tokens", 8192, "Padded tokens per prefill call (serve's default).")
    flags.DEFINE_integer("decode_steps", 8, "Tokens per decode call (serve --decode_steps).")
    flags.mark_flags_as_required(["model"])


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # JAX runs here on the CPU; the TPU is only compiled for
    from vicuna_jax.cli import run

    run(main, _define_flags)
