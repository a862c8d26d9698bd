"""Vicuna fine-tuning: `python -m vicuna_jax.train --config=configs/<name>.py --workdir=DIR [--config.k=v]`.

One entry point in banner sections: Mesh, Data, Model, Shard, Step, Checkpoint, Loop. Starting in a workdir
that has checkpoints resumes from the latest complete one (params, optimizer, step, RNG, data position), so
the same command restarts a preempted run; SIGTERM/SIGINT save a checkpoint and exit 0.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vicuna_jax import checkpoint as ckpt_lib
from vicuna_jax import parallel, train_config
from vicuna_jax import step as step_lib
from vicuna_jax.cli import UserError
from vicuna_jax.data.pack import BATCH_KEYS
from vicuna_jax.metrics import MetricsWriter, flops_per_token, peak_flops
from vicuna_jax.model.config import LlamaConfig
from vicuna_jax.model.llama import abstract_model, build_model, model_params


class TrainingError(UserError):
    """The run cannot continue (e.g. the loss became NaN); the last good checkpoint is kept."""


class _StopSignal:
    """SIGTERM/SIGINT set a flag the loop checks between steps; a second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignal:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. called from a test thread)
                pass
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        logging.warning("%s received: saving a checkpoint after this step, then exiting", self.signal_name)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def maybe_initialize_distributed(mode: str) -> None:
    """`jax.distributed.initialize()` for multi-host runs: TPU pods and SLURM are detected by JAX itself;
    otherwise JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID name the cluster."""
    env = os.environ
    explicit = "JAX_COORDINATOR_ADDRESS" in env
    detected = explicit or int(env.get("SLURM_NTASKS", "1")) > 1 or "TPU_WORKER_HOSTNAMES" in env \
        or "MEGASCALE_COORDINATOR_ADDRESS" in env
    if mode == "off" or (mode == "auto" and not detected):
        return
    if jax.distributed.is_initialized():
        return
    if explicit:
        if env.get("JAX_PLATFORMS", "") == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                                   num_processes=int(env["JAX_NUM_PROCESSES"]),
                                   process_id=int(env["JAX_PROCESS_ID"]))
    else:
        jax.distributed.initialize()
    logging.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def resolve_tokenizer(c: ml_collections.ConfigDict) -> str:
    from vicuna_jax.data import bundled_tokenizer_path

    if c.tokenizer:
        return c.tokenizer
    if c.init_from_hf:
        path = os.path.join(c.init_from_hf, "tokenizer.model")
        if not os.path.isfile(path):
            raise UserError(f"config.tokenizer: {c.init_from_hf} has no tokenizer.model; "
                            "set config.tokenizer")
        return path
    return bundled_tokenizer_path()


def prepare_data(c: ml_collections.ConfigDict, workdir: str, tokenizer_path: str) -> str:
    """A prepared dataset directory: `data.path` itself, or raw data prepared into workdir/data."""
    from vicuna_jax.data.prepare import prepare_dataset
    from vicuna_jax.data.store import META_FILE

    path = c.data.path
    if path == train_config.BUNDLED_DATA:
        from vicuna_jax.data.prepare import bundled_sample_path

        path = bundled_sample_path()
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, META_FILE)):
            raise UserError(f"config.data.path: {path} is a directory but not a prepared dataset "
                            f"(no {META_FILE})")
        return path
    out = os.path.join(workdir, "data")
    if jax.process_index() == 0:
        # tensorflow-datasets prints progress to stdout; stdout is for the run summary.
        with contextlib.redirect_stdout(sys.stderr):
            prepare_dataset(path, out, tokenizer=tokenizer_path, max_length=c.seq_len + 1,
                            template=c.data.template, validation_fraction=c.data.validation_fraction,
                            seed=c.seed)
    _sync("prepare_data")
    return out


def param_shardings(abstract_params: Any, mesh: jax.sharding.Mesh, model: nnx.Module) -> Any:
    """NamedShardings from each parameter's logical axes through `parallel.LOGICAL_RULES`.

    A dimension that does not divide evenly over its mesh axes is replicated instead (with a warning)."""
    specs = nnx.to_pure_dict(nnx.get_partition_spec(nnx.state(model, nnx.Param)))

    def to_sharding(logical: P, leaf: jax.ShapeDtypeStruct) -> NamedSharding:
        spec = list(parallel.logical_to_spec(tuple(logical)))
        for dim, axes in enumerate(spec):
            if axes is None:
                continue
            size = math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))
            if leaf.shape[dim] % size:
                logging.warning("dimension %d (%d) of a %s parameter does not divide over mesh axes %s (%d); "
                                "replicating it", dim, leaf.shape[dim], leaf.shape, axes, size)
                spec[dim] = None
        return NamedSharding(mesh, P(*spec))

    return jax.tree.map(to_sharding, specs, abstract_params, is_leaf=lambda x: isinstance(x, P))


def opt_state_shardings(abstract_opt: Any, params_sh: Any, abstract_params: Any,
                        mesh: jax.sharding.Mesh) -> Any:
    """Optimizer-state leaves that mirror a parameter (Adam moments) get its sharding; others replicate."""
    by_path = {}
    for (path, sh), (_, leaf) in zip(jax.tree_util.tree_flatten_with_path(params_sh)[0],
                                     jax.tree_util.tree_flatten_with_path(abstract_params)[0], strict=True):
        by_path[tuple(str(getattr(k, "key", k)) for k in path)] = (sh, leaf.shape)
    replicated = NamedSharding(mesh, P())

    def pick(path, leaf):
        names = tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
        for start in range(len(names)):
            hit = by_path.get(names[start:])
            if hit is not None and hit[1] == leaf.shape:
                return hit[0]
        return replicated

    return jax.tree_util.tree_map_with_path(pick, abstract_opt)


def _global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()
            if k in BATCH_KEYS}


def train(c: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) training; returns a summary of the run."""
    # ------------------------------------------------------------------ Mesh
    maybe_initialize_distributed(c.distributed)
    cfg: LlamaConfig = train_config.validate(c, jax.device_count())
    mesh = parallel.make_mesh(c.mesh.data, c.mesh.fsdp, c.mesh.tensor)
    is_main = jax.process_index() == 0
    logging.info("mesh %s over %d devices (%s), %d process(es)", dict(mesh.shape), jax.device_count(),
                 jax.devices()[0].device_kind, jax.process_count())
    os.makedirs(workdir, exist_ok=True)

    # ------------------------------------------------------------------ Data
    from vicuna_jax.data.loader import make_eval_batches, make_train_iterator
    from vicuna_jax.data.tokenizer import load_tokenizer

    tokenizer_path = resolve_tokenizer(c)
    tokenizer = load_tokenizer(tokenizer_path)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise UserError(f"config.tokenizer: {tokenizer_path} has {tokenizer.vocab_size} pieces but the "
                        f"model's vocab_size is {cfg.vocab_size}")
    dataset_dir = prepare_data(c, workdir, tokenizer_path)
    train_iter = make_train_iterator(dataset_dir, split="train", seq_len=c.seq_len,
                                     global_batch_size=c.batch_size, seed=c.seed, packing=c.data.packing,
                                     window=c.data.window)
    steps_per_epoch = train_iter.batches_in_epoch(0)
    total_steps = c.total_steps if c.total_steps > 0 else max(1, int(round(c.num_epochs * steps_per_epoch)))
    logging.info("data: %s, %d batches of %d x %d per epoch (packing efficiency %.3f); %d steps",
                 dataset_dir, steps_per_epoch, c.batch_size, c.seq_len, train_iter.packing_efficiency(0),
                 total_steps)
    if is_main:
        shutil.copyfile(tokenizer_path, os.path.join(workdir, ckpt_lib.TOKENIZER_FILE))
        with open(os.path.join(workdir, "train_config.json"), "w") as f:
            json.dump(c.to_dict(), f, indent=2, default=str)

    # ------------------------------------------------------------------ Model
    options = dict(dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype), scan_layers=c.scan_layers,
                   remat_policy=c.remat_policy, attention_impl=c.attention)
    abstract = abstract_model(cfg, **options)
    graphdef = nnx.graphdef(abstract)
    abstract_params = model_params(abstract)
    logging.info("model: %.1fM parameters, %s compute, %s params, remat=%s, scan=%s, attention=%s",
                 cfg.num_params() / 1e6, c.dtype, c.param_dtype, c.remat_policy, c.scan_layers, c.attention)

    # ------------------------------------------------------------------ Shard
    params_sh = param_shardings(abstract_params, mesh, abstract)
    opt = step_lib.OptimizerConfig(**c.optimizer.to_dict())
    tx = step_lib.make_optimizer(opt, total_steps)
    schedule = step_lib.lr_schedule(opt, total_steps)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    opt_sh = opt_state_shardings(abstract_opt, params_sh, abstract_params, mesh)
    replicated = NamedSharding(mesh, P())
    state_sh = {"params": params_sh, "opt_state": opt_sh, "step": replicated, "rng": replicated}
    batch_sh = NamedSharding(mesh, parallel.logical_to_spec(("batch", "length")))

    # ------------------------------------------------------------------ Step
    train_step = jax.jit(step_lib.make_train_step(graphdef, tx, schedule, c.grad_accum_steps,
                                                  c.loss_chunk_size),
                         in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, replicated),
                         donate_argnums=(0,))
    eval_step = jax.jit(step_lib.make_eval_step(graphdef, c.loss_chunk_size),
                        in_shardings=(params_sh, batch_sh), out_shardings=replicated)

    def init_state() -> dict[str, Any]:
        if c.init_from_hf:
            from vicuna_jax.convert import load_hf

            _, host_params = load_hf(c.init_from_hf)
            def place(x, sharding, want):
                return jax.make_array_from_callback(want.shape, sharding,
                                                    lambda idx: np.asarray(x[idx], want.dtype))

            params = jax.tree.map(place, host_params, params_sh, abstract_params)
            logging.info("initialised from %s", c.init_from_hf)
        else:
            params = jax.jit(lambda: model_params(build_model(cfg, seed=c.seed, **options)),
                             out_shardings=params_sh)()
        opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)
        return {"params": params, "opt_state": opt_state,
                "step": jax.device_put(jnp.zeros((), jnp.int32), replicated),
                "rng": jax.device_put(jax.random.key_data(jax.random.key(c.seed)), replicated)}

    # ------------------------------------------------------------------ Checkpoint
    manager = ckpt_lib.TrainCheckpoints(os.path.join(workdir, "checkpoints"), keep=c.keep_checkpoints)
    latest = manager.latest_step()
    if latest is not None:
        abstract_state = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            {"params": abstract_params, "opt_state": abstract_opt,
             "step": jax.ShapeDtypeStruct((), jnp.int32),
             "rng": jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))},
            state_sh)
        state, data_state = manager.restore(latest, abstract_state)
        train_iter.set_state(data_state)
        logging.info("resumed from %s/%d (epoch %d, batch %d)", manager.directory, latest,
                     data_state["epoch"], data_state["batch_in_epoch"])
    else:
        state = init_state()
    start_step = int(state["step"])

    # ------------------------------------------------------------------ Loop
    writer = MetricsWriter(workdir, enabled=is_main, resume_step=start_step)
    flops = flops_per_token(cfg, c.seq_len)
    peak = c.peak_flops_per_device or peak_flops(jax.devices()[0].device_kind, c.dtype)
    summary: dict[str, Any] = {"start_step": start_step, "total_steps": total_steps}
    if start_step >= total_steps:
        logging.info("already trained %d of %d steps", start_step, total_steps)

    data_state = train_iter.get_state()  # the loader position after the last batch trained on

    def save(step: int) -> None:
        manager.save(step, state, data_state, cfg)

    def run_eval(step: int) -> float | None:
        if "validation" not in train_iter.dataset.splits:
            return None
        loss_sum, count = 0.0, 0.0
        batches = make_eval_batches(dataset_dir, seq_len=c.seq_len, global_batch_size=c.batch_size,
                                    packing=c.data.packing)
        for i, local in enumerate(batches):
            if c.eval_batches and i >= c.eval_batches:
                break
            s, n = eval_step(state["params"], _global_batch(local, batch_sh))
            loss_sum, count = loss_sum + float(s), count + float(n)
        value = loss_sum / max(count, 1.0)
        writer.write(step, {"eval_loss": value, "eval_target_tokens": count})
        logging.info("step %d: eval loss %.4f over %d target tokens", step, value, count)
        return value

    pending: tuple[int, dict[str, jax.Array], float, float] | None = None  # metrics fetched one step late
    last_saved = start_step if latest is not None else -1
    progress = _progress(is_main, start_step, total_steps)
    try:
        with jax.set_mesh(mesh), _StopSignal() as stop:
            step = start_step
            t_last = time.perf_counter()
            batch = _global_batch(next(train_iter), batch_sh) if step < total_steps else None
            while step < total_steps:
                state, metrics = train_step(state, batch)  # dispatched asynchronously
                step += 1
                data_state = train_iter.get_state()  # checkpoints resume after this step's batch
                if step < total_steps:
                    # Read, assemble and transfer the next batch while this step runs: the host work and
                    # the host-to-device copy no longer sit between two steps (the finite check below waits).
                    batch = _global_batch(next(train_iter), batch_sh)
                slots = float(c.batch_size * c.seq_len)
                now = time.perf_counter()
                if pending is not None:
                    _report(writer, progress, pending, c, flops, peak, summary)
                pending = (step, metrics, now - t_last, slots)
                t_last = now
                if not bool(metrics["finite"]):
                    manager.wait()
                    raise _non_finite_error(step, metrics, manager)
                if c.eval_every and step % c.eval_every == 0 and step < total_steps:
                    summary["eval_loss"] = run_eval(step)
                stop_now = _agree(stop.requested)
                if step % c.checkpoint_every == 0 or step == total_steps or stop_now:
                    save(step)
                    last_saved = step
                if stop_now:
                    logging.warning("stopping at step %d after %s (checkpoint saved)", step, stop.signal_name)
                    summary["stopped_by"] = stop.signal_name
                    break
            if pending is not None:
                _report(writer, progress, pending, c, flops, peak, summary)
            if last_saved != step and step > start_step:
                save(step)
            manager.wait()
            summary["final_step"] = step
            summary["param_shardings"] = {
                "/".join(str(getattr(k, "key", k)) for k in path): str(leaf.sharding.spec)
                for path, leaf in jax.tree_util.tree_flatten_with_path(state["params"])[0]}
            if step >= total_steps and "stopped_by" not in summary:
                if c.eval_every:
                    summary["eval_loss"] = run_eval(step)
                if c.export_hf_at_end:
                    summary["hf_dir"] = export_hf(state["params"], cfg, workdir, tokenizer_path, c)
    finally:
        manager.wait()  # a save in flight always completes, even when the run fails
        progress.close()
        writer.close()
        manager.close()
    return summary


def _non_finite_error(step: int, metrics: dict[str, jax.Array],
                      manager: ckpt_lib.TrainCheckpoints) -> TrainingError:
    return TrainingError(
        f"step {step}: loss or gradient is not finite (loss={float(metrics['loss'])}, "
        f"grad_norm={float(metrics['grad_norm'])}); stopped without applying it. The last good checkpoint is "
        f"step {manager.latest_step()} in {manager.directory}. Lower the learning rate or check the data, "
        "then rerun the same command to resume.")


def _agree(flag: bool) -> bool:
    """All processes stop at the same step: any one that got a signal stops everyone."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.max(multihost_utils.process_allgather(np.asarray([flag], np.int32))))


def _progress(enabled: bool, start: int, total: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, disable=not enabled, file=sys.stderr, dynamic_ncols=True,
                desc="train", unit="step")


def _report(writer: MetricsWriter, progress: Any, pending: tuple, c: ml_collections.ConfigDict, flops: float,
            peak: float | None, summary: dict[str, Any]) -> None:
    step, metrics, seconds, slots = pending
    m = {k: float(v) for k, v in metrics.items() if k != "finite"}
    tokens_per_sec = slots / seconds if seconds > 0 else 0.0
    m["tokens_per_sec"] = tokens_per_sec
    m["step_seconds"] = seconds
    m["packing_efficiency"] = m.pop("nonpad_tokens") / slots
    if peak:
        m["mfu"] = tokens_per_sec * flops / (peak * jax.device_count())
    summary["loss"] = m["loss"]
    summary.setdefault("first_loss", m["loss"])
    progress.update(1)
    progress.set_postfix(loss=f"{m['loss']:.3f}", tok_s=f"{tokens_per_sec:,.0f}")
    if step % c.log_every == 0 or step == 1:
        writer.write(step, m)


def export_hf(params: Any, cfg: LlamaConfig, workdir: str, tokenizer_path: str,
              c: ml_collections.ConfigDict) -> str:
    """Writes workdir/hf from the final parameters (process 0; every process takes part in the gather)."""
    from vicuna_jax.convert import save_hf

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        params = multihost_utils.process_allgather(params, tiled=True)
    out = os.path.join(workdir, "hf")
    if jax.process_index() == 0:
        save_hf(params, cfg, out, dtype=c.export_dtype, tokenizer=tokenizer_path, template=c.data.template,
                overwrite=True)
        logging.info("exported Hugging Face model to %s", out)
    _sync("export_hf")
    return out


def main(argv: list[str]) -> None:
    from absl import flags

    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    summary = train(f.config, f.workdir)
    if jax.process_index() == 0:
        print(json.dumps(summary, default=str))


def _define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py).", lock_config=True)
    flags.DEFINE_string("workdir", None, "Checkpoints, metrics, exports; rerun with it to resume.")
    flags.mark_flags_as_required(["config", "workdir"])


if __name__ == "__main__":
    from vicuna_jax.cli import run

    run(main, _define_flags)
