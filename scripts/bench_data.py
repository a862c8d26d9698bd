"""Data pipeline benchmark: prepare throughput, packing efficiency, loader throughput. Prints one table.

Synthetic ShareGPT-like data (deterministic; `vicuna_jax.bench.sharegpt`): exchanges per conversation
Geometric(p=0.35) >= 1, capped at 16 (mean ~2.8); user messages LogNormal(median 40 words, sigma 1.0);
assistant replies LogNormal(median 180 words, sigma 0.8), a third of them with a fenced code block;
`--html_fraction` of replies stored as ShareGPT HTML (the cleaner converts them). About 1,300 LLaMA tokens
per conversation on average, with a long tail that the splitter cuts at --max_length. Training-step
throughput on packed vs padded batches: `python scripts/bench_train.py --sections=packing`.

    python scripts/bench_data.py [--num_conversations=3000] [--tokenizer=PATH] [--seq_len=2048]

Speed is measured here, on whatever machine runs it; it is never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from vicuna_jax.bench.sharegpt import synthetic_sharegpt  # noqa: E402  (the generator lives in the package)
from vicuna_jax.data.clean import Cleaner  # noqa: E402
from vicuna_jax.data.formats import RawRecord  # noqa: E402
from vicuna_jax.data.loader import make_train_iterator  # noqa: E402
from vicuna_jax.data.pack import plan_efficiency, plan_rows, slots_needed  # noqa: E402
from vicuna_jax.data.prepare import prepare_dataset  # noqa: E402
from vicuna_jax.data.split import split_and_encode  # noqa: E402
from vicuna_jax.data.tokenizer import bundled_tokenizer_path, load_tokenizer  # noqa: E402


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num_conversations", type=int, default=3000)
    ap.add_argument(
        "--tokenizer", default=os.environ.get("VICUNA_JAX_LLAMA_TOKENIZER") or bundled_tokenizer_path()
    )
    ap.add_argument("--seq_len", type=int, default=2048)
    ap.add_argument("--max_length", type=int, default=2048)
    ap.add_argument("--html_fraction", type=float, default=0.1)
    ap.add_argument("--loader_batches", type=int, default=40)
    args = ap.parse_args()
    tok = load_tokenizer(args.tokenizer)
    n = args.num_conversations
    records = synthetic_sharegpt(n, html_fraction=args.html_fraction)
    rows: list[tuple[str, str, str]] = []

    raws = [RawRecord("synthetic", k + 1, k, r) for k, r in enumerate(records)]
    cleaner = Cleaner()
    cleaned, t_clean = timed(lambda: list(cleaner(raws)))
    plain = [RawRecord("s", k + 1, k, r) for k, r in enumerate(synthetic_sharegpt(n, html_fraction=0.0))]
    cleaned_plain, t_clean_plain = timed(lambda: list(Cleaner()(plain)))
    texts = [t["value"] for r in cleaned for t in r["conversations"]]
    _, t_sp = timed(lambda: [tok.sp.EncodeAsIds(x) for x in texts])
    stats: Counter = Counter()
    encoded, t_enc = timed(
        lambda: [e for r in cleaned for e in split_and_encode(r, tok, args.max_length, stats=stats)]
    )
    lengths = np.array([len(ids) for _, ids, _ in encoded])
    targets = sum(int(m.sum()) for _, _, m in encoded)
    rows.append(
        (
            f"clean (HTML {round(100 * args.html_fraction)}%)",
            f"{n / t_clean:,.0f} conv/s",
            f"{len(cleaned)} kept of {n}",
        )
    )
    rows.append(("clean (no HTML)", f"{n / t_clean_plain:,.0f} conv/s", f"{len(cleaned_plain)} kept"))
    rows.append(
        (
            "split + encode",
            f"{len(cleaned) / t_enc:,.0f} conv/s",
            f"{lengths.sum() / t_enc / 1e6:.2f}M tok/s, {len(encoded)} pieces, "
            f"{stats['split_records']} split",
        )
    )
    rows.append(
        (
            "sentencepiece alone, same text",
            f"{len(cleaned) / t_sp:,.0f} conv/s",
            "the encode bound: plain EncodeAsIds of every message",
        )
    )
    rows.append(("clean + split + encode", f"{n / (t_clean + t_enc):,.0f} conv/s", "one core, in memory"))

    slots = slots_needed(lengths, args.seq_len)
    order = np.random.default_rng(0).permutation(len(slots))
    for name, packing, window in (
        ("pad to seq_len (FastChat)", False, 1),
        ("packed BFD, window 2048", True, 2048),
        ("packed BFD, window 256", True, 256),
    ):
        plan, t_plan = timed(lambda p=packing, w=window: plan_rows(order, slots, args.seq_len, p, w))
        eff = plan_efficiency(plan, slots, args.seq_len)
        tfrac = targets / (len(plan) * args.seq_len)
        rows.append(
            (
                f"{name} @ {args.seq_len}",
                f"{eff:.1%} non-pad",
                f"{tfrac:.1%} targets, {len(plan)} rows, plan {t_plan * 1e3:.0f} ms",
            )
        )

    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "raw.json")
        with open(raw, "w") as f:
            json.dump(records, f)
        _, t_prep = timed(
            lambda: prepare_dataset(
                raw,
                os.path.join(tmp, "ds"),
                tokenizer=tok,
                max_length=args.max_length,
                validation_fraction=0.0,
                verbose=False,
            )
        )
        rows.append(("prepare CLI path (+ tfds write)", f"{n / t_prep:,.0f} conv/s", f"{t_prep:.1f} s total"))
        for packing in (True, False):
            it = make_train_iterator(
                os.path.join(tmp, "ds"),
                seq_len=args.seq_len,
                global_batch_size=8,
                seed=0,
                packing=packing,
                process_index=0,
                process_count=1,
            )
            next(it)
            t0 = time.perf_counter()
            slots_read = non_pad = 0
            for _ in range(args.loader_batches):
                b = next(it)
                slots_read += b["segment_ids"].size
                non_pad += int((b["segment_ids"] > 0).sum())
            dt = time.perf_counter() - t0
            rows.append(
                (
                    f"loader ({'packed' if packing else 'pad-only'}, batch 8x{args.seq_len})",
                    f"{slots_read / dt / 1e3:,.0f}K tok/s",
                    f"{non_pad / dt / 1e3:,.0f}K non-pad tok/s",
                )
            )

    print(
        f"tokenizer {tok.model_path} (vocab {tok.vocab_size}); {n} synthetic conversations, "
        f"{lengths.mean():.0f} tokens/piece mean, p50 {np.median(lengths):.0f}, "
        f"p99 {np.percentile(lengths, 99):.0f}"
    )
    w = max(len(r[0]) for r in rows)
    print(f"{'stage':{w}}  {'rate':>18}  notes")
    for name, rate, note in rows:
        print(f"{name:{w}}  {rate:>18}  {note}")


if __name__ == "__main__":
    main()
