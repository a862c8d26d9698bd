"""Memory planner: will this training config fit, per device, before renting anything?

    python -m vicuna_jax.train.planner --config=configs/vicuna_13b.py --devices=8 [--hbm_gb=80]
        [--config.mesh.fsdp=8] [--config.batch_size=32 --config.remat_policy=nothing_saveable ...]
        [--policies=none,full,...]
    python -m vicuna_jax.train.planner --config=configs/vicuna_7b.py --topology=v5p-8   # TPU, no TPU needed

It builds the training step with the trainer's own `train.setup.build` (mesh, logical-axis shardings, AdamW,
donation), but from `jax.ShapeDtypeStruct`s carrying those shardings: no weights are allocated and no data
is read. The step is lowered and compiled ahead of time, on `--devices` simulated host devices when this
machine has fewer (the planner sets `--xla_force_host_platform_device_count` itself before JAX starts), and
`compiled.memory_analysis()` gives one device's arguments (parameters, optimizer state, batch), outputs
(aliased to the arguments by donation), temporaries (gradients, activations, logits, optimizer scratch) and
generated code. Next to it: analytic estimates of the same parts, activations per remat policy included.

What the numbers mean. Arguments and outputs are exact for any backend: they are the state's shard sizes.
Temporaries come from XLA's buffer assignment *for the backend that compiled it*: compiled on CPU, they
reflect XLA:CPU's fusion and scheduling, and the `xla` attention backend (which materialises [B, H, T, T]
scores; cuDNN/Pallas flash kernels keep O(T) per row instead). On a GPU or TPU host the planner compiles for
that backend and the figure is the real one. Treat CPU-compiled temporaries as an upper-bound-ish guide and
the analytic activation column as the flash-attention estimate; leave headroom for the runtime (JAX
preallocates 75% of GPU memory unless XLA_PYTHON_CLIENT_MEM_FRACTION says otherwise: see --usable_fraction).

`--topology` (libtpu installed, no TPU needed) compiles the same step for a TPU slice with the real TPU
compiler on compile-only devices (`vicuna_jax.hardware.topology`): TPU's own buffer assignment, the Pallas
splash kernel lowered by Mosaic, the chip's HBM to compare with. A program that cannot fit is refused by that
compiler, and the refusal is reported as the answer.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from typing import Any

from vicuna_jax.cli import UserError, unknown_name
from vicuna_jax.fileio import atomic_write_json

GIB = 2**30


def set_device_env(devices: int | None, platform: str | None) -> None:
    """Before JAX starts its backends: N simulated host devices and/or a forced platform."""
    if devices:
        flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
                 if not f.startswith("--xla_force_host_platform_device_count")]
        os.environ["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
    if platform:
        os.environ["JAX_PLATFORMS"] = platform


def _early_env(argv: list[str]) -> None:
    """`--devices`/`--platform` act before absl parses flags: loading the config file imports JAX. With
    `--topology` JAX itself runs on the CPU: the TPU is only compiled for (without this, JAX with libtpu
    installed would first try, and fail, to open a TPU on this host)."""
    values: dict[str, str] = {}
    for i, arg in enumerate(argv):
        for name in ("devices", "platform", "topology"):
            if arg.startswith(f"--{name}="):
                values[name] = arg.split("=", 1)[1]
            elif arg == f"--{name}" and i + 1 < len(argv):
                values[name] = argv[i + 1]
    devices = int(values["devices"]) if values.get("devices", "").isdigit() else None
    platform = values.get("platform") or ("cpu" if values.get("topology") and
                                          "JAX_PLATFORMS" not in os.environ else None)
    set_device_env(devices, platform)


def _shard_bytes(abstract: Any) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (device 0's shard)."""
    total = 0
    for leaf in _leaves(abstract):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += math.prod(shape) * leaf.dtype.itemsize
    return total


def _leaves(tree: Any) -> list[Any]:
    import jax

    return jax.tree.leaves(tree)


def build(c: Any, num_devices: int | None = None, remat_policy: str | None = None,
          devices: list[Any] | None = None) -> dict[str, Any]:
    """The abstract training setup for config `c` (the trainer's own `train.setup.build`) on `num_devices`
    of this host's devices, or on `devices` (e.g. compile-only TPU devices), with an abstract batch: nothing
    allocated."""
    import jax

    from vicuna_jax import parallel
    from vicuna_jax.train import config as config_lib
    from vicuna_jax.train import setup as setup_lib

    if devices is None:
        num_devices = num_devices or jax.device_count()
        if num_devices > jax.device_count():
            raise UserError(f"--devices={num_devices} but JAX already started with {jax.device_count()} "
                            "devices; run the planner in a fresh process (it sets the simulated device count "
                            "itself)")
        devices = jax.devices()[:num_devices]
    c = copy.deepcopy(c)
    # Planning reads no data: check everything else, not whether the dataset/tokenizer paths exist here.
    c.data.path, c.tokenizer = config_lib.BUNDLED_DATA, ""
    if remat_policy is not None:
        c.remat_policy = remat_policy
    cfg = config_lib.load(c, len(devices))
    mesh = parallel.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, devices=devices)
    total_steps = cfg.total_steps if cfg.total_steps > 0 else 1000  # the schedule's length changes no shapes
    setup = setup_lib.build(cfg, mesh, total_steps)
    return {"config": cfg, "cfg": cfg.model, "mesh": mesh, "state": setup.abstract_state,
            "batch": setup.abstract_batch(), "step": setup.train_step, "setup": setup}


def compile_step(setup: dict[str, Any], simulate: str | None = None) -> Any:
    """Lowers and compiles the step from abstract shapes. `simulate="gpu"|"tpu"` traces attention through
    that platform's Pallas flash kernel (interpreted on this host), so temporaries follow a flash kernel's
    memory instead of the xla backend's [B, H, T, T] scores."""
    import contextlib

    import jax

    from vicuna_jax.model import attention

    ctx = attention.simulate_platform(simulate) if simulate else contextlib.nullcontext()
    with ctx, jax.set_mesh(setup["mesh"]):
        return setup["step"].lower(setup["state"], setup["batch"]).compile()


def compiled_memory(compiled: Any) -> dict[str, int]:
    """One device's memory from XLA's buffer assignment (arguments, outputs, aliasing, temporaries, code)."""
    m = compiled.memory_analysis()
    out = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp",
                                                               "generated_code")}
    out["total"] = out["argument"] + out["output"] - out["alias"] + out["temp"] + out["generated_code"]
    return out


def state_bytes(setup: dict[str, Any]) -> dict[str, int]:
    """Exact per-device bytes of each part of the training state and of one batch."""
    s = setup["state"]
    return {"params": _shard_bytes(s.params), "opt_state": _shard_bytes(s.opt_state),
            "step": _shard_bytes(s.step), "batch": _shard_bytes(setup["batch"]),
            "frozen": _shard_bytes(s.frozen)}  # LoRA's base model (0 for full fine-tuning)


# Saved activation elements per token per layer, by remat policy; see `activation_bytes`.
def _saved_per_token(policy: str, e: float, hq: float, hkv: float, f: float) -> float:
    everything = 2 * e + 2 * hq + 2 * hkv + 3 * f  # normed x (x2), roped q/k, v, attention out, gate, up, act
    saved = {
        "none": everything,
        "everything_saveable": everything,
        "dots_saveable": e + 2 * hq + 2 * hkv + 2 * e + 2 * f,
        "checkpoint_dots": e + 2 * hq + 2 * hkv + 2 * e + 2 * f,
        "dots_with_no_batch_dims_saveable": e + hq + 2 * hkv + 2 * e + 2 * f,
        "checkpoint_dots_with_no_batch_dims": e + hq + 2 * hkv + 2 * e + 2 * f,
        "save_qkv_proj": e + hq + 2 * hkv,
        "save_qkv_attn": e + 2 * hq + 2 * hkv,
        "save_attn_mlp": e + 2 * hq + 2 * hkv + 2 * f,
    }
    return saved.get(policy, e)  # full / nothing_saveable / save_layer_out / offload: the layer input only


def activation_bytes(cfg: Any, policy: str, tokens: int, seq_len: int, dtype_bytes: int, tensor: int = 1,
                     flash: bool = True) -> int:
    """Estimated activation memory of one device's micro-batch (`tokens` = its rows x seq_len).

    Saved for the backward pass: L layers x the policy's saved tensors, plus, under remat, the rest of one
    layer's tensors while that layer is recomputed. Heads and MLP columns divide over `tensor`; the residual
    stream does not. The fp32 RMSNorm inputs (2 x E) are always kept. Attention keeps probabilities [H, T]
    per token in fp32 with the `xla` backend (flash kernels: a log-sum-exp, negligible)."""
    e, f = cfg.hidden_size, cfg.intermediate_size / tensor
    hq = cfg.num_heads * cfg.dim_per_head / tensor
    hkv = cfg.num_kv_heads * cfg.dim_per_head / tensor
    scores = 0.0 if flash else cfg.num_heads / tensor * seq_len * 4 / dtype_bytes
    full_layer = _saved_per_token("none", e, hq, hkv, f) + scores + 2 * e * 4 / dtype_bytes
    saved = _saved_per_token(policy, e, hq, hkv, f)
    if policy in ("dots_saveable", "checkpoint_dots"):
        saved += scores  # the q.k einsum is a dot with batch dims: its output is saved
    if policy in ("none", "everything_saveable"):
        per_token = cfg.num_layers * full_layer
    else:  # the saved tensors of every layer, plus what one layer recomputes during its backward pass
        per_token = cfg.num_layers * saved + max(full_layer - saved, 0.0)
    return int(per_token * tokens * dtype_bytes)


def analytic(setup: dict[str, Any], policy: str | None = None, flash: bool = False) -> dict[str, int]:
    """Analytic per-device estimate: exact state bytes plus estimated gradients, activations and logits."""
    import jax.numpy as jnp

    c, cfg, mesh = setup["config"], setup["cfg"], setup["mesh"]
    parts = state_bytes(setup)
    params = parts["params"]
    param_bytes = jnp.dtype(c.run.param_dtype).itemsize
    grads = params // param_bytes * 4  # gradients are accumulated and applied in fp32
    if c.grad_accum_steps > 1:
        grads *= 2  # the running sum plus one micro-batch's gradients
    batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    rows = c.batch_size // c.grad_accum_steps // batch_shards
    dtype_bytes = jnp.dtype(c.run.dtype).itemsize
    acts = activation_bytes(cfg, policy or c.run.remat_policy, rows * c.seq_len, c.seq_len, dtype_bytes,
                            mesh.shape["tensor"], flash)
    positions = c.loss_chunk_size if 0 < c.loss_chunk_size < c.seq_len else c.seq_len
    logits = 3 * rows * positions * cfg.vocab_size * 4 // mesh.shape["tensor"]  # logits, exp, their gradient
    out = {"params": params, "grads": grads, "opt_state": parts["opt_state"], "activations": acts,
           "logits": logits, "batch": parts["batch"], "frozen": parts["frozen"]}
    out["total"] = sum(out.values())
    return out


def _compile_timed(setup: dict[str, Any], simulate: str | None) -> tuple[Any, float, str | None]:
    """(compiled step or None, seconds, the compiler's out-of-memory message or None). A TPU compile knows
    the chip's HBM and refuses a program that cannot fit; that refusal is the answer, not an error."""
    start = time.perf_counter()
    try:
        compiled = compile_step(setup, simulate)
    except Exception as e:  # noqa: BLE001 - only the compiler's out-of-memory verdict is caught
        text = str(e)
        if "RESOURCE_EXHAUSTED" not in text and "Ran out of memory" not in text:
            raise
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        return None, time.perf_counter() - start, " ".join(lines[:3])[:600]
    return compiled, time.perf_counter() - start, None


def plan(c: Any, devices: int | None = None, hbm_gb: float | None = None,
         usable_fraction: float | None = None, policies: list[str] | None = None, simulate: str | None = None,
         topology: str | None = None, slices: int = 1, roofline: bool = True) -> dict[str, Any]:
    """Compiles the step for `c` (and for each remat policy in `policies`) and returns the report.

    `topology` (a Cloud TPU name such as v5p-8, or v5p:2x2x1) compiles for that TPU slice with the real TPU
    compiler on compile-only devices (libtpu needed, no TPU); `hbm_gb` then defaults to the HBM that compiler
    lets one program use (the runtime's share already taken off), and `usable_fraction` to 1. Otherwise they
    default to 80 GB and 0.9 (a GPU, where the runtime and fragmentation take their share at run time).
    With a topology and `roofline`, a roofline estimate of the step's time (`planner_roofline`) is added."""
    from vicuna_jax.hardware import topology as topology_lib

    target = chip = target_devices = None
    if topology:
        if simulate or devices:
            raise UserError("--topology compiles for the real TPU slice: leave out --simulate and --devices")
        target = topology_lib.parse(topology, slices)
        chip = target.chip
        target_devices = topology_lib.compile_only_devices(target)
    if hbm_gb is None:
        hbm_gb = chip.usable_hbm_gib if chip else 80.0
    if usable_fraction is None:  # the TPU compiler's own budget is exact; a GPU's runtime takes its share
        usable_fraction = 1.0 if target is not None and target.platform == "tpu" else 0.9
    if simulate:
        c = copy.deepcopy(c)
        c.attention = "pallas"
    setup = build(c, devices, devices=target_devices)
    compiled, seconds, oom = _compile_timed(setup, simulate)
    memory = compiled_memory(compiled) if compiled is not None else None
    cfg, mesh = setup["cfg"], setup["mesh"]
    device = mesh.devices.flat[0]
    platform = simulate or device.platform
    attention = setup["config"].run.attention
    flash = attention in ("cudnn", "pallas") or (attention == "auto" and platform in ("gpu", "tpu"))
    estimate = analytic(setup, flash=flash)
    budget = hbm_gb * GIB * usable_fraction
    report: dict[str, Any] = {
        "model": cfg.to_dict(), "num_params": cfg.num_params(), "devices": int(mesh.size),
        "platform": device.platform, "device_kind": device.device_kind, "simulate": simulate,
        "flash_attention": flash, "mesh": dict(mesh.shape), "batch_size": c.batch_size,
        "seq_len": c.seq_len, "grad_accum_steps": c.grad_accum_steps, "dtype": c.dtype,
        "param_dtype": c.param_dtype, "remat_policy": c.remat_policy, "attention": attention,
        "lora": _lora_summary(setup["config"]),
        "loss_chunk_size": c.loss_chunk_size, "compiled": memory, "state": state_bytes(setup),
        "analytic": estimate, "hbm_gb": hbm_gb, "usable_fraction": usable_fraction,
        "fits": memory is not None and memory["total"] <= budget,
        "fits_analytic": estimate["total"] <= budget,
        "compile_seconds": seconds, "compiler_out_of_memory": oom,
        "topology": None if target is None else _topology_summary(target, compiled),
    }
    report["roofline"] = None
    if chip is not None and target.platform == "tpu" and roofline and compiled is not None:
        from vicuna_jax.train import planner_roofline  # imports JAX: never at module level here (_early_env)

        compile_config = lambda v: compile_step(build(v, devices=target_devices))
        splash = report["topology"]["mosaic_kernels"] > 0
        report["roofline"] = planner_roofline.estimate(c, setup, len(target_devices), chip, compile_config,
                                                       splash)
    report["policies"] = {}
    for policy in policies or []:
        entry: dict[str, Any] = {"analytic_activations": analytic(setup, policy, flash)["activations"]}
        other, entry["compile_seconds"], entry["compiler_out_of_memory"] = (
            _compile_timed(build(c, devices, policy, devices=target_devices), simulate)
            if policy != c.remat_policy else (compiled, seconds, oom))
        entry["compiled"] = compiled_memory(other) if other is not None else None
        entry["fits"] = entry["compiled"] is not None and entry["compiled"]["total"] <= budget
        report["policies"][policy] = entry
    return report


def _version(package: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _topology_summary(target: Any, compiled: Any) -> dict[str, Any]:
    """What was compiled for: the slice, its chip and where the chip's figures come from, libtpu's version,
    and how many Pallas kernel calls (Mosaic on TPU, Triton on GPU) the program holds."""

    chip = target.chip
    text = "" if compiled is None else compiled.as_text()
    kernels = None if compiled is None else sum(text.count(f'custom_call_target="{name}"')
                                                for name in ("tpu_custom_call", "__gpu$xla.gpu.triton"))
    return {"name": target.name, "libtpu_name": target.libtpu_name, "cloud_name": target.cloud_name,
            "platform": target.platform, "chips": target.chips, "slices": target.slices, "chip": chip.name,
            "hbm_gib": chip.hbm_gib,
            "usable_hbm_gib": chip.usable_hbm_gib,
            "peak_bf16_flops": chip.peak_bf16_flops, "hbm_bytes_per_s": chip.hbm_bytes_per_s,
            "chip_source": chip.source, "libtpu": _version("libtpu"),
            "mosaic_kernels": kernels}


def _lora_summary(cfg: Any) -> dict[str, Any] | None:
    lora = cfg.lora
    if not lora.enabled:
        return None
    return {"rank": lora.rank, "target_modules": list(lora.target_modules),
            "base_quantization": lora.base_quantization, "base_dtype": lora.base_dtype}


def _gb(n: float) -> str:
    return f"{n / GIB:8.2f}"


def _compiled_gb(m: dict[str, int] | None, key: str) -> str:
    return _gb(m[key]) if m is not None else f"{'-':>8s}"


def _where(r: dict[str, Any]) -> str:
    t = r.get("topology")
    if t:
        slices = f" x {t['slices']} slices" if t["slices"] > 1 else ""
        return (f"{r['devices']} {r['device_kind']} chips ({t['cloud_name']} = {t['libtpu_name']}{slices}, "
                "compile-only)")
    return f"{r['devices']} {r['platform']} device(s)" + (
        f", attention as the {r['simulate']} Pallas kernel (interpreted)" if r["simulate"] else "")


def format_report(r: dict[str, Any]) -> str:
    m, a, t = r["compiled"], r["analytic"], r.get("topology")
    budget = r["hbm_gb"] * r["usable_fraction"]
    lines = [
        f"model {r['num_params'] / 1e9:.2f}B params on {_where(r)}, mesh {r['mesh']}; "
        f"batch {r['batch_size']} x {r['seq_len']} (accum {r['grad_accum_steps']}), {r['dtype']} compute, "
        f"{r['param_dtype']} params, remat={r['remat_policy']}, attention={r['attention']}, "
        f"loss_chunk={r['loss_chunk_size']}",
        *([f"LoRA rank {r['lora']['rank']} on {','.join(r['lora']['target_modules'])}; frozen base "
           f"{r['lora']['base_dtype']}, kernels {r['lora']['base_quantization']}"] if r.get("lora") else []),
        "",
        "per device (GiB)           compiled     analytic",
        *([f"  frozen base              {_gb(r['state']['frozen'])}     {_gb(a['frozen'])}"]
          if r["state"].get("frozen") else []),
        f"  {'adapters' if r.get('lora') else 'parameters':24s} {_gb(r['state']['params'])}     "
        f"{_gb(a['params'])}",
        f"  optimizer state          {_gb(r['state']['opt_state'])}     {_gb(a['opt_state'])}",
        f"  batch                    {_gb(r['state']['batch'])}     {_gb(a['batch'])}",
        f"  arguments (all of these) {_compiled_gb(m, 'argument')}",
        f"  outputs                  {_compiled_gb(m, 'output')}",
        f"  aliased (donated)        {_compiled_gb(m, 'alias')}",
        f"  temporaries              {_compiled_gb(m, 'temp')}     "
        f"{_gb(a['grads'] + a['activations'] + a['logits'])}  (grads {a['grads'] / GIB:.2f} + activations "
        f"{a['activations'] / GIB:.2f} + logits {a['logits'] / GIB:.2f})",
        f"  generated code           {_compiled_gb(m, 'generated_code')}",
        f"  total                    {_compiled_gb(m, 'total')}     {_gb(a['total'])}",
        "",
    ]
    hbm = f"{r['hbm_gb']:.4g} GiB"
    if t:
        hbm += (f" ({t['chip']}: {t['hbm_gib']:.4g} GiB HBM per chip, {t['usable_hbm_gib']:.4g} usable by a "
                f"program; {t['chip_source']})")
    if r["compiler_out_of_memory"]:
        lines.append(f"fits in {hbm}: NO, the compiler refused it: {r['compiler_out_of_memory']}")
    else:
        lines.append(f"fits in {hbm} x {r['usable_fraction']:g} usable = {budget:.1f} GiB per device: "
                     f"{'yes' if r['fits'] else 'NO'} (compiled), {'yes' if r['fits_analytic'] else 'NO'} "
                     "(analytic)")
    if t and t.get("platform") == "gpu":
        compiler = "XLA's GPU compiler (CUDA plugin, no GPU)"
    else:
        compiler = f"the TPU compiler (libtpu {t['libtpu']})" if t else f"XLA:{r['platform'].upper()}"
    lowering = "Triton" if t and t.get("platform") == "gpu" else "Mosaic"
    kernels = f"; {t['mosaic_kernels']} Pallas/{lowering} kernel calls in the program" if t and m else ""
    lines.append(f"compiled by {compiler} in {r['compile_seconds']:.1f} s{kernels}")
    if r.get("roofline"):
        from vicuna_jax.hardware import chips, roofline

        lines += ["", *roofline.format_estimate(r["roofline"], chips.CHIPS[t["chip"]])]
    if r["policies"]:
        lines += ["", "remat policy                          activations (analytic)   compiled temps   "
                      "compiled total   fits"]
        for name, p in r["policies"].items():
            lines.append(f"  {name:36s} {_gb(p['analytic_activations'])} GiB        "
                         f"{_compiled_gb(p['compiled'], 'temp')} GiB     "
                         f"{_compiled_gb(p['compiled'], 'total')} GiB   {'yes' if p['fits'] else 'NO'}")
    lines.append(f"Analytic activations assume {'flash' if r['flash_attention'] else 'xla'} attention.")
    if r["platform"] == "cpu":
        scores = ("a Pallas flash kernel run in interpret mode" if r["simulate"] else
                  "the xla attention backend ([B, H, T, T] scores; try --simulate=gpu)")
        lines += ["", f"Compiled on CPU: temporaries follow XLA:CPU's fusion and buffer assignment and "
                      f"{scores}; XLA:CPU also computes bf16 elementwise ops in fp32. A GPU/TPU compile "
                      "fuses more and usually needs less (--topology compiles for TPU). Arguments and "
                      "outputs are exact for any backend."]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    from absl import flags

    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {argv[1:]}")
    from vicuna_jax.model.llama import REMAT_POLICIES

    f = flags.FLAGS
    policies = [p for p in f.policies.split(",") if p]
    for p in policies:
        if p not in REMAT_POLICIES:
            raise UserError(f"--policies: {unknown_name('policy', p, REMAT_POLICIES)}")
    report = plan(f.config, f.devices, f.hbm_gb, f.usable_fraction, policies, f.simulate or None,
                  f.topology or None, f.slices, f.roofline)
    print(format_report(report))
    if f.json:
        atomic_write_json(f.json, report, indent=1)


def _define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py).", lock_config=True)
    flags.DEFINE_integer("devices", None, "Devices to plan for (simulated on CPU); default: all visible.")
    flags.DEFINE_string("platform", None, "Force a JAX platform (e.g. cpu) before JAX starts.")
    flags.DEFINE_float("hbm_gb", None, "Memory per device, GiB (default: with --topology the chip's, as the "
                       "TPU compiler allows; else 80. H100/A100-80G: 80; H200: 141).")
    flags.DEFINE_float("usable_fraction", None, "Share of it the program may use (default 0.9: runtime, "
                       "fragmentation; JAX preallocates XLA_PYTHON_CLIENT_MEM_FRACTION=0.75 by default on "
                       "GPU. With --topology 1: the compiler's usable HBM is the budget already).")
    flags.DEFINE_enum("simulate", "", ["", "gpu", "tpu"], "Trace attention as that platform's Pallas flash "
                      "kernel (interpreted here), for temporaries closer to a GPU/TPU run.")
    flags.DEFINE_string("topology", "", "Compile for this TPU slice with the real TPU compiler, on this "
                        "host (needs libtpu, not a TPU): a Cloud TPU name (v4-8, v5e-1/4/8/16..., "
                        "v5p-8/16/.../128..., v6e-1/4/8...) or <generation>:<chips per dimension> "
                        "(v5p:2x2x1).")
    flags.DEFINE_integer("slices", 1, "With --topology: this many slices (multi-slice over the data-center "
                         "network).")
    flags.DEFINE_boolean("roofline", True, "With --topology: also a roofline estimate of the step time and "
                         "MFU (four more small compiles; --noroofline skips them).")
    flags.DEFINE_string("policies", "", "Comma list of remat policies to compile and compare as well.")
    flags.DEFINE_string("json", "", "Also write the report as JSON here.")
    flags.mark_flags_as_required(["config"])


if __name__ == "__main__":
    from vicuna_jax.cli import run

    _early_env(sys.argv)
    from vicuna_jax.train.config import HELP  # imports JAX: after _early_env

    run(main, _define_flags, config_help=HELP)
