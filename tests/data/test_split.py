"""Splitting long conversations at exchange boundaries: fit, naming, nothing lost, long exchanges."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from vicuna_jax.data import encode_conversation
from vicuna_jax.data import split as split_mod
from vicuna_jax.data.split import split_and_encode
from vicuna_jax.data.tokenizer import bundled_tokenizer_path


def record(n_exchanges, words=20, rid="c", system=None):
    convo = [{"from": "system", "value": system}] if system else []
    for k in range(n_exchanges):
        convo += [
            {"from": "human", "value": f"Question {k}: " + "why " * (k % 3 + 1)},
            {"from": "gpt", "value": f"Answer {k}: " + " ".join(["because"] * words)},
        ]
    return {"id": rid, "conversations": convo}


def exchanges(rec):
    turns = [t for t in rec["conversations"] if t["from"] != "system"]
    return [(turns[k]["value"], turns[k + 1]["value"]) for k in range(0, len(turns), 2)]


def test_short_conversation_is_unchanged(small_tok):
    r = record(2)
    ((piece, ids, mask),) = split_and_encode(r, small_tok, max_length=512)
    assert piece is r
    ref_ids, ref_mask = encode_conversation(r["conversations"], small_tok)
    assert ids.tolist() == ref_ids.tolist() and mask.tolist() == ref_mask.tolist()


@pytest.mark.parametrize("max_length", [64, 100, 150, 300])
def test_pieces_fit_and_lose_nothing(small_tok, max_length):
    r = record(9, system="Be terse.")
    stats = Counter()
    pieces = split_and_encode(r, small_tok, max_length=max_length, stats=stats)
    assert len(pieces) > 1
    assert [p["id"] for p, _, _ in pieces] == [f"c_{k}" for k in range(len(pieces))]
    assert sum((exchanges(p) for p, _, _ in pieces), []) == exchanges(r)  # every exchange, in order, once
    for p, ids, mask in pieces:
        assert p["conversations"][0] == {"from": "system", "value": "Be terse."}
        assert len(ids) <= max_length
        ref_ids, ref_mask = encode_conversation(p["conversations"], small_tok)
        assert ids.tolist() == ref_ids.tolist() and mask.tolist() == ref_mask.tolist()  # not truncated
    # Greedy: no two neighbouring pieces could have been merged.
    for (a, _, _), (b, _, _) in zip(pieces, pieces[1:], strict=False):
        merged = {"conversations": a["conversations"] + b["conversations"][1:]}
        assert len(encode_conversation(merged["conversations"], small_tok)[0]) > max_length
    assert stats["split_records"] == 1 and stats["pieces_from_split"] == len(pieces)


def test_last_exchange_is_kept_when_the_split_falls_before_it(small_tok):
    """FastChat's splitter drops the final exchange when a split lands right before it; we keep it."""
    r = record(3, words=10)
    two = len(encode_conversation(record(2, words=10)["conversations"], small_tok)[0])
    pieces = split_and_encode(r, small_tok, max_length=two)
    assert [len(exchanges(p)) for p, _, _ in pieces] == [2, 1]
    assert exchanges(pieces[-1][0]) == exchanges(r)[2:]


@pytest.mark.parametrize("mode", ["truncate", "drop"])
def test_overlong_exchange_is_truncated_or_dropped_and_counted(small_tok, mode):
    r = record(3, words=10)
    r["conversations"][3]["value"] = "long " * 400
    stats = Counter()
    pieces = split_and_encode(r, small_tok, max_length=80, long_exchange=mode, stats=stats)
    texts = [ex for p, _, _ in pieces for ex in exchanges(p)]
    if mode == "truncate":
        assert stats["long_exchange_truncated"] == 1 and texts == exchanges(r)
        long_piece = next(p for p in pieces if "long long" in json.dumps(p[0]))
        assert len(long_piece[1]) == 80 and long_piece[2].any()
    else:
        assert stats["long_exchange_dropped"] == 1 and texts == [exchanges(r)[0], exchanges(r)[2]]
    assert all(len(ids) <= 80 for _, ids, _ in pieces)
    with pytest.raises(ValueError, match="long_exchange"):
        split_and_encode(r, small_tok, max_length=80, long_exchange="keep")


def test_split_cli(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(record(n, rid=f"r{n}")) for n in (1, 8)) + "\n")
    out = tmp_path / "out.jsonl"
    args = [
        f"--input={src}",
        f"--output={out}",
        f"--tokenizer={bundled_tokenizer_path()}",
        "--max_length=128",
    ]
    assert split_mod.main(args) == 0
    ids = [json.loads(x)["id"] for x in open(out)]
    assert ids[0] == "r1" and ids[1:] == [f"r8_{k}" for k in range(len(ids) - 1)] and len(ids) > 2
    assert "pieces_from_split" in capsys.readouterr().out
