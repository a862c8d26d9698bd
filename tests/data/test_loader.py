"""Loader contract: batch layout, process-count independence, per-host reads, exact resume, eval pass."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from vicuna_jax.cli import UserError
from vicuna_jax.data import encode_conversation
from vicuna_jax.data.loader import ChatBatchIterator, make_eval_batches, make_train_iterator
from vicuna_jax.data.pack import batch_stats
from vicuna_jax.data.store import PreparedDataset

SEQ = 128


def train_iter(ds_dir, p=0, n=1, batch=8, **kw):
    return make_train_iterator(
        ds_dir, seq_len=SEQ, global_batch_size=batch, seed=3, process_index=p, process_count=n, **kw
    )


def take(it, k):
    return [next(it) for _ in range(k)]


def check_batch(b, rows):
    assert set(b) == {"input_tokens", "target_tokens", "loss_mask", "segment_ids", "positions"}
    for k, v in b.items():
        assert v.shape == (rows, SEQ), k
    assert b["input_tokens"].dtype == np.int32 and b["loss_mask"].dtype == np.float32
    seg, pos = b["segment_ids"], b["positions"]
    assert not b["loss_mask"][seg == 0].any() and not b["input_tokens"][seg == 0].any()
    same = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)
    assert (b["target_tokens"][:, :-1][same] == b["input_tokens"][:, 1:][same]).all()
    assert (pos[:, 1:][same] == pos[:, :-1][same] + 1).all()
    starts = (seg > 0) & ~np.concatenate([np.zeros((rows, 1), bool), same], axis=1)
    assert (pos[starts] == 0).all()


def test_batches_follow_the_contract_and_match_stored_examples(prepared_sample, small_tok):
    it = train_iter(prepared_sample)
    batches = take(it, 3)
    for b in batches:
        check_batch(b, 8)
        assert batch_stats(b)["non_pad_fraction"] > 0.75
    # The first segment of the first row is a stored example, re-encodable from its text.
    ds = PreparedDataset(prepared_sample)
    first = it.epoch_rows(0)[0][0]
    ex = ds.source("train")[first]
    ids, mask = encode_conversation(json.loads(ex["conversations"]), small_tok, max_length=256)
    assert ids.tolist() == ex["input_ids"].tolist() and mask.tolist() == ex["loss_mask"].tolist()
    seg = batches[0]["segment_ids"][0]
    n = int((seg == 1).sum())
    assert batches[0]["input_tokens"][0, :n].tolist() == ids[:n].tolist()
    assert batches[0]["loss_mask"][0, :n].tolist() == mask[1 : n + 1].astype(np.float32).tolist()


@pytest.mark.parametrize("packing", [True, False])
def test_global_batches_do_not_depend_on_process_count(prepared_sample, packing):
    steps = 4
    whole = take(train_iter(prepared_sample, packing=packing), steps)
    for n in (2, 4):
        parts = [take(train_iter(prepared_sample, p, n, packing=packing), steps) for p in range(n)]
        for s in range(steps):
            for key in whole[s]:
                glued = np.concatenate([parts[p][s][key] for p in range(n)])
                np.testing.assert_array_equal(glued, whole[s][key], err_msg=f"{key} step {s} n={n}")
    if not packing:
        assert (whole[0]["segment_ids"].max(axis=1) <= 1).all()


def test_each_process_reads_only_its_rows(prepared_sample):
    ds = PreparedDataset(prepared_sample)
    source = ds.source("train")
    seen: list[int] = []

    class Spy:
        def __len__(self):
            return len(source)

        def __getitems__(self, idx):
            seen.extend(idx)
            return source.__getitems__(idx)

    ds._sources["train"] = Spy()
    it = ChatBatchIterator(
        ds,
        split="train",
        seq_len=SEQ,
        global_batch_size=8,
        seed=3,
        process_index=1,
        process_count=4,
        num_threads=1,
    )
    take(it, 2)
    rows = it.epoch_rows(0)
    mine = lambda batches: {i for j in batches for row in rows[j * 8 + 2 : j * 8 + 4] for i in row}  # noqa: E731
    everyone = {i for row in rows for i in row}
    # the two batches taken were read, plus possibly prefetched ones of this process, nothing of the others
    assert mine(range(2)) <= set(seen) <= mine(range(len(rows) // 8))
    assert len(mine(range(len(rows) // 8))) < len(everyone) / 3


def test_resume_gives_exactly_the_next_batches_across_epochs(prepared_sample):
    it = train_iter(prepared_sample, batch=32)
    per_epoch = it.batches_in_epoch(0)
    assert 2 < per_epoch < 60
    total = per_epoch + 3
    ref = take(train_iter(prepared_sample, batch=32), total)
    for stop in (1, per_epoch - 1, per_epoch, per_epoch + 1):
        a = train_iter(prepared_sample, batch=32)
        take(a, stop)
        state = json.loads(json.dumps(a.get_state()))
        b = train_iter(prepared_sample, batch=32)
        b.set_state(state)
        for s in range(stop, total):
            got = next(b)
            for key in got:
                np.testing.assert_array_equal(got[key], ref[s][key], err_msg=f"{key} after resume at {stop}")
    assert b.get_state()["epoch"] == 1
    # a new epoch has a new order
    assert not np.array_equal(ref[0]["input_tokens"], ref[per_epoch]["input_tokens"])


def test_epoch_covers_each_example_at_most_once(prepared_sample):
    it = train_iter(prepared_sample)
    rows = it.epoch_rows(0)
    flat = [i for r in rows for i in r]
    assert len(flat) == len(set(flat)) == int((it.slots > 0).sum())
    assert it.packing_efficiency() > 0.85  # seq 128 with examples up to 256 tokens; see bench_data.py at 2048
    again = [i for r in it.epoch_rows(1) for i in r]
    assert sorted(again) == sorted(flat) and again != flat  # same examples, new order


def test_state_and_argument_errors(prepared_sample):
    it = train_iter(prepared_sample)
    other = train_iter(prepared_sample, batch=32)
    with pytest.raises(ValueError, match="different dataset or settings"):
        it.set_state(other.get_state())
    with pytest.raises(ValueError, match="not divisible"):
        train_iter(prepared_sample, p=0, n=3, batch=8)
    with pytest.raises(ValueError, match="process_index"):
        train_iter(prepared_sample, p=2, n=2)
    with pytest.raises(KeyError, match="split 'test'"):
        make_train_iterator(
            prepared_sample, split="test", seq_len=SEQ, global_batch_size=8, process_index=0, process_count=1
        )
    with pytest.raises(FileNotFoundError, match="no prepared dataset"):
        PreparedDataset(prepared_sample + "/nowhere")


def test_default_process_index_comes_from_jax(prepared_sample):
    it = make_train_iterator(prepared_sample, seq_len=SEQ, global_batch_size=8)
    assert (it.process_index, it.process_count) == (0, 1)


@pytest.mark.parametrize("packing", [True, False])
def test_eval_batches_cover_the_split_once(prepared_sample, packing):
    ds = PreparedDataset(prepared_sample)
    lengths = ds.lengths("validation")
    full = list(
        make_eval_batches(
            prepared_sample,
            seq_len=SEQ,
            global_batch_size=4,
            packing=packing,
            process_index=0,
            process_count=1,
        )
    )
    for b in full:
        check_batch(b, 4)
    segments = sum(int(len(np.unique(r[r > 0]))) for b in full for r in b["segment_ids"])
    assert segments == int((lengths > 1).sum())
    halves = [
        list(
            make_eval_batches(
                prepared_sample,
                seq_len=SEQ,
                global_batch_size=4,
                packing=packing,
                process_index=p,
                process_count=2,
            )
        )
        for p in range(2)
    ]
    assert len(halves[0]) == len(halves[1]) == len(full)
    for s, b in enumerate(full):
        np.testing.assert_array_equal(
            np.concatenate([halves[0][s]["input_tokens"], halves[1][s]["input_tokens"]]), b["input_tokens"]
        )
    assert sum(batch_stats(b)["target_tokens"] for b in full) == pytest.approx(
        sum(batch_stats(b)["target_tokens"] for h in halves for b in h)
    )


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.mark.parametrize("damage", ["pickled", "floats", "2d", "truncated"])
def test_a_pickled_or_damaged_lengths_file_is_refused_naming_it(prepared_sample, tmp_path, damage):
    ds = str(tmp_path / "ds")
    shutil.copytree(prepared_sample, ds)
    path = os.path.join(ds, "lengths_train.npy")
    marker = str(tmp_path / "pickle_ran")
    if damage == "pickled":
        np.save(path, np.array([_Payload(marker), 3], dtype=object), allow_pickle=True)
    elif damage == "floats":
        np.save(path, np.load(path).astype(np.float32))
    elif damage == "2d":
        np.save(path, np.load(path)[:, None])
    else:
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(UserError) as e:
        train_iter(ds)
    assert str(e.value).startswith(f"{path}: ") and "prepare the dataset again" in str(e.value)
    assert "\n" not in str(e.value) and not os.path.exists(marker)
    with pytest.raises(UserError, match="lengths_train.npy: "):
        next(make_eval_batches(ds, split="train", seq_len=SEQ, global_batch_size=8, process_index=0,
                               process_count=1))
