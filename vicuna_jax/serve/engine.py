"""The serving engine: iteration-level (continuous) batching of independent sequences over one KV cache.

A background thread repeats: drop cancelled sequences, admit waiting ones into free cache rows, shape the
cache for the work in flight (rows and slots in power-of-two buckets; see batch.py), prefill the admitted
prompts (batched by length bucket), run one decode chunk (`decode_steps` tokens) for every active row at
once, then turn each row's new tokens into text, apply stop strings, and hand the text delta to the
sequence's callback. A sequence that finishes frees its row at once, and the next waiting one takes it on
the following iteration while the other rows keep decoding: nothing waits for the slowest member of a batch.

Callbacks run on the engine thread and must not block (the server hands events to its event loop).
"""

from __future__ import annotations

import collections
import dataclasses
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from absl import logging

from vicuna_jax.model.llama import Llama
from vicuna_jax.serve.batch import (
    MIN_LENGTH_BUCKET,
    MIN_PROMPT_BUCKET,
    DecodeBatch,
    RowParams,
    next_pow2,
)

CACHE_BUCKET = 128
COUNTERS = ("requests", "tokens", "cancelled", "errors", "prefills", "decode_chunks", "resizes")


@dataclasses.dataclass(frozen=True)
class SeqRequest:
    """One sequence to generate. Validated by the caller (the HTTP layer); seed None = random."""

    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop_strings: tuple[str, ...] = ()
    ignore_eos: bool = False


@dataclasses.dataclass(frozen=True)
class SeqEvent:
    """New text of a sequence; the last event has `finish_reason` (stop, length, cancelled or error)."""

    text: str
    finish_reason: str | None = None
    completion_tokens: int = 0
    error: str | None = None


class EngineFull(RuntimeError):
    """Too many sequences are waiting; the caller should answer 503 and let the client retry."""


class SeqHandle:
    """A submitted sequence. `cancel()` is safe from any thread; the row is freed on the next iteration."""

    def __init__(self, request: SeqRequest, on_event: Callable[[SeqEvent], None], engine: Engine):
        self.request = request
        self.on_event = on_event
        self.cancelled = False
        self.finished = False
        self._engine = engine
        # Host-side text state, touched only by the engine thread.
        self.ids: list[int] = []
        self.sent = ""
        self.hold = max((len(s) - 1 for s in request.stop_strings if s), default=0)

    def cancel(self) -> None:
        if not self.finished:
            self.cancelled = True
            self._engine.wake()


class Engine:
    """Owns the model, the cache rows and the scheduling thread. Reuse one per process."""

    def __init__(self, model: Llama, tokenizer: Any, *, max_batch: int = 16, decode_steps: int = 8,
                 max_seq_len: int | None = None, max_waiting: int = 256, max_prefill_tokens: int = 8192,
                 cache_dtype: Any = None, extra_eos_ids: Sequence[int] = ()):
        if max_batch < 1 or decode_steps < 1:
            raise ValueError("max_batch and decode_steps must be >= 1")
        self.cfg = model.cfg
        self.tokenizer = tokenizer
        ctx = self.cfg.max_position_embeddings
        self.context_len = min(ctx, max_seq_len) if max_seq_len else ctx
        cache_len = -(-self.context_len // CACHE_BUCKET) * CACHE_BUCKET
        eos = [*self.cfg.eos_token_ids, *extra_eos_ids]  # extra: the chat template's end-of-turn ids
        if getattr(tokenizer, "eos_id", -1) not in (None, -1):
            eos.append(int(tokenizer.eos_id))
        self.batch = DecodeBatch(model, max_batch, cache_len, eos, cache_dtype)
        self.max_batch, self.decode_steps, self.max_waiting = max_batch, decode_steps, max_waiting
        self.max_prefill_tokens = max_prefill_tokens
        self._rows: list[SeqHandle | None] = [None] * max_batch
        self._params = RowParams.empty(max_batch)
        self._waiting: collections.deque[SeqHandle] = collections.deque()
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.counters: collections.Counter[str] = collections.Counter()  # COUNTERS
        self.peak_active = 0

    # ------------------------------------------------------------ public API

    def start(self) -> Engine:
        self._thread = threading.Thread(target=self._run, name="vicuna-engine", daemon=True)
        self._thread.start()
        return self

    def shutdown(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def warmup(self, prompt_lengths: Sequence[int] = (1,), rows: Sequence[int] = (1,),
                lengths: Sequence[int] = (MIN_LENGTH_BUCKET,)) -> None:
        """Compiles, before the engine starts, prefill for `rows` prompts of each length and decode for each
        (rows, cache length) bucket, so first replies (or benchmark timings) do not wait for compilation."""
        for n in rows:
            for length in lengths:
                self.batch.reset(*self.batch.bucket(n, length))
                for p in prompt_lengths:
                    if p < length:
                        self.batch.prefill(list(range(n)), [[self.cfg.bos_token_id or 0] * p] * n)
                self.batch.decode(RowParams.empty(self.max_batch), self.decode_steps)
        self.batch.reset()

    def submit(self, request: SeqRequest, on_event: Callable[[SeqEvent], None]) -> SeqHandle:
        n = len(request.prompt_ids)
        if not 0 < n < self.context_len:
            raise ValueError(f"prompt of {n} tokens: needs 1 to {self.context_len - 1}")
        handle = SeqHandle(request, on_event, self)
        with self._cond:
            if len(self._waiting) >= self.max_waiting:
                raise EngineFull(f"{len(self._waiting)} requests are already waiting")
            self._waiting.append(handle)
            self.counters["requests"] += 1
            self._cond.notify_all()
        return handle

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def stats(self) -> dict[str, Any]:
        with self._cond:
            waiting = len(self._waiting)
        return {
            "active": sum(r is not None for r in self._rows),
            "waiting": waiting,
            "max_batch": self.max_batch,
            "peak_active": self.peak_active,
            "context_len": self.context_len,
            "cache_shape": [self.batch.rows, self.batch.length],
            "prefill_shapes": sorted(self.batch.prefill_shapes),
            "decode_shapes": sorted(self.batch.decode_shapes),
            **{k: int(self.counters[k]) for k in COUNTERS},
        }

    # ------------------------------------------------------------ engine thread

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._waiting and not any(self._rows):
                    self._cond.wait()
                if self._stop:
                    break
            try:
                self._step()
            except Exception as e:  # noqa: BLE001 - one bad step must not take the server down
                logging.exception("engine step failed; failing the sequences in flight")
                self.counters["errors"] += 1
                for row, handle in enumerate(self._rows):
                    if handle is not None:
                        self._finish(row, handle, "", "error", error=f"{type(e).__name__}: {e}")
                self.batch.reset()
        for row, handle in enumerate(self._rows):
            if handle is not None:
                self._finish(row, handle, "", "cancelled")
        with self._cond:
            pending, self._waiting = list(self._waiting), collections.deque()
        for handle in pending:
            self._emit(handle, SeqEvent("", "cancelled"))

    def _step(self) -> None:
        for row, handle in enumerate(self._rows):
            if handle is not None and handle.cancelled:
                self.counters["cancelled"] += 1
                self._finish(row, handle, "", "cancelled")
        admitted = self._take_waiting()
        rows = self._fit(admitted)
        self._prefill(rows, admitted)
        active = sum(r is not None for r in self._rows)
        if not active:
            return
        self.peak_active = max(self.peak_active, active)
        out_BxN = self.batch.decode(self._params, self.decode_steps)
        self.counters["decode_chunks"] += 1
        for row in range(self.batch.rows):
            handle = self._rows[row]
            if handle is not None:
                self._advance(row, handle, out_BxN[row])

    def _take_waiting(self) -> list[SeqHandle]:
        """As many waiting sequences as there are free rows, first come first served."""
        free = self._rows.count(None)
        taken: list[SeqHandle] = []
        with self._cond:
            while len(taken) < free and self._waiting:
                handle = self._waiting.popleft()
                if handle.cancelled:
                    self.counters["cancelled"] += 1
                    handle.finished = True
                    self._emit(handle, SeqEvent("", "cancelled"))
                else:
                    taken.append(handle)
        return taken

    def _fit(self, admitted: list[SeqHandle]) -> list[int]:
        """Shapes the cache for this step's work: enough rows for the live and admitted sequences, and
        enough slots for every row's next decode chunk (and the admitted prompts' buckets). Live rows move
        to the front when that lets the cache shrink. Returns the rows the admitted sequences get."""
        live = [r for r, h in enumerate(self._rows) if h is not None]
        if not live and not admitted:
            return []
        p, steps = self._params, self.decode_steps
        lens = [len(h.request.prompt_ids) for h in self._rows if h is not None]
        need = [n + int(p.count_B[r]) + steps for n, r in zip(lens, live, strict=True)]
        for h in admitted:
            n = len(h.request.prompt_ids)
            need.append(max(n + steps, next_pow2(n, MIN_PROMPT_BUCKET)))
        rows, length = self.batch.bucket(len(live) + len(admitted), min(max(need), self.batch.max_len))
        old_rows = self.batch.rows
        if rows < old_rows or (live and live[-1] >= rows):
            order = live + [-1] * (rows - len(live))
            self._rows = [self._rows[r] for r in live] + [None] * (self.max_batch - len(live))
            p.permute(live)
            self.batch.resize(order, length)
            self.counters["resizes"] += 1
        elif (rows, length) != (old_rows, self.batch.length):
            self.batch.resize(list(range(old_rows)) + [-1] * (rows - old_rows), length)
            self.counters["resizes"] += 1
        return [r for r in range(rows) if self._rows[r] is None][:len(admitted)]

    def _prefill(self, rows: list[int], admitted: list[SeqHandle]) -> None:
        if not admitted:
            return
        # Similar lengths share a prefill call (less padding); each group is one compiled shape.
        placed = sorted(zip(rows, admitted, strict=True), key=lambda rh: len(rh[1].request.prompt_ids))
        groups: dict[int, list[tuple[int, SeqHandle]]] = collections.defaultdict(list)
        for row, handle in placed:
            groups[next_pow2(len(handle.request.prompt_ids), MIN_PROMPT_BUCKET)].append((row, handle))
        try:
            for bucket, group in groups.items():
                # A token budget per call bounds prefill memory (attention scores grow as rows x length^2).
                per_call = 1 << (max(self.max_prefill_tokens // bucket, 1).bit_length() - 1)
                for i in range(0, len(group), per_call):
                    part = group[i:i + per_call]
                    self.batch.prefill([r for r, _ in part], [h.request.prompt_ids for _, h in part])
                    self.counters["prefills"] += 1
        except Exception:
            for handle in admitted:  # not in a row yet: the step's error handler cannot see them
                handle.finished = True
                self._emit(handle, SeqEvent("", "error", error="prefill failed"))
            raise
        p = self._params
        for row, handle in placed:
            req = handle.request
            self._rows[row] = handle
            p.active_B[row], p.count_B[row] = True, 0
            p.limit_B[row] = min(req.max_new_tokens, self.context_len - len(req.prompt_ids))
            p.temperature_B[row], p.top_p_B[row], p.top_k_B[row] = req.temperature, req.top_p, req.top_k
            p.seed_B[row] = (secrets.randbits(31) if req.seed is None else req.seed) & 0x7FFFFFFF
            p.ignore_eos_B[row] = req.ignore_eos

    def _advance(self, row: int, handle: SeqHandle, tokens_N: np.ndarray) -> None:
        """Appends the row's new tokens, emits the new visible text, and frees the row when it is done."""
        p = self._params
        eos = False
        new = 0
        for tok in tokens_N:
            if tok < 0:
                break
            new += 1
            if self.batch.is_eos(int(tok)) and not handle.request.ignore_eos:
                eos = True
                break
            handle.ids.append(int(tok))
        p.count_B[row] += new
        self.counters["tokens"] += new
        text = self.tokenizer.decode(handle.ids)
        cut = first_stop(text, handle.request.stop_strings)
        if cut is not None:
            kept = tokens_until_stop(self.tokenizer, handle.ids, handle.request.stop_strings, new)
            self._finish(row, handle, text[:cut], "stop", kept)
        elif eos:
            self._finish(row, handle, text, "stop", int(p.count_B[row]))
        elif p.count_B[row] >= p.limit_B[row]:
            self._finish(row, handle, text, "length", int(p.count_B[row]))
        else:
            # Hold back an unfinished UTF-8 character and a tail that may be the start of a stop string.
            visible = text.rstrip("\ufffd")
            visible = visible[:len(visible) - handle.hold] if handle.hold else visible
            if len(visible) > len(handle.sent) and visible.startswith(handle.sent):
                delta, handle.sent = visible[len(handle.sent):], visible
                self._emit(handle, SeqEvent(delta, None, int(p.count_B[row])))

    def _finish(self, row: int, handle: SeqHandle, text: str, reason: str, tokens: int = 0,
                error: str | None = None) -> None:
        self._rows[row] = None
        self._params.active_B[row] = False
        handle.finished = True
        delta = text[len(handle.sent):] if text.startswith(handle.sent) else ""
        self._emit(handle, SeqEvent(delta, reason, tokens, error))

    def _emit(self, handle: SeqHandle, event: SeqEvent) -> None:
        try:
            handle.on_event(event)
        except Exception:  # noqa: BLE001 - e.g. the server's event loop is gone; drop the sequence
            logging.warning("dropping a sequence whose consumer failed", exc_info=True)
            handle.cancelled = True


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the earliest stop string starts in `text`, or None."""
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


def tokens_until_stop(tokenizer: Any, ids: list[int], stops: Sequence[str], new: int) -> int:
    """How many tokens it took for a stop string to appear (usage counts those, not the whole chunk)."""
    for k in range(max(len(ids) - new, 0) + 1, len(ids) + 1):
        if first_stop(tokenizer.decode(ids[:k]), stops) is not None:
            return k
    return len(ids)


def wait_idle(engine: Engine, timeout: float = 10.0) -> bool:
    """True once no sequence is active or waiting (tests and benchmarks)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = engine.stats()
        if s["active"] == 0 and s["waiting"] == 0:
            return True
        time.sleep(0.01)
    return False
