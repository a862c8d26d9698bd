"""Packing: best-fit-decreasing plans, segment ids, positions, shifted targets that never cross segments."""

from __future__ import annotations

import numpy as np
import pytest

from vicuna_jax.data.pack import (
    assemble,
    batch_stats,
    best_fit_decreasing,
    plan_efficiency,
    plan_rows,
    slots_needed,
)


def test_best_fit_decreasing_places_everything_once_within_capacity():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 300, size=500)
    bins = best_fit_decreasing(sizes.tolist(), 512)
    assert sorted(k for b in bins for k in b) == list(range(500))
    assert all(sum(int(sizes[k]) for k in b) <= 512 for b in bins)
    assert bins == best_fit_decreasing(sizes.tolist(), 512)  # deterministic
    lower_bound = int(np.ceil(sizes.sum() / 512))
    assert len(bins) <= lower_bound * 11 / 9 + 1
    assert best_fit_decreasing([0, 0], 8) == []


def test_plan_rows_windows_and_pad_mode():
    slots = np.array([100, 0, 30, 70, 512, 200, 312])
    order = [6, 5, 4, 3, 2, 1, 0]
    rows = plan_rows(order, slots, 512, packing=True, window=7)
    assert sorted(i for r in rows for i in r) == [0, 2, 3, 4, 5, 6]  # index 1 has no slots: skipped
    assert plan_efficiency(rows, slots, 512) == pytest.approx(slots.sum() / (len(rows) * 512))
    assert len(rows) == 3
    assert plan_rows(order, slots, 512, packing=False) == [[6], [5], [4], [3], [2], [0]]
    # rows never mix records from different windows (windows are taken after skipping empty records)
    rows = plan_rows(order, slots, 512, packing=True, window=3)
    windows = [{6, 5, 4}, {3, 2, 0}]
    assert all(any(set(r) <= w for w in windows) for r in rows)


def test_slots_needed():
    assert slots_needed(np.array([0, 1, 2, 513, 600]), 512).tolist() == [0, 0, 1, 512, 512]


def _example(n, start):
    ids = np.arange(start, start + n, dtype=np.int32)
    mask = ids % 3 == 0
    return ids, mask


def test_assemble_segments_positions_and_targets():
    a, b, c = _example(5, 10), _example(4, 100), _example(7, 1000)
    batch = assemble([[a, b], [c]], seq_len=8, num_rows=3)
    assert {k: v.shape for k, v in batch.items()} == {k: (3, 8) for k in batch}
    assert batch["input_tokens"].dtype == np.int32 and batch["loss_mask"].dtype == np.float32
    assert batch["segment_ids"][0].tolist() == [1, 1, 1, 1, 2, 2, 2, 0]
    assert batch["positions"][0].tolist() == [0, 1, 2, 3, 0, 1, 2, 0]
    assert batch["input_tokens"][0].tolist() == [10, 11, 12, 13, 100, 101, 102, 0]
    # the last target of segment 1 is its own last token (14), never the next segment's first (100)
    assert batch["target_tokens"][0].tolist() == [11, 12, 13, 14, 101, 102, 103, 0]
    assert batch["loss_mask"][0].tolist() == [0, 1, 0, 0, 0, 1, 0, 0]  # mask of the *target* token
    assert batch["input_tokens"][1].tolist() == list(range(1000, 1006)) + [0, 0]
    assert not batch["segment_ids"][2].any() and not batch["loss_mask"][2].any()  # padding row
    stats = batch_stats(batch)
    assert stats["non_pad_tokens"] == 13 and stats["slots"] == 24 and stats["target_tokens"] == 4


def test_assemble_truncates_an_overlong_conversation():
    batch = assemble([[_example(20, 0)]], seq_len=8)
    assert batch["input_tokens"][0].tolist() == list(range(8))
    assert batch["target_tokens"][0].tolist() == list(range(1, 9))
    assert (batch["segment_ids"][0] == 1).all()


def test_never_a_target_across_segments_random():
    rng = np.random.default_rng(1)
    examples = [_example(int(n), 1000 * k) for k, n in enumerate(rng.integers(2, 60, size=80))]
    slots = slots_needed(np.array([len(e[0]) for e in examples]), 64)
    rows = plan_rows(rng.permutation(len(examples)), slots, 64, window=80)
    batch = assemble([[examples[i] for i in r] for r in rows], 64)
    seg, inp, tgt = batch["segment_ids"], batch["input_tokens"], batch["target_tokens"]
    same = (seg[:, :-1] == seg[:, 1:]) & (seg[:, :-1] > 0)
    assert (tgt[:, :-1][same] == inp[:, 1:][same]).all()
    # every target is in the same conversation as its input (ids of example k live in [1000k, 1000k+60))
    real = seg > 0
    assert ((tgt[real] // 1000) == (inp[real] // 1000)).all() and (tgt[real] == inp[real] + 1).all()
    assert batch_stats(batch)["non_pad_fraction"] > 0.9
