"""The training run: `train(config, workdir)`, in banner sections Mesh / Data / Model, Shard, Step /
Checkpoint / Loop. Starting in a workdir that has checkpoints resumes from the latest complete one (params,
optimizer, step, data position), so the same command restarts a preempted run; SIGTERM/SIGINT save a
checkpoint and stop.

The loop itself is short: one step, then the periodic actions due after it (log, eval, checkpoint, stop).
Metrics of step n are fetched from the device after step n+1 is dispatched, so the host never waits for a
step it does not need to.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import time
from typing import Any

import jax
import ml_collections
from absl import logging

from vicuna_jax import parallel
from vicuna_jax.checkpoint import CHAT_FORMAT_ITEM
from vicuna_jax.cli import UserError
from vicuna_jax.convert import load_hf, save_hf
from vicuna_jax.data.chat_format import ChatFormat
from vicuna_jax.data.tokenizer import copy_tokenizer, load_tokenizer
from vicuna_jax.lora import base as lora_base
from vicuna_jax.lora import run as lora_run
from vicuna_jax.train import config as config_lib
from vicuna_jax.train import settings
from vicuna_jax.train.checkpointing import TrainCheckpoints, init_from_checkpoint
from vicuna_jax.train.config import TrainConfig
from vicuna_jax.train.data import (
    check_dataset,
    eval_batches,
    prepare_data,
    resolve_chat_format,
    resolve_tokenizer,
    train_iterator,
)
from vicuna_jax.train.metrics import MetricsWriter, flops_per_token, peak_flops
from vicuna_jax.train.setup import TrainSetup, build
from vicuna_jax.train.step import StepMetrics
from vicuna_jax.train.workdir import WorkdirLock, check_links, ensure_workdir

HF_EXPORT_DIR = "hf"  # workdir/hf: the Hugging Face export written when training finishes


class TrainingError(UserError):
    """The run cannot continue (e.g. the loss became NaN); the last good checkpoint is kept."""


@dataclasses.dataclass(frozen=True)
class StepReport:
    """One trained step as logged: the step's metrics plus its wall time and throughput."""

    step: int
    loss: float
    grad_norm: float
    lr: float
    target_tokens: float
    tokens_per_sec: float
    step_seconds: float
    packing_efficiency: float
    mfu: float | None = None

    def row(self) -> dict[str, float]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "step" and v is not None}


@dataclasses.dataclass
class RunSummary:
    """What `train` returns (the CLI writes it to workdir/run_summary.json and prints a summary of it)."""

    start_step: int
    total_steps: int
    final_step: int = 0
    first_loss: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    stopped_by: str | None = None
    already_complete: bool | None = None
    hf_dir: str | None = None
    adapter_dir: str | None = None  # LoRA runs: the PEFT adapter directory
    tokens: int | None = None  # non-padding tokens in the batches this run trained on
    target_tokens: int | None = None  # of those, the ones the loss was taken on
    seconds: float | None = None  # wall time of this run's loop (compilation, evaluation, export included)
    param_shardings: dict[str, str] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


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


def train(config: ml_collections.ConfigDict | TrainConfig, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) training in `workdir`, holding its lock; returns the run summary as a dict."""
    if isinstance(config, TrainConfig):
        cfg = config
    else:
        parallel.maybe_initialize_distributed(config.distributed)
        cfg = config_lib.load(config, jax.device_count())
    ensure_workdir(workdir)
    with WorkdirLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext():
        return _train(cfg, workdir)


def _train(cfg: TrainConfig, workdir: str) -> dict[str, Any]:
    check_links(workdir)
    settings.check_and_record(cfg, workdir, write=jax.process_index() == 0)  # before anything is touched

    # ------------------------------------------------------------------ Mesh
    mesh = parallel.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    is_main = jax.process_index() == 0
    logging.info("mesh %s over %d devices (%s), %d process(es)", dict(mesh.shape), jax.device_count(),
                 jax.devices()[0].device_kind, jax.process_count())

    # ------------------------------------------------------------------ Data
    tokenizer_path = resolve_tokenizer(cfg)
    try:
        tokenizer = load_tokenizer(tokenizer_path)
    except (OSError, ValueError) as e:
        raise UserError(f"config.tokenizer: {e}") from None
    fmt = resolve_chat_format(cfg, workdir, tokenizer)  # the one chat format of this run
    logging.info("chat format: %s", fmt.describe())
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise UserError(f"config.tokenizer: {tokenizer_path} has {tokenizer.vocab_size} pieces but the "
                        f"model's vocab_size is {cfg.model.vocab_size}")
    dataset_dir = prepare_data(cfg, workdir, fmt)
    fmt = check_dataset(cfg, dataset_dir, fmt)
    train_iter = train_iterator(cfg, dataset_dir)
    steps_per_epoch = train_iter.batches_in_epoch(0)
    if steps_per_epoch == 0:
        raise UserError(f"config.batch_size: the training split of {dataset_dir} fills fewer than one "
                        f"global batch of {cfg.batch_size} rows x {cfg.seq_len} tokens; lower batch_size or "
                        "add data")
    total_steps = cfg.total_steps if cfg.total_steps > 0 else max(1, round(cfg.num_epochs * steps_per_epoch))
    logging.info("data: %s, %d batches of %d x %d per epoch (packing efficiency %.3f); %d steps",
                 dataset_dir, steps_per_epoch, cfg.batch_size, cfg.seq_len, train_iter.packing_efficiency(0),
                 total_steps)
    if is_main:
        # The workdir keeps the tokenizer (an HF one with the training chat template) and the chat format
        # record for generate/serve/convert; every checkpoint carries the record too.
        copy_tokenizer(tokenizer_path, workdir, fmt.chat_template)
        fmt.write(workdir)

    # ------------------------------------------------------------------ Model, Shard, Step
    setup = build(cfg, mesh, total_steps)
    logging.info("model: %.1fM parameters, %s compute, %s params, remat=%s, scan=%s, attention=%s",
                 cfg.model.num_params() / 1e6, cfg.run.dtype, cfg.run.param_dtype, cfg.run.remat_policy,
                 cfg.run.scan_layers, cfg.run.attention)

    # ------------------------------------------------------------------ Checkpoint
    base = lora_run.prepare(cfg, workdir, fmt) if setup.lora is not None else None
    checkpoint_root = os.path.join(workdir, "checkpoints")
    lora_base.check_workdir(checkpoint_root, cfg.lora, base)  # LoRA vs full, same base: before restoring
    records = {CHAT_FORMAT_ITEM: fmt.record(), **(lora_run.records(cfg, base) or {})}
    checkpoints = TrainCheckpoints(checkpoint_root, keep=cfg.keep_checkpoints, records=records)
    resumed = checkpoints.restore_latest(setup.abstract_state)
    latest = resumed[0] if resumed else None
    if resumed is not None:
        _, state, data_state = resumed
        if base is not None:
            state = state.replace(frozen=setup.lora.place_frozen(base.params))
        try:
            train_iter.set_state(data_state)
        except ValueError as e:
            raise UserError(f"checkpoint step {latest} in {checkpoints.directory}: its data position does "
                            f"not fit this run's data or data settings ({e}); rerun with the settings it was "
                            "saved with, or start a new run in a new workdir (config.init_from can start it "
                            "from this checkpoint)") from None
        logging.info("resumed from %s/%d (epoch %d, batch %d)", checkpoints.directory, latest,
                     data_state["epoch"], data_state["batch_in_epoch"])
    elif base is not None:
        state = lora_run.initial_state(setup, base)
    elif cfg.init_from_hf:
        state = setup.init_state(load_hf(cfg.init_from_hf)[1])
        logging.info("initialised from %s", cfg.init_from_hf)
    elif cfg.init_from:
        state = setup.init_state(init_from_checkpoint(cfg.init_from, setup.abstract_state.params))
        logging.info("initialised from the weights of %s (step 0, fresh optimizer)", cfg.init_from)
    else:
        state = setup.init_state()
    if base is not None:
        base.params = None  # on the devices now; the merged export reads the base again
    start_step = int(state.step)
    summary = RunSummary(start_step=start_step, total_steps=total_steps, final_step=start_step)
    hf_dir = os.path.join(workdir, HF_EXPORT_DIR)
    exported = os.path.isfile(os.path.join(hf_dir, "config.json")) or not cfg.export_hf_at_end
    if start_step >= total_steps and exported and (base is None or lora_run.adapter_exported(workdir)):
        # Finished before: nothing to train, evaluate or export again.
        logging.info("this run is already complete: %d of %d steps trained%s", start_step, total_steps,
                     f", exported to {hf_dir}" if cfg.export_hf_at_end else "")
        checkpoints.close()
        summary.already_complete = True
        summary.hf_dir = hf_dir if cfg.export_hf_at_end else None
        summary.adapter_dir = os.path.join(workdir, lora_run.ADAPTER_DIR) if base is not None else None
        return summary.as_dict()

    # ------------------------------------------------------------------ Loop
    writer = MetricsWriter(workdir, enabled=is_main)
    reporter = _Reporter(setup, writer, summary, is_main, start_step, total_steps)
    has_validation = "validation" in train_iter.dataset.splits

    def evaluate(step: int) -> float | None:
        return _evaluate(setup, state, dataset_dir, writer, step) if has_validation else None

    data_state = train_iter.get_state()  # the loader position after the last batch trained on
    last_saved = start_step if latest is not None else -1
    step = start_step
    started = time.perf_counter()
    has_targets = False  # until a step of this run trains on a target token (then no more checks)
    try:
        with jax.set_mesh(mesh), _StopSignal() as stop:
            batch = setup.global_batch(next(train_iter)) if step < total_steps else None
            while step < total_steps:
                state, metrics = setup.train_step(state, batch)  # dispatched asynchronously
                step += 1
                data_state = train_iter.get_state()  # checkpoints resume after this step's batch
                if step < total_steps:
                    # Read, assemble and transfer the next batch while this step runs (the finite check
                    # below is the first thing that waits for it).
                    batch = setup.global_batch(next(train_iter))
                reporter.step_done(step, metrics)
                checkpoints.check()  # an asynchronous save that failed stops the run here
                if not has_targets:  # waits for this step's metrics, until the first step with targets
                    has_targets = float(metrics.target_tokens) > 0
                    if not has_targets:
                        checkpoints.wait()
                        raise _no_targets_error(step, cfg, fmt)
                if not bool(metrics.finite):
                    checkpoints.wait()
                    raise _non_finite_error(step, metrics, checkpoints)
                if cfg.eval_every and step % cfg.eval_every == 0 and step < total_steps:
                    summary.eval_loss = evaluate(step)
                stop_now = parallel.any_process(stop.requested)
                if step % cfg.checkpoint_every == 0 or step == total_steps or stop_now:
                    checkpoints.save(step, state, data_state, cfg.model)
                    last_saved = step
                if stop_now:
                    logging.warning("stopping at step %d after %s (checkpoint saved)", step, stop.signal_name)
                    summary.stopped_by = stop.signal_name
                    break
            reporter.flush()
            if last_saved != step and step > start_step:
                checkpoints.save(step, state, data_state, cfg.model)
            checkpoints.wait()
            summary.final_step = step
            summary.param_shardings = {
                "/".join(str(getattr(k, "key", k)) for k in path): str(leaf.sharding.spec)
                for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]}
            if step >= total_steps and summary.stopped_by is None:
                if cfg.eval_every:
                    summary.eval_loss = evaluate(step)
                if base is not None:
                    summary.adapter_dir, summary.hf_dir = lora_run.export(
                        state, base, cfg, workdir, fmt, merged=cfg.export_hf_at_end)
                elif cfg.export_hf_at_end:
                    summary.hf_dir = export_hf(state.params, cfg, workdir, fmt)
            summary.seconds = time.perf_counter() - started
    finally:
        checkpoints.wait()  # a save in flight always completes, even when the run fails
        reporter.close()
        writer.close()
        checkpoints.close()
    return summary.as_dict()


class _Reporter:
    """Turns each step's device metrics into a `StepReport` one step late (so fetching them never stalls
    the device), logs every `log_every` steps, and keeps the summary's first and last loss."""

    def __init__(self, setup: TrainSetup, writer: MetricsWriter, summary: RunSummary, enabled: bool,
                 start: int, total: int):
        from tqdm import tqdm

        cfg = setup.cfg
        self.cfg, self.writer, self.summary = cfg, writer, summary
        self.slots = float(cfg.batch_size * cfg.seq_len)
        self.flops = flops_per_token(cfg.model, cfg.seq_len)
        self.peak = cfg.peak_flops_per_device or peak_flops(jax.devices()[0].device_kind, cfg.run.dtype)
        self.progress = tqdm(total=total, initial=start, disable=not enabled, file=sys.stderr,
                             dynamic_ncols=True, desc="train", unit="step")
        self.pending: tuple[int, StepMetrics, float] | None = None
        self.t_last = time.perf_counter()

    def step_done(self, step: int, metrics: StepMetrics) -> None:
        now = time.perf_counter()
        self.flush()
        self.pending = (step, metrics, now - self.t_last)
        self.t_last = now

    def flush(self) -> None:
        if self.pending is None:
            return
        step, m, seconds = self.pending
        self.pending = None
        tokens_per_sec = self.slots / seconds if seconds > 0 else 0.0
        report = StepReport(
            step=step, loss=float(m.loss), grad_norm=float(m.grad_norm), lr=float(m.lr),
            target_tokens=float(m.target_tokens), tokens_per_sec=tokens_per_sec, step_seconds=seconds,
            packing_efficiency=float(m.nonpad_tokens) / self.slots,
            mfu=tokens_per_sec * self.flops / (self.peak * jax.device_count()) if self.peak else None)
        self.summary.loss = report.loss
        self.summary.tokens = (self.summary.tokens or 0) + int(m.nonpad_tokens)
        self.summary.target_tokens = (self.summary.target_tokens or 0) + int(m.target_tokens)
        if self.summary.first_loss is None:
            self.summary.first_loss = report.loss
        self.progress.update(1)
        self.progress.set_postfix(loss=f"{report.loss:.3f}", tok_s=f"{tokens_per_sec:,.0f}")
        if step % self.cfg.log_every == 0 or step == 1:
            self.writer.write(step, report.row())

    def close(self) -> None:
        self.progress.close()


def _evaluate(setup: TrainSetup, state: Any, dataset_dir: str, writer: MetricsWriter, step: int) -> float:
    """Token-weighted loss over the validation split."""
    loss_sum, count = 0.0, 0.0
    for local in eval_batches(setup.cfg, dataset_dir):
        s, n = setup.eval_step(state, setup.global_batch(local))
        loss_sum, count = loss_sum + float(s), count + float(n)
    value = loss_sum / max(count, 1.0)
    writer.write(step, {"eval_loss": value, "eval_target_tokens": count})
    logging.info("step %d: eval loss %.4f over %d target tokens", step, value, count)
    return value


def _no_targets_error(step: int, cfg: TrainConfig, fmt: ChatFormat) -> TrainingError:
    return TrainingError(
        f"step {step}: the batch holds no target (assistant) tokens, so the run would train on nothing "
        f"(loss 0, no gradient); stopped without saving. Check config.seq_len ({cfg.seq_len}) against the "
        f"data's max_length ({fmt.max_length}), the chat format ({fmt.template}) and that the data has "
        "assistant replies.")


def _non_finite_error(step: int, metrics: StepMetrics, checkpoints: TrainCheckpoints) -> TrainingError:
    return TrainingError(
        f"step {step}: loss or gradient is not finite (loss={float(metrics.loss)}, "
        f"grad_norm={float(metrics.grad_norm)}); stopped without applying it. The last good checkpoint is "
        f"step {checkpoints.latest_step()} in {checkpoints.directory}. Lower the learning rate or check the "
        "data, then rerun the same command to resume.")


def export_hf(params: Any, cfg: TrainConfig, workdir: str, fmt: ChatFormat) -> str:
    """Writes workdir/hf from the final parameters (process 0; every process takes part in the gather)."""
    params = parallel.gather_to_host(params)
    out = os.path.join(workdir, HF_EXPORT_DIR)
    if jax.process_index() == 0:
        save_hf(params, cfg.model, out, dtype=cfg.export_dtype, chat_format=fmt, overwrite=True)
        logging.info("exported Hugging Face model to %s", out)
    parallel.sync_processes("export_hf")
    return out
