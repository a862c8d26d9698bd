"""The trainer's data: which tokenizer, preparing raw conversations into the workdir, and the loaders."""

from __future__ import annotations

import contextlib
import os
import sys

import jax

from vicuna_jax import parallel
from vicuna_jax.cli import UserError
from vicuna_jax.train.config import BUNDLED_DATA, TrainConfig


def resolve_tokenizer(cfg: TrainConfig) -> str:
    """`tokenizer` when set; else the HF model's own tokenizer (tokenizer.json, else tokenizer.model); else
    the bundled demo tokenizer."""
    from vicuna_jax.data import bundled_tokenizer_path
    from vicuna_jax.data.tokenizer import find_tokenizer_in

    if cfg.tokenizer:
        return cfg.tokenizer
    if cfg.init_from_hf:
        path = find_tokenizer_in(os.path.abspath(cfg.init_from_hf))
        if path is None:
            raise UserError(f"config.tokenizer: {cfg.init_from_hf} has no tokenizer.json or tokenizer.model; "
                            "set config.tokenizer")
        return path
    return bundled_tokenizer_path()


def prepare_data(cfg: TrainConfig, workdir: str, tokenizer_path: str) -> str:
    """A prepared dataset directory: `data.path` itself, or raw data prepared into workdir/data (by process
    0; the others wait for it)."""
    from vicuna_jax.data.prepare import prepare_dataset
    from vicuna_jax.data.store import META_FILE

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
            prepare_dataset(path, out, tokenizer=tokenizer_path, max_length=cfg.seq_len + 1,
                            template=cfg.data.template, validation_fraction=cfg.data.validation_fraction,
                            seed=cfg.seed)
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


def check_dataset(cfg: TrainConfig, dataset_dir: str, tokenizer) -> None:
    """Before the model is built: the data was encoded with this run's tokenizer and has target tokens.

    Data encoded by another tokenizer holds ids the model would read as other words (or past its
    vocabulary), and a split without target tokens trains on nothing: both fail here, naming what differs."""
    from vicuna_jax.data.store import PreparedDataset

    meta = PreparedDataset(dataset_dir).meta
    options = meta.get("options")
    stored = options.get("tokenizer_fingerprint") if isinstance(options, dict) else None
    if stored is not None and stored != tokenizer.fingerprint:
        raise UserError(
            f"config.data.path: {dataset_dir} was prepared with the tokenizer {meta.get('tokenizer', '?')} "
            f"(fingerprint {stored}), but this run uses {tokenizer.model_path} (fingerprint "
            f"{tokenizer.fingerprint}); prepare the data again with the run's tokenizer")
    train = meta.get("splits", {}).get("train", {})
    if train.get("examples", 0) == 0:
        raise UserError(f"config.data.path: {dataset_dir} has no training conversations")
    if train.get("target_tokens", 1) == 0:
        raise UserError(
            f"config.data.path: the {train['examples']} training conversations in {dataset_dir} have no "
            f"target (assistant) tokens at seq_len {cfg.seq_len}: every reply was cut off. Raise "
            "config.seq_len.")
