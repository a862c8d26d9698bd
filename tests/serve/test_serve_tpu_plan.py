"""The serving engine's decode and prefill programs compiled for one TPU chip by the real TPU compiler, on
this CPU-only host (needs libtpu: pip install -e '.[tpu-aot]'; skipped without it)."""

import importlib.util

import pytest

from vicuna_jax.cli import UserError
from vicuna_jax.model.config import get_preset
from vicuna_jax.serve import planner

pytestmark = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                reason="needs libtpu to compile for TPU (pip install -e '.[tpu-aot]')")


def test_tiny_engine_compiles_for_one_v5e_chip():
    r = planner.plan("tiny", "v5e-1", max_batch=4, max_seq_len=512, param_dtype="bfloat16",
                     max_prefill_tokens=1024)
    cfg = get_preset("tiny")
    assert r["weights"] == cfg.num_params() * 2  # bf16 storage, every parameter once
    rows, length = r["rows"], r["length"]
    assert (rows, length) == (4, 512)
    kv = 2 * cfg.num_layers * rows * length * cfg.num_kv_heads * cfg.dim_per_head * 2  # k and v, bf16
    # + slot segments, row ends and each row's next-token logits
    assert r["cache"] == kv + rows * length * 4 + rows * 4 + rows * cfg.vocab_size * 4
    assert r["prefill_shape"] == [2, 512]  # 1024 tokens per call of 512-token prompts
    decode, prefill = r["decode"]["memory"], r["prefill"]["memory"]
    assert decode["argument"] >= r["weights"] + r["cache"] and decode["temp"] > 0
    assert decode["alias"] >= kv  # the cache is donated and updated in place
    assert prefill["output"] >= 2 * cfg.num_layers * 2 * 512 * cfg.num_kv_heads * cfg.dim_per_head * 2
    text = planner.format_report(r)
    assert "decode (8 tokens x 4 rows)" in text and "fits" in text


def test_float32_weights_double_the_weights():
    r = planner.plan("tiny", "v6e-1", max_batch=2, max_seq_len=256)
    assert r["param_dtype"] == "float32" and r["weights"] == get_preset("tiny").num_params() * 4


def test_one_chip_only():
    with pytest.raises(UserError, match="one chip"):
        planner.plan("tiny", "v5e-4", max_batch=2, max_seq_len=256)
