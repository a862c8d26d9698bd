"""Synthetic ShareGPT-like conversations and the packed / padded batches the benchmarks train on.

Why synthetic: the benchmarks must run offline and be reproducible. The length distribution is chosen to look
like ShareGPT after FastChat's cleaning: exchanges per conversation Geometric(p=0.35) >= 1, capped at 16 (mean
~2.8); user messages LogNormal(median 40 words, sigma 1.0); assistant replies LogNormal(median 180 words,
sigma 0.8), a third of them with a fenced code block; `html_fraction` of replies stored as ShareGPT HTML (the
cleaner converts them). About 1,300 LLaMA tokens per conversation on average, with a long tail that the
splitter cuts at `max_length` (FastChat's 2048).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

WORDS = (
    "the of and to a in is it you that he was for on are with as I his they be at one have this from "
    "or had by word but what some we can out other were all there when up use your how said an each "
    "she which do their time if will way about many then them write would like so these her long "
    "make thing see him two has look more day could go come did number sound no most people my over "
    "know water than call first who may down side been now find any new work part take get place "
    "made live where after back little only round man year came show every good me give our under "
    "name very through just form sentence great think say help low line differ turn cause much mean "
    "before move right boy old too same tell does set three want air well also play small end put "
    "home read hand port large spell add even land here must big high such follow act why ask "
    "function variable return value model data training network gradient loss batch tensor memory "
    "compute"
).split()
CODE = (
    "def {n}(x, y):\n    total = x + y  # {w}\n    for i in range(10):\n        total += i * {k}\n"
    "    return total"
)


def _text(rng: np.random.Generator, n_words: int) -> str:
    words = rng.choice(WORDS, size=max(1, n_words))
    out, line = [], []
    for k, w in enumerate(words):
        line.append(w)
        if rng.random() < 0.07:
            out.append(" ".join(line) + rng.choice([".", "?", "!", ",", ":"]))
            line = []
            if rng.random() < 0.2 and k:
                out.append("\n\n")
    out.append(" ".join(line) + ".")
    return " ".join(out).replace(" \n\n ", "\n\n").capitalize()


def synthetic_sharegpt(n: int, seed: int = 0, html_fraction: float = 0.0) -> list[dict]:
    """`n` ShareGPT-format records ({"id", "conversations": [{"from", "value"}...]}), deterministic."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        turns = []
        for _ in range(min(16, int(rng.geometric(0.35)))):
            q = _text(rng, int(rng.lognormal(np.log(40), 1.0)))
            a = _text(rng, int(rng.lognormal(np.log(180), 0.8)))
            if rng.random() < 0.33:
                code = CODE.format(n=f"f{rng.integers(100)}", w=rng.choice(WORDS), k=rng.integers(9))
                a += f"\n\n```python\n{code}\n```"
            if rng.random() < html_fraction:
                body = "".join(f"<p>{p}</p>" for p in a.split("\n\n") if not p.startswith("```"))
                a = f'<div class="markdown prose w-full break-words">{body}</div>'
            turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
        records.append({"id": f"syn{i}", "conversations": turns})
    return records


def encoded_conversations(n: int, max_length: int, seed: int = 0,
                          tokenizer: Any = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(input_ids, loss_mask) of `n` synthetic conversations through the real pipeline: clean, split at
    `max_length` tokens, vicuna_v1.1 template (targets = assistant replies and their EOS)."""
    from vicuna_jax.data.clean import Cleaner
    from vicuna_jax.data.formats import RawRecord
    from vicuna_jax.data.split import split_and_encode
    from vicuna_jax.data.tokenizer import bundled_tokenizer_path, load_tokenizer

    tok = tokenizer if tokenizer is not None else load_tokenizer(bundled_tokenizer_path())
    raws = [RawRecord("synthetic", k + 1, k, r) for k, r in enumerate(synthetic_sharegpt(n, seed))]
    stats: Counter = Counter()
    out = []
    for record in Cleaner()(raws):
        for _, ids, mask in split_and_encode(record, tok, max_length, stats=stats):
            out.append((np.asarray(ids, np.int32), np.asarray(mask, np.float32)))
    return out


def make_batches(examples: list[tuple[np.ndarray, np.ndarray]], batch_size: int, seq_len: int,
                 packing: bool, seed: int = 0, window: int = 2048) -> list[dict[str, np.ndarray]]:
    """Every full batch of `examples` in a shuffled order, packed (best-fit decreasing within windows, as the
    training loader does) or one conversation per row padded to `seq_len` (FastChat)."""
    from vicuna_jax.data.pack import assemble, plan_rows, slots_needed

    slots = slots_needed(np.array([len(ids) for ids, _ in examples]), seq_len)
    rng = np.random.default_rng(seed)
    rows = plan_rows(rng.permutation(len(examples)), slots, seq_len, packing, window, rng)
    batches = []
    for start in range(0, len(rows) - batch_size + 1, batch_size):
        chunk = rows[start:start + batch_size]
        batches.append(assemble([[examples[i] for i in row] for row in chunk], seq_len))
    return batches
