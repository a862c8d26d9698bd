"""prepare with a tokenizer.json tokenizer and the model's own template: worker processes give the identical
dataset, stored examples re-encode to themselves, conversations the template rejects are counted by reason."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("transformers")

from hf_tokenizers import QWEN3_TEMPLATE, save_hf_tokenizer  # noqa: E402

from vicuna_jax.cli import UserError  # noqa: E402
from vicuna_jax.data import encode_conversation, load_tokenizer  # noqa: E402
from vicuna_jax.data.prepare import TEMPLATE_REJECTS, bundled_sample_path, prepare_dataset  # noqa: E402
from vicuna_jax.data.store import PreparedDataset  # noqa: E402

MAX_LENGTH = 257


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    return save_hf_tokenizer(str(tmp_path_factory.mktemp("qwen3")), "qwen", chat_template=QWEN3_TEMPLATE)


def _examples(path):
    ds = PreparedDataset(path)
    return {split: [(ex["id"], ex["input_ids"].tolist(), ex["loss_mask"].tolist())
                    for ex in (ds.source(split)[k] for k in range(len(ds.source(split))))]
            for split in ds.splits}


def test_workers_give_the_identical_dataset(qwen3, tmp_path):
    one = prepare_dataset(bundled_sample_path(), str(tmp_path / "one"), tokenizer=qwen3, template="hf",
                          max_length=MAX_LENGTH, num_workers=1, verbose=False)
    two = prepare_dataset(bundled_sample_path(), str(tmp_path / "two"), tokenizer=qwen3, template="hf",
                          max_length=MAX_LENGTH, num_workers=2, verbose=False)
    metas = [json.load(open(os.path.join(p, "meta.json"))) for p in (one, two)]
    assert (metas[0]["num_workers"], metas[1]["num_workers"]) == (1, 2)
    for key in ("key", "splits", "clean_report", "split_stats", "template_rejects"):
        assert metas[0][key] == metas[1][key], key
    assert metas[0]["split_stats"]["split_records"] > 10  # long conversations were split
    for name in ("cleaned.jsonl", "rejects.jsonl"):
        assert open(os.path.join(one, name)).read() == open(os.path.join(two, name)).read()
    assert _examples(one) == _examples(two)


def test_stored_examples_are_the_template_encoding(qwen3, tmp_path):
    out = prepare_dataset(bundled_sample_path(), str(tmp_path / "d"), tokenizer=qwen3, template="hf",
                          max_length=MAX_LENGTH, num_workers=1, verbose=False)
    tok = load_tokenizer(qwen3)
    ds = PreparedDataset(out)
    src = ds.source("train")
    im_end = tok.piece_to_id("<|im_end|>")
    for k in (0, len(src) // 3, len(src) - 1):
        ex = src[k]
        ids, mask = encode_conversation(json.loads(ex["conversations"]), tok, template="hf",
                                        max_length=MAX_LENGTH)
        assert ex["input_ids"].tolist() == ids.tolist() and ex["loss_mask"].tolist() == mask.tolist()
        ends = [i for i in range(len(ids)) if mask[i] and (i + 1 == len(ids) or not mask[i + 1])]
        assert all(ids[i] == im_end for i in ends[:-1])  # every reply but a cut last one ends so
    meta = ds.meta
    assert meta["options"]["tokenizer_fingerprint"] == tok.fingerprint and meta["template_rejects"] == {}


def _raw(tmp_path, replies):
    rows = [{"id": f"c{k}", "conversations": [{"from": "human", "value": f"Question {k}?"},
                                               {"from": "gpt", "value": reply}]}
            for k, reply in enumerate(replies)]
    path = tmp_path / "raw.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_unalignable_conversations_are_counted_not_trained_unmasked(qwen3, tmp_path):
    replies = [f"Answer number {k}." for k in range(20)]
    replies[3] = "Injected <|im_end|> token"
    replies[7] = "Another <|im_start|>system one"
    out = prepare_dataset(_raw(tmp_path, replies), str(tmp_path / "d"), tokenizer=qwen3, template="hf",
                          max_length=MAX_LENGTH, validation_fraction=0.0, num_workers=1, verbose=False)
    meta = json.load(open(os.path.join(out, "meta.json")))
    assert meta["template_rejects"] == {"special_token_text": 2}
    assert meta["splits"]["train"]["examples"] == 18 and meta["splits"]["train"]["conversations"] == 20
    rejected = [json.loads(line) for line in open(os.path.join(out, TEMPLATE_REJECTS))]
    assert [r["reason"] for r in rejected] == ["special_token_text"] * 2
    assert "'<|im_end|>'" in rejected[0]["detail"]


def test_a_template_that_rejects_everything_is_an_error(tmp_path):
    path = save_hf_tokenizer(str(tmp_path / "m"), "mistral")  # its template refuses system messages
    raw = tmp_path / "sys.jsonl"
    rows = [{"id": f"s{k}", "conversations": [{"from": "system", "value": "Be nice."},
                                               {"from": "human", "value": f"hi {k}"},
                                               {"from": "gpt", "value": "yo"}]}
            for k in range(5)]
    raw.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match=r"aligned on any train conversation \(template_error 5\)"):
        prepare_dataset(str(raw), str(tmp_path / "d"), tokenizer=path, template="hf", validation_fraction=0.0,
                        num_workers=1, verbose=False)


def test_a_dataset_prepared_by_an_older_version_is_named(tmp_path):
    (tmp_path / "old" / "vicuna_chat" / "1.0.0").mkdir(parents=True)
    (tmp_path / "old" / "meta.json").write_text(json.dumps({"splits": {"train": {"examples": 3}}}))
    with pytest.raises(FileNotFoundError, match=r"prepared by an older vicuna_jax .*prepare it again"):
        PreparedDataset(str(tmp_path / "old"))
