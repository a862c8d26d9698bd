"""prepare: raw -> tfds in one call, held-out split by conversation, caching, CLI."""

from __future__ import annotations

import json
import os

import numpy as np

from vicuna_jax.data import encode_conversation, prepare
from vicuna_jax.data.prepare import prepare_dataset
from vicuna_jax.data.store import PreparedDataset
from vicuna_jax.data.tokenizer import bundled_tokenizer_path

SAMPLE_MAX_LENGTH = 256  # as in conftest.prepared_sample


def test_prepared_sample_contents(prepared_sample, small_tok):
    ds = PreparedDataset(prepared_sample)
    meta = ds.meta
    assert set(ds.splits) == {"train", "validation"}
    assert meta["options"]["tokenizer_fingerprint"] == small_tok.fingerprint
    assert meta["clean_report"]["rejected"]["unknown_role"] == 1
    assert meta["split_stats"]["split_records"] > 10  # max_length 256 splits the long sessions
    for split in ds.splits:
        src, lengths = ds.source(split), ds.lengths(split)
        assert len(src) == len(lengths) == meta["splits"][split]["examples"]
        assert int(lengths.sum()) == meta["splits"][split]["tokens"] and lengths.max() <= SAMPLE_MAX_LENGTH
        for k in (0, len(src) // 2, len(src) - 1):  # stored tokens == re-encoding the stored text
            ex = src[k]
            ids, mask = encode_conversation(
                json.loads(ex["conversations"]), small_tok, max_length=SAMPLE_MAX_LENGTH
            )
            assert ex["input_ids"].tolist() == ids.tolist() and ex["loss_mask"].tolist() == mask.tolist()
            assert len(ex["input_ids"]) == lengths[k]
    # pieces of one conversation never straddle train and validation
    cleaned = {json.loads(x)["id"] for x in open(os.path.join(prepared_sample, "cleaned.jsonl"))}

    def origin_of(piece_id):
        piece_id = piece_id.decode() if isinstance(piece_id, bytes) else piece_id
        return piece_id if piece_id in cleaned else piece_id.rsplit("_", 1)[0]

    origin = {
        split: {origin_of(ds.source(split)[k]["id"]) for k in range(len(ds.source(split)))}
        for split in ds.splits
    }
    assert all(o in cleaned for o in origin["train"] | origin["validation"])
    assert origin["validation"] and not (origin["train"] & origin["validation"])


def test_prepare_reuses_cache_and_rebuilds_on_change(tmp_path):
    raw = tmp_path / "raw.jsonl"
    rows = [
        {
            "id": f"r{k}",
            "conversations": [
                {"from": "human", "value": f"Question {k}?"},
                {"from": "gpt", "value": f"Answer number {k}."},
            ],
        }
        for k in range(40)
    ]
    raw.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = str(tmp_path / "ds")
    tok = bundled_tokenizer_path()
    prepare_dataset(str(raw), out, tokenizer=tok, max_length=64, validation_fraction=0.1, verbose=False)
    meta_path = os.path.join(out, "meta.json")
    stamp = os.stat(meta_path).st_mtime_ns
    key = json.load(open(meta_path))["key"]
    prepare_dataset(str(raw), out, tokenizer=tok, max_length=64, validation_fraction=0.1, verbose=False)
    assert os.stat(meta_path).st_mtime_ns == stamp  # reused, not rewritten
    prepare_dataset(str(raw), out, tokenizer=tok, max_length=32, validation_fraction=0.1, verbose=False)
    assert json.load(open(meta_path))["key"] != key  # an option changed: rebuilt
    raw.write_text(raw.read_text() + json.dumps(rows[0] | {"id": "new"}) + "\n")
    prepare_dataset(str(raw), out, tokenizer=tok, max_length=32, validation_fraction=0.1, verbose=False)
    meta = json.load(open(meta_path))
    assert meta["clean_report"]["total"] == 41 and meta["clean_report"]["rejected"] == {
        "duplicate_exchange": 1
    }
    assert np.load(os.path.join(out, "lengths_train.npy")).size == meta["splits"]["train"]["examples"]


def test_prepare_cli_without_validation(tmp_path, capsys):
    raw = tmp_path / "raw.json"
    raw.write_text(
        json.dumps(
            [
                {
                    "id": "a",
                    "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}],
                }
            ]
        )
    )
    out = tmp_path / "ds"
    args = [
        f"--input={raw}",
        f"--output_dir={out}",
        f"--tokenizer={bundled_tokenizer_path()}",
        "--max_length=64",
        "--validation_fraction=0",
    ]
    assert prepare.main(args) == 0
    assert PreparedDataset(str(out)).splits == ["train"]
    assert "prepare: train: 1 examples" in capsys.readouterr().err
