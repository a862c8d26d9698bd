"""The serving engine: iteration-level (continuous) batching of independent sequences over one KV cache.

A background thread repeats: drop cancelled sequences, admit waiting ones into free cache rows, shape the
cache for the work in flight (rows and slots in power-of-two buckets), prefill the admitted prompts (batched
by length bucket), run one decode chunk (`decode_steps` tokens) for every active row at once, then turn each
row's new tokens into text, apply stop strings, and hand the text delta to the sequence's callback. The
device work, sampling and text handling are the decoding core's (`vicuna_jax.decoding`); this module
schedules. A sequence that finishes frees its row at once, and the next waiting one takes it on
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

from absl import logging

from vicuna_jax.decoding.batch import MIN_LENGTH_BUCKET, DecodeBatch, RowParams, RowTokens
from vicuna_jax.decoding.sampling import SamplingParams
from vicuna_jax.decoding.text import TextStream, resolve_eos_ids
from vicuna_jax.model.llama import Llama

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
        r = request
        seed = secrets.randbits(31) if r.seed is None else r.seed & 0x7FFFFFFF  # None: a random seed
        self.params = SamplingParams(max_new_tokens=r.max_new_tokens, temperature=r.temperature,
                                     top_p=r.top_p, top_k=r.top_k, stop_strings=r.stop_strings, seed=seed,
                                     ignore_eos=r.ignore_eos)
        self.text = TextStream(engine.tokenizer, request.stop_strings)  # touched only by the engine thread

    def cancel(self) -> None:
        """Stops the sequence: a waiting one leaves the queue at once (its place is free for the next
        request), one in a row is dropped on the engine's next iteration."""
        if not self.finished:
            self.cancelled = True
            self._engine._drop_waiting(self)
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
        eos_ids = resolve_eos_ids(self.cfg, tokenizer, extra=extra_eos_ids)  # + template end-of-turn ids
        self.batch = DecodeBatch(model, eos_ids=eos_ids, max_rows=max_batch,
                                 context_len=max_seq_len, cache_dtype=cache_dtype,
                                 max_prefill_tokens=max_prefill_tokens)
        self.context_len = self.batch.context_len
        self.max_batch, self.decode_steps, self.max_waiting = max_batch, decode_steps, max_waiting
        self.max_prefill_tokens = max_prefill_tokens
        self._rows: list[SeqHandle | None] = [None] * max_batch  # the sequence in each cache row
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
                self.batch.decode(RowParams.empty(self.batch.rows), self.decode_steps)
        self.batch.reset()

    def submit(self, request: SeqRequest, on_event: Callable[[SeqEvent], None]) -> SeqHandle:
        return self.submit_many([request], [on_event])[0]

    def submit_many(self, requests: Sequence[SeqRequest],
                    on_events: Sequence[Callable[[SeqEvent], None]]) -> list[SeqHandle]:
        """Queues all of `requests` or none: EngineFull when the queue has no room for all of them."""
        for request in requests:
            n = len(request.prompt_ids)
            if not 0 < n < self.context_len:
                raise ValueError(f"prompt of {n} tokens: needs 1 to {self.context_len - 1}")
        handles = [SeqHandle(r, cb, self) for r, cb in zip(requests, on_events, strict=True)]
        with self._cond:
            if len(self._waiting) + len(handles) > self.max_waiting:
                raise EngineFull(f"{len(self._waiting)} sequences are already waiting (at most "
                                 f"{self.max_waiting})")
            self._waiting.extend(handles)
            self.counters["requests"] += len(handles)
            self._cond.notify_all()
        return handles

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _drop_waiting(self, handle: SeqHandle) -> None:
        """Takes a cancelled sequence out of the queue now (not when a row frees); no-op once admitted."""
        with self._cond:
            try:
                self._waiting.remove(handle)
            except ValueError:
                return
            handle.finished = True
            self.counters["cancelled"] += 1
        self._emit(handle, SeqEvent("", "cancelled"))

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
        self._prefill(admitted)
        active = sum(r is not None for r in self._rows)
        if not active:
            return
        self.peak_active = max(self.peak_active, active)
        chunk = self.batch.step(self.decode_steps)
        self.counters["decode_chunks"] += 1
        for row, got in chunk.items():
            handle = self._rows[row]
            if handle is not None:
                self._advance(row, handle, got)

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

    def _prefill(self, admitted: list[SeqHandle]) -> None:
        """Shapes the cache for this step's work (the live rows may move), then prefills the admitted
        sequences into free rows."""
        fit = self.batch.fit([len(h.request.prompt_ids) for h in admitted], self.decode_steps)
        if fit.moved is not None:
            self._rows = [self._rows[r] for r in fit.moved] + [None] * (self.max_batch - len(fit.moved))
        self.counters["resizes"] += fit.reshaped
        if not admitted:
            return
        try:
            self.counters["prefills"] += self.batch.admit(
                fit.rows, [h.request.prompt_ids for h in admitted], [h.params for h in admitted])
        except Exception:
            for handle in admitted:  # not in a row yet: the step's error handler cannot see them
                handle.finished = True
                self._emit(handle, SeqEvent("", "error", error="prefill failed"))
            raise
        for row, handle in zip(fit.rows, admitted, strict=True):
            self._rows[row] = handle

    def _advance(self, row: int, handle: SeqHandle, got: RowTokens) -> None:
        """Emits the row's new visible text, and frees the row when it is done."""
        self.counters["tokens"] += got.sampled
        delta = handle.text.extend(got.ids)
        if handle.text.stopped:
            self._finish(row, handle, delta, "stop", handle.text.stop_tokens)
        elif got.finish is not None:
            self._finish(row, handle, delta + handle.text.finish(), got.finish, got.count)
        elif delta:
            self._emit(handle, SeqEvent(delta, None, got.count))

    def _finish(self, row: int, handle: SeqHandle, delta: str, reason: str, tokens: int = 0,
                error: str | None = None) -> None:
        """Frees the row and sends the sequence's last event (with the last of its text)."""
        self._rows[row] = None
        self.batch.release(row)
        handle.finished = True
        self._emit(handle, SeqEvent(delta, reason, tokens, error))

    def _emit(self, handle: SeqHandle, event: SeqEvent) -> None:
        try:
            handle.on_event(event)
        except Exception:  # noqa: BLE001 - e.g. the server's event loop is gone; drop the sequence
            logging.warning("dropping a sequence whose consumer failed", exc_info=True)
            handle.cancelled = True


def wait_idle(engine: Engine, timeout: float = 10.0) -> bool:
    """True once no sequence is active or waiting (tests and benchmarks)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = engine.stats()
        if s["active"] == 0 and s["waiting"] == 0:
            return True
        time.sleep(0.01)
    return False
