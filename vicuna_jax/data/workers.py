"""Data preparation on many cores: cleaning and encoding in worker processes, results in input order.

Records go to the workers in chunks and come back in submission order, so a dataset prepared with N workers
is identical to one prepared with one (the cache key does not depend on N). What must see every record in
order stays in the main process: de-duplication (`Cleaner.deduplicate`) and the writing. Workers are started
with "spawn" (never fork a process that may hold JAX's or the Rust tokenizer's threads) and each runs the
Rust tokenizer single-threaded, one worker per core.
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

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


def ordered_map(fn: Callable[[Any], Any], chunks: Iterable[Any], workers: int,
                initializer: Callable[..., None], initargs: tuple, window: int = 4) -> Iterator[Any]:
    """fn(chunk) for each chunk, in order; at most `window * workers` chunks in flight (streaming).
    One worker runs everything in this process (no pool, no pickling)."""
    if workers <= 1:
        initializer(*initargs)
        try:
            yield from map(fn, chunks)
        finally:
            _STATE.clear()
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                             initargs=(initializer, initargs)) as pool:
        pending: collections.deque = collections.deque()
        for chunk in chunks:
            pending.append(pool.submit(fn, chunk))
            if len(pending) >= window * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _init_worker(initializer: Callable[..., None], initargs: tuple) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker: the workers are the parallelism
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    initializer(*initargs)


# ------------------------------------------------------------------ cleaning


def init_clean(config) -> None:
    import dataclasses

    from vicuna_jax.data.clean import Cleaner

    _STATE["cleaner"] = Cleaner(dataclasses.replace(config, dedup=False))


def clean_chunk(raws: list) -> tuple[list, Counter]:
    """(per record: the cleaned record or the Rejected, the fixes counted on this chunk)."""
    from vicuna_jax.data.clean import Rejected

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


def init_encode(tokenizer, max_length: int, template: str, long_exchange: str) -> None:
    _STATE.update(tokenizer=tokenizer, max_length=max_length, template=template, long_exchange=long_exchange)


def encode_chunk(records: list[dict]) -> tuple[list, Counter]:
    """(per record: its encoded pieces or the AlignmentError that rejected it, split statistics).

    Whole conversations are encoded in one batched tokenizer call; only those longer than `max_length` are
    split (and re-encoded piece by piece)."""
    from vicuna_jax.data.chat_encode import AlignmentError
    from vicuna_jax.data.encode import encode_conversations
    from vicuna_jax.data.split import split_and_encode

    s = _STATE
    stats: Counter = Counter()
    whole = encode_conversations([r["conversations"] for r in records], s["tokenizer"], s["template"])
    out: list = []
    for record, encoded in zip(records, whole, strict=True):
        try:
            if isinstance(encoded, Exception):
                raise encoded
            out.append(split_and_encode(record, s["tokenizer"], s["max_length"], s["template"],
                                        s["long_exchange"], stats, encoded=encoded))
        except AlignmentError as e:
            out.append(e)
    return out, stats
