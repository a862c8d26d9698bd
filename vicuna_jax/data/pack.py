"""Packing encoded conversations into fixed [rows, seq_len] training arrays.

A conversation of n tokens fills n - 1 slots: input ids[:-1], target ids[1:], loss mask mask[1:] (the mask
says whether the *target* is trained on). Several conversations share a row with distinct `segment_ids` and
positions restarting at 0, so attention and targets never cross a conversation. Row planning needs only the
lengths, so every host can plan the global batch identically and then read just its own rows.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np

BATCH_KEYS = ("input_tokens", "target_tokens", "loss_mask", "segment_ids", "positions")


def slots_needed(num_tokens: np.ndarray | int, seq_len: int) -> np.ndarray:
    """Row slots a conversation of `num_tokens` tokens uses (truncated conversations use a whole row)."""
    return np.clip(np.asarray(num_tokens) - 1, 0, seq_len)


def best_fit_decreasing(sizes: Sequence[int], capacity: int) -> list[list[int]]:
    """Pack items (by position in `sizes`) into bins of `capacity`; larger items first, each into the fullest
    bin that still has room. Same worst case as first-fit-decreasing (11/9 OPT + 1), O(n log n).
    Deterministic: ties are broken by position, bins come out in creation order."""
    order = sorted(range(len(sizes)), key=lambda k: (-int(sizes[k]), k))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (remaining capacity, bin index)
    for k in order:
        size = int(sizes[k])
        if size <= 0:
            continue
        j = bisect.bisect_left(free, (size, -1))
        if j < len(free):
            remaining, b = free.pop(j)
            bins[b].append(k)
            bisect.insort(free, (remaining - size, b))
        else:
            bins.append([k])
            bisect.insort(free, (capacity - size, len(bins) - 1))
    return bins


def plan_rows(
    order: Sequence[int],
    slots: np.ndarray,
    seq_len: int,
    packing: bool = True,
    window: int = 2048,
    rng: np.random.Generator | None = None,
) -> list[list[int]]:
    """Rows of record indices. `order` is the (shuffled) record order; packing happens within consecutive
    windows of it, so the data order stays random at the scale of an epoch. Records with no slots are skipped.
    With `rng`, the rows of each window are shuffled (otherwise rows holding long conversations come first).
    """
    order = [int(i) for i in order if slots[i] > 0]
    if not packing:
        return [[i] for i in order]
    rows: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        bins = best_fit_decreasing([int(slots[i]) for i in chunk], seq_len)
        window_rows = [[chunk[k] for k in b] for b in bins]
        if rng is not None:
            perm = rng.permutation(len(window_rows))
            window_rows = [window_rows[p] for p in perm]
        rows.extend(window_rows)
    return rows


def assemble(
    rows: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]], seq_len: int, num_rows: int | None = None
) -> dict[str, np.ndarray]:
    """Build the batch arrays from rows of (input_ids, loss_mask) examples; missing rows are all padding."""
    n = len(rows) if num_rows is None else num_rows
    inputs = np.zeros((n, seq_len), np.int32)
    targets = np.zeros((n, seq_len), np.int32)
    mask = np.zeros((n, seq_len), np.float32)
    segments = np.zeros((n, seq_len), np.int32)
    positions = np.zeros((n, seq_len), np.int32)
    for r, row in enumerate(rows):
        pos = 0
        for s, (ids, m) in enumerate(row, start=1):
            used = min(len(ids) - 1, seq_len - pos)
            if used <= 0:
                continue
            end = pos + used
            inputs[r, pos:end] = ids[:used]
            targets[r, pos:end] = ids[1 : used + 1]
            mask[r, pos:end] = m[1 : used + 1]
            segments[r, pos:end] = s
            positions[r, pos:end] = np.arange(used, dtype=np.int32)
            pos = end
    return {
        "input_tokens": inputs,
        "target_tokens": targets,
        "loss_mask": mask,
        "segment_ids": segments,
        "positions": positions,
    }


def batch_stats(batch: dict[str, np.ndarray]) -> dict[str, float]:
    """Slots in use and slots trained on, as counts and as fractions of all slots (packing efficiency)."""
    total = batch["segment_ids"].size
    non_pad = int((batch["segment_ids"] > 0).sum())
    targets = int(batch["loss_mask"].sum())
    return {
        "slots": float(total),
        "non_pad_tokens": float(non_pad),
        "target_tokens": float(targets),
        "non_pad_fraction": non_pad / total if total else 0.0,
        "target_fraction": targets / total if total else 0.0,
    }


def plan_efficiency(rows: Sequence[Sequence[int]], slots: np.ndarray, seq_len: int) -> float:
    """Fraction of the planned rows' slots holding real tokens."""
    if not rows:
        return 0.0
    used = sum(int(slots[i]) for row in rows for i in row)
    return used / (len(rows) * seq_len)
