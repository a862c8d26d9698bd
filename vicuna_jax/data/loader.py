"""Training and evaluation batches from a prepared dataset: seeded per-epoch shuffle, packing, per-host rows.

The row plan of an epoch (which examples share which row, in which global batch) is computed from the stored
token lengths, the seed and the epoch alone, identically on every process. Process p of P then reads only rows
[p*B/P, (p+1)*B/P) of each global batch, so the global batch sequence does not depend on P. Reading and
assembling the local rows runs in a grain pipeline (threads, prefetch). The iterator state is two integers
(epoch, batch within epoch) plus a check of the settings, so `set_state` resumes at exactly the next batch.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator

import grain
import numpy as np

from vicuna_jax.data.formats import DataFormatError
from vicuna_jax.data.pack import assemble, batch_stats, plan_efficiency, plan_rows, slots_needed
from vicuna_jax.data.store import PreparedDataset


def _process_defaults(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    return process_index, process_count


def stored_lengths(dataset: PreparedDataset, split: str) -> np.ndarray:
    """The token count of every example of `split`: a plain 1-D integer array, never unpickled (np.load
    refuses object arrays); a damaged or foreign file is a DataFormatError naming it."""
    path = os.path.join(dataset.dataset_dir, f"lengths_{split}.npy")
    try:
        lengths = dataset.lengths(split)
    except (ValueError, OSError, EOFError) as e:  # pickled (object array), truncated, unreadable
        reason = "it holds pickled objects" if "allow_pickle" in str(e) else str(e).split("\n")[0]
        raise DataFormatError(f"{path}: not an array of token counts ({reason}); prepare the dataset "
                              "again") from None
    if lengths.ndim != 1 or not np.issubdtype(lengths.dtype, np.integer) or (lengths < 0).any():
        raise DataFormatError(f"{path}: not an array of token counts (a {lengths.ndim}-D {lengths.dtype} "
                              "array); prepare the dataset again")
    return lengths


class _RowReader:
    """Reads and assembles one host's rows of one batch (runs in grain worker threads)."""

    def __init__(self, source, seq_len: int, host_batch: int):
        self.source, self.seq_len, self.host_batch = source, seq_len, host_batch

    def __call__(self, rows: list[list[int]]) -> dict[str, np.ndarray]:
        flat = sorted({i for row in rows for i in row})
        records = self.source.__getitems__(flat) if flat else []
        by_index = {i: (r["input_ids"], r["loss_mask"]) for i, r in zip(flat, records, strict=True)}
        return assemble([[by_index[i] for i in row] for row in rows], self.seq_len, num_rows=self.host_batch)


class ChatBatchIterator:
    """Endless training batches (epoch after epoch); see the module docstring for the guarantees."""

    def __init__(
        self,
        dataset: PreparedDataset,
        *,
        split: str,
        seq_len: int,
        global_batch_size: int,
        seed: int,
        packing: bool = True,
        process_index: int | None = None,
        process_count: int | None = None,
        window: int = 2048,
        num_threads: int = 2,
        prefetch: int = 4,
    ):
        self.process_index, self.process_count = _process_defaults(process_index, process_count)
        if global_batch_size % self.process_count:
            raise ValueError(
                f"global_batch_size {global_batch_size} not divisible by {self.process_count} processes"
            )
        self.dataset, self.split = dataset, split
        self.seq_len, self.global_batch_size, self.seed = seq_len, global_batch_size, seed
        self.packing, self.window = packing, window
        self.host_batch = global_batch_size // self.process_count
        self.slots = slots_needed(stored_lengths(dataset, split), seq_len)
        if not (self.slots > 0).any():
            raise ValueError(f"split {split!r} of {dataset.dataset_dir} has no example with a target")
        self._reader = _RowReader(dataset.source(split), seq_len, self.host_batch)
        self._read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
        self._signature = self._make_signature()
        self.epoch, self.batch_in_epoch = 0, 0
        self._plan_epoch: int | None = None
        self._rows: list[list[int]] = []
        self._it: Iterator | None = None

    # -- planning ---------------------------------------------------------------------------------------
    def _make_signature(self) -> str:
        desc = [self.dataset.meta.get("key"), self.split, self.seq_len, self.global_batch_size, self.seed,
                self.packing, self.window]  # fmt: skip
        return hashlib.sha256(json.dumps(desc).encode()).hexdigest()[:16]

    def epoch_rows(self, epoch: int) -> list[list[int]]:
        """All rows of an epoch, in order (global: the same on every process). The plan is a pure function of
        (seed, epoch), so the last one is kept: the trainer asks for epoch 0's size, efficiency and rows."""
        if self._plan_epoch != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self.slots))
            self._rows = plan_rows(order, self.slots, self.seq_len, self.packing, self.window, rng)
            self._plan_epoch = epoch
        return self._rows

    def batches_in_epoch(self, epoch: int) -> int:
        return len(self.epoch_rows(epoch)) // self.global_batch_size

    def _start(self) -> None:
        """(Re)build the grain pipeline from the current position."""
        rows = self.epoch_rows(self.epoch)
        n = len(rows) // self.global_batch_size
        if n == 0:
            raise ValueError(
                f"split {self.split!r} packs into {len(rows)} rows, fewer than one global batch of "
                f"{self.global_batch_size}; use a smaller batch or more data"
            )
        b, p = self.host_batch, self.process_index
        local = [rows[j * self.global_batch_size + p * b : j * self.global_batch_size + (p + 1) * b]
                 for j in range(n)]  # fmt: skip
        ds = grain.MapDataset.source(local)[self.batch_in_epoch :].map(self._reader)
        self._it = iter(ds.to_iter_dataset(self._read_options))

    # -- iteration --------------------------------------------------------------------------------------
    def __iter__(self) -> ChatBatchIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        while True:
            if self._it is None:
                self._start()
            try:
                batch = next(self._it)
            except StopIteration:
                self.epoch, self.batch_in_epoch, self._it = self.epoch + 1, 0, None
                continue
            self.batch_in_epoch += 1
            return batch

    def get_state(self) -> dict:
        """JSON-serialisable position: the next batch is batch `batch_in_epoch` of `epoch`."""
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "signature": self._signature}

    def set_state(self, state: dict) -> None:
        if state.get("signature") != self._signature:
            raise ValueError(
                "loader state was saved with a different dataset or settings "
                f"(signature {state.get('signature')} != {self._signature})"
            )
        self.epoch, self.batch_in_epoch, self._it = int(state["epoch"]), int(state["batch_in_epoch"]), None

    def packing_efficiency(self, epoch: int = 0) -> float:
        return plan_efficiency(self.epoch_rows(epoch), self.slots, self.seq_len)


def make_train_iterator(
    dataset_dir: str,
    *,
    split: str = "train",
    seq_len: int,
    global_batch_size: int,
    seed: int = 0,
    packing: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    window: int = 2048,
    num_threads: int = 2,
) -> ChatBatchIterator:
    """Endless per-host training batches of a prepared dataset (packed, or one conversation per row)."""
    return ChatBatchIterator(
        PreparedDataset(dataset_dir), split=split, seq_len=seq_len, global_batch_size=global_batch_size,
        seed=seed, packing=packing, process_index=process_index, process_count=process_count, window=window,
        num_threads=num_threads,
    )  # fmt: skip


def make_eval_batches(
    dataset_dir: str,
    *,
    split: str = "validation",
    seq_len: int,
    global_batch_size: int,
    packing: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """One deterministic pass over `split`, every example once; the last batch is filled with padding rows
    (all-zero loss mask), so every process yields the same number of equally shaped batches."""
    process_index, process_count = _process_defaults(process_index, process_count)
    if global_batch_size % process_count:
        raise ValueError(f"global_batch_size {global_batch_size} not divisible by {process_count} processes")
    dataset = PreparedDataset(dataset_dir)
    slots = slots_needed(stored_lengths(dataset, split), seq_len)
    rows = plan_rows(np.arange(len(slots)), slots, seq_len, packing, window=len(slots) or 1)
    host = global_batch_size // process_count
    reader = _RowReader(dataset.source(split), seq_len, host)
    num_batches = -(-len(rows) // global_batch_size)
    for j in range(num_batches):
        start = j * global_batch_size + process_index * host
        yield reader(rows[start : start + host])


__all__ = ["ChatBatchIterator", "batch_stats", "make_eval_batches", "make_train_iterator"]
