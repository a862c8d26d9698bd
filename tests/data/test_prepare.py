"""prepare: raw -> tfds in one call, held-out split by conversation, caching, CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from vicuna_jax.cli import UserError
from vicuna_jax.data import encode_conversation, prepare
from vicuna_jax.data.clean import clean_file
from vicuna_jax.data.prepare import prepare_dataset
from vicuna_jax.data.split import main as split_main
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
    # what a trainer reads to check the dataset's size: examples (pieces) and conversations per split
    assert sum(meta["splits"][s]["conversations"] for s in ds.splits) == meta["clean_report"]["kept"]
    assert all(meta["splits"][s]["examples"] >= meta["splits"][s]["conversations"] > 0 for s in ds.splits)
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


def conversation(rid: str) -> dict:
    turns = [{"from": "human", "value": f"Hi {rid}"}, {"from": "gpt", "value": "Hello"}]
    return {"id": rid, "conversations": turns}


@pytest.mark.parametrize("content", ["", "[]", "\ufeff[\n]\n"], ids=["0-bytes", "array", "bom-array"])
def test_prepare_without_records_says_so(tmp_path, content):
    raw = tmp_path / "raw.json"
    raw.write_text(content)
    with pytest.raises(UserError, match=f"^{raw}: no usable conversation: the file holds no records$"):
        prepare_dataset(str(raw), str(tmp_path / "ds"), tokenizer=bundled_tokenizer_path(), verbose=False)


def test_prepare_with_every_record_rejected_lists_the_counts(tmp_path):
    raw = tmp_path / "raw.jsonl"
    raw.write_text('{oops\n{"id": "x"}\n{"id": "y", "conversations": [{"from": "robot", "value": "a"}]}\n')
    out = tmp_path / "ds"
    with pytest.raises(UserError) as e:
        prepare_dataset(str(raw), str(out), tokenizer=bundled_tokenizer_path(), verbose=False)
    assert str(e.value) == (f"{raw}: no usable conversation: all 3 records were rejected (bad_structure 1, "
                            f"malformed_json 1, unknown_role 1); see {out / 'rejects.jsonl'}")
    assert [json.loads(x)["reason"] for x in open(out / "rejects.jsonl")] == [
        "malformed_json", "bad_structure", "unknown_role"]
    assert not (out / "meta.json").exists()


def test_prepare_with_everything_held_out_is_a_user_error(tmp_path):
    raw = tmp_path / "raw.jsonl"
    raw.write_text("\n".join(json.dumps(conversation(f"r{k}")) for k in range(2)) + "\n")
    with pytest.raises(UserError, match="all 2 usable conversations would go to the validation split"):
        prepare_dataset(str(raw), str(tmp_path / "ds"), tokenizer=bundled_tokenizer_path(),
                        validation_fraction=0.999, verbose=False)  # fmt: skip


def test_every_written_file_follows_the_umask(tmp_path):
    raw = tmp_path / "raw.jsonl"
    raw.write_text("\n".join(json.dumps(conversation(f"r{k}")) for k in range(20)) + "\n{oops\n")
    tok = bundled_tokenizer_path()
    old = os.umask(0o022)
    try:
        c = tmp_path / "c"
        clean_file(str(raw), str(c / "clean.jsonl"), rejects_path=str(c / "rej.jsonl"))
        assert split_main([f"--input={c / 'clean.jsonl'}", f"--output={c / 'split.jsonl'}",
                           f"--tokenizer={tok}", "--max_length=64"]) == 0  # fmt: skip
        prepare_dataset(str(raw), str(tmp_path / "ds"), tokenizer=tok, max_length=64, validation_fraction=0.2,
                        verbose=False)  # fmt: skip
    finally:
        os.umask(old)
    modes = {os.path.relpath(os.path.join(d, f), tmp_path): os.stat(os.path.join(d, f)).st_mode & 0o777
             for d, _, files in os.walk(tmp_path) for f in files if f != "raw.jsonl"}  # fmt: skip
    for name in ("c/clean.jsonl", "c/rej.jsonl", "c/split.jsonl", "ds/meta.json", "ds/cleaned.jsonl",
                 "ds/rejects.jsonl", "ds/lengths_train.npy", "ds/lengths_validation.npy"):  # fmt: skip
        assert modes.pop(name) == 0o644, name
    assert modes and {m for m in modes.values()} == {0o644}, modes  # and the tfds files
