"""The trainer's data: which tokenizer, preparing raw conversations into the workdir, and the loaders."""

from __future__ import annotations

import contextlib
import os
import sys

import jax

from vicuna_jax import parallel
from vicuna_jax.cli import UserError
from vicuna_jax.data import chat_format
from vicuna_jax.data.chat_format import ChatFormat
from vicuna_jax.data.store import META_FILE, PreparedDataset
from vicuna_jax.data.tokenizer import bundled_tokenizer_path, find_tokenizer_in, is_bundled_family_tokenizer
from vicuna_jax.train.config import BUNDLED_DATA, TrainConfig


def resolve_tokenizer(cfg: TrainConfig) -> str:
    """`tokenizer` when set; else the HF model's own tokenizer (tokenizer.json, else tokenizer.model); else
    the bundled demo tokenizer. A bundled family tokenizer (what configs/tiny_<family>.py set for training
    from scratch) gives way to `init_from_hf`'s own: a model is never trained with another model's ids."""
    if cfg.tokenizer and not (cfg.init_from_hf and is_bundled_family_tokenizer(cfg.tokenizer)):
        return cfg.tokenizer
    if cfg.init_from_hf:
        path = find_tokenizer_in(os.path.abspath(cfg.init_from_hf))
        if path is None:
            raise UserError(f"config.tokenizer: {cfg.init_from_hf} has no tokenizer.json or tokenizer.model; "
                            "set config.tokenizer")
        return path
    return bundled_tokenizer_path()


def resolve_chat_format(cfg: TrainConfig, workdir: str, tokenizer_path: str) -> ChatFormat:
    """The run's chat format, by the one rule (`data.chat_format`): what this workdir recorded when the run
    started, else what a prepared `data.path` records, else the tokenizer's own template, else vicuna_v1.1;
    an explicit `config.data.template` must agree with a record (one error line otherwise)."""
    recorded = chat_format.read_record(workdir)
    where = os.path.join(workdir, chat_format.FORMAT_FILE)
    if recorded is None and os.path.isfile(os.path.join(cfg.data.path, META_FILE)):
        recorded = PreparedDataset(cfg.data.path).meta.get("chat_format")
        where = f"the dataset {cfg.data.path}"
        if recorded is None:
            raise UserError(_old_dataset(cfg.data.path))
    return chat_format.resolve(tokenizer_path, cfg.data.template, recorded=recorded, recorded_in=where,
                               flag="config.data.template", on_conflict="error")


def _old_dataset(path: str) -> str:
    return (f"config.data.path: {path} was prepared by an older vicuna_jax (no chat format recorded in its "
            f"{META_FILE}); prepare it again (python -m vicuna_jax.data.prepare) or give the raw data file")


def prepare_data(cfg: TrainConfig, workdir: str, fmt: ChatFormat) -> str:
    """A prepared dataset directory: `data.path` itself, or raw data prepared into workdir/data in `fmt` (by
    process 0; the others wait for it)."""
    from vicuna_jax.data.prepare import prepare_dataset

    path = cfg.data.path
    if path == BUNDLED_DATA:
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
            prepare_dataset(path, out, tokenizer=fmt.tokenizer, max_length=cfg.seq_len + 1, template=fmt,
                            validation_fraction=cfg.data.validation_fraction, seed=cfg.seed)
    parallel.sync_processes("prepare_data")
    return out


def train_iterator(cfg: TrainConfig, dataset_dir: str):
    """The training split's batch iterator (shuffled, packed, this process's rows; resumable)."""
    from vicuna_jax.data.loader import make_train_iterator

    return make_train_iterator(dataset_dir, split="train", seq_len=cfg.seq_len,
                               global_batch_size=cfg.batch_size, seed=cfg.seed, packing=cfg.data.packing,
                               window=cfg.data.window)


def eval_batches(cfg: TrainConfig, dataset_dir: str):
    """The validation split's batches, in order (at most `eval_batches` of them when that is set)."""
    import itertools

    from vicuna_jax.data.loader import make_eval_batches

    batches = make_eval_batches(dataset_dir, seq_len=cfg.seq_len, global_batch_size=cfg.batch_size,
                                packing=cfg.data.packing)
    return itertools.islice(batches, cfg.eval_batches) if cfg.eval_batches else batches


def check_dataset(cfg: TrainConfig, dataset_dir: str, fmt: ChatFormat) -> ChatFormat:
    """Before the model is built: the data was made in this run's chat format (template text and tokenizer),
    fits a row, and has target tokens. Returns `fmt` with the dataset's max_length (what the run records).

    Data encoded by another tokenizer holds ids the model would read as other words; data in another template
    trains a format the export would not declare; examples longer than a row are cut to their first
    seq_len + 1 tokens (a long system prompt then leaves no reply); a split without target tokens trains on
    nothing. Each fails here with one line naming both values and the setting to change."""
    meta = PreparedDataset(dataset_dir).meta
    recorded = meta.get("chat_format")
    if recorded is None:
        raise UserError(_old_dataset(dataset_dir))
    fmt.check_matches(recorded, f"config.data.path: {dataset_dir}",
                      "prepare the data again in this run's format, or leave config.data.template=auto to "
                      "train in the dataset's")
    max_length = recorded.get("max_length")
    if isinstance(max_length, int) and max_length > cfg.seq_len + 1:
        raise UserError(
            f"config.seq_len: {dataset_dir} was prepared with max_length {max_length}, longer than a "
            f"training row (seq_len {cfg.seq_len} + 1 = {cfg.seq_len + 1}): its examples would be cut to "
            f"their first {cfg.seq_len + 1} tokens. Set config.seq_len={max_length - 1}, or prepare the "
            f"data with --max_length={cfg.seq_len + 1}")
    train = meta.get("splits", {}).get("train", {})
    if train.get("examples", 0) == 0:
        raise UserError(f"config.data.path: {dataset_dir} has no training conversations")
    if train.get("target_tokens", 1) == 0:
        raise UserError(
            f"config.data.path: the {train['examples']} training conversations in {dataset_dir} have no "
            f"target (assistant) tokens at seq_len {cfg.seq_len}: every reply was cut off. Raise "
            "config.seq_len.")
    return fmt.with_max_length(max_length if isinstance(max_length, int) else None)
