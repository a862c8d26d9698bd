"""Data preparation on many cores: cleaning and encoding in worker processes, results in input order.

Records go to the workers in chunks and come back in submission order, so a dataset prepared with N workers
is identical to one prepared with one (the cache key does not depend on N). What must see every record in
order stays in the main process: de-duplication (`Cleaner.deduplicate`) and the writing. Workers are started
with "spawn" (never fork a process that may hold JAX's or the Rust tokenizer's threads) and each runs the
Rust tokenizer single-threaded, one worker per core.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

# workers -> clean, never the other way: `Cleaner.__call__` is handed a pool and calls its `clean_chunks`.
from vicuna_jax.data.clean import Cleaner, Rejected

# What the initializer of each worker process sets up (a Cleaner, or the tokenizer and encoding options).
_STATE: dict[str, Any] = {}
AUTO_PARALLEL_BYTES = 4 << 20  # inputs this large use every core when num_workers is 0 ("auto")


def resolve_workers(num_workers: int, input_path: str | None = None) -> int:
    """num_workers > 0 as given; 0 = auto: every core for an input over AUTO_PARALLEL_BYTES, else one."""
    if num_workers > 0:
        return num_workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if input_path is not None and os.path.getsize(input_path) < AUTO_PARALLEL_BYTES:
        return 1
    return max(1, cores)


def chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


class WorkerPool:
    """`workers` processes (spawned once, for every stage of a prepare) or, with one worker, this process.

    `clean_config` and `encode_options` (tokenizer, max_length, template, long_exchange) set up each worker
    for `clean_chunk` and `encode_chunk`. `map` streams chunks through in order, with at most
    `window * workers` chunks in flight.
    """

    def __init__(self, workers: int, clean_config: Any = None, encode_options: tuple | None = None,
                 window: int = 4):
        self.workers, self.window = max(1, workers), window
        self._setup = (clean_config, encode_options)
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> WorkerPool:
        if self.workers > 1:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_init_worker,
                                             initargs=self._setup)
        else:
            _setup(*self._setup)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        _STATE.clear()

    def map(self, fn: Callable[[Any], Any], chunks: Iterable[Any]) -> Iterator[Any]:
        if self._pool is None:
            yield from map(fn, chunks)
            return
        pending: collections.deque = collections.deque()
        for chunk in chunks:
            pending.append(self._pool.submit(fn, chunk))
            if len(pending) >= self.window * self.workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def clean_chunks(self, raws: Iterable[Any], size: int) -> Iterator[tuple[list, list, Counter]]:
        """(the raw records, per record the cleaned record or the Rejected, the fixes counted) for each chunk
        of `size` records, in order: `Cleaner.transform` run by `clean_chunk` in the workers (what must
        see every record in order, de-duplication, stays with the caller)."""
        in_flight: collections.deque = collections.deque()  # the raw records of the chunks in flight

        def remember(chunks):
            for chunk in chunks:
                in_flight.append(chunk)
                yield chunk

        for results, fixes in self.map(clean_chunk, remember(chunked(raws, size))):
            yield in_flight.popleft(), results, fixes


def ordered_map(fn: Callable[[Any], Any], chunks: Iterable[Any], workers: int, clean_config: Any = None,
                encode_options: tuple | None = None) -> Iterator[Any]:
    """fn(chunk) for each chunk, in order, in a pool of its own (see `WorkerPool`)."""
    with WorkerPool(workers, clean_config, encode_options) as pool:
        yield from pool.map(fn, chunks)


def _init_worker(clean_config: Any, encode_options: tuple | None) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker: the workers are the parallelism
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    _setup(clean_config, encode_options)


def _setup(clean_config: Any, encode_options: tuple | None) -> None:
    if clean_config is not None:
        _STATE["cleaner"] = Cleaner(dataclasses.replace(clean_config, dedup=False))
    if encode_options is not None:
        tokenizer, max_length, template, long_exchange = encode_options
        _STATE.update(tokenizer=tokenizer, max_length=max_length, template=template,
                      long_exchange=long_exchange)


# ------------------------------------------------------------------ cleaning


def clean_chunk(raws: list) -> tuple[list, Counter]:
    """(per record: the cleaned record or the Rejected, the fixes counted on this chunk)."""
    cleaner = _STATE["cleaner"]
    cleaner.report.fixes = Counter()
    out: list = []
    for raw in raws:
        try:
            out.append(cleaner.transform(raw))
        except Rejected as r:
            out.append(r)
    return out, cleaner.report.fixes


# ------------------------------------------------------------------ encoding


def encode_chunk(records: list[dict | str]) -> tuple[list, Counter]:
    """(per record: its pieces (id, conversations as JSON text, input_ids, loss_mask) or the AlignmentError
    that rejected it, split statistics). Records may be JSON lines.

    Whole conversations are encoded in one batched tokenizer call; only those longer than `max_length` are
    split (and re-encoded piece by piece)."""
    from vicuna_jax.data.chat_encode import AlignmentError
    from vicuna_jax.data.encode import encode_conversations
    from vicuna_jax.data.split import split_and_encode

    s = _STATE
    stats: Counter = Counter()
    records = [json.loads(r) if isinstance(r, str) else r for r in records]
    whole = encode_conversations([r["conversations"] for r in records], s["tokenizer"], s["template"])
    out: list = []
    for record, encoded in zip(records, whole, strict=True):
        try:
            if isinstance(encoded, Exception):
                raise encoded
            pieces = split_and_encode(record, s["tokenizer"], s["max_length"], s["template"],
                                      s["long_exchange"], stats, encoded=encoded)
            # The stored text is made here too: JSON encoding is work the main process need not do.
            out.append([(p["id"], json.dumps(p["conversations"], ensure_ascii=False), ids, mask)
                        for p, ids, mask in pieces])
        except AlignmentError as e:
            out.append(e)
    return out, stats
