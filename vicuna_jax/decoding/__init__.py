"""The decoding core shared by `generate` (batch generation), `chat` and `serve` (continuous batching).

`sampling`: SamplingParams and per-row keyed sampling on the device. `text`: stop strings, the streaming
hold-back of unfinished UTF-8 characters and possible stop-string starts, EOS ids. `batch`: the KV-cache
rows on the device with their buckets, prompt prefill into rows, decode chunks and resizing.
"""

from vicuna_jax.decoding.batch import DecodeBatch, RowParams, RowTokens, next_pow2
from vicuna_jax.decoding.sampling import SamplingParams, per_row, sample_rows, sample_tokens
from vicuna_jax.decoding.text import TextStream, first_stop, resolve_eos_ids, tokens_until_stop

__all__ = ["DecodeBatch", "RowParams", "RowTokens", "SamplingParams", "TextStream", "first_stop", "next_pow2",
           "per_row", "resolve_eos_ids", "sample_rows", "sample_tokens", "tokens_until_stop"]
