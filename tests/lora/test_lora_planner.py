"""The memory planner with LoRA/QLoRA: the frozen base, adapters and their AdamW state per device are
exactly those of the state the trainer builds, and the donated base is aliased, not copied."""

import jax
from lora_utils import train_config

from vicuna_jax.lora.base import random_base
from vicuna_jax.train import planner


def device0_bytes(tree) -> int:
    first = jax.devices()[0]
    return sum(s.data.nbytes for leaf in jax.tree.leaves(tree) for s in leaf.addressable_shards
               if s.device == first)


def test_qlora_plan_matches_the_real_state(prepared):
    c = train_config(prepared, **{"lora.base_quantization": "nf4", "lora.quant_block_size": 16,
                                  "model_overrides.vocab_size": 211, "mesh.fsdp": 4, "mesh.data": 2})
    report = planner.plan(c, devices=8)
    setup = planner.build(c, 8)["setup"]
    state = setup.init_state(random_base(setup.cfg))
    s = report["state"]
    assert s["frozen"] == device0_bytes(state.frozen) > 0
    assert s["params"] == device0_bytes(state.params)
    assert s["opt_state"] == device0_bytes(state.opt_state)
    m = report["compiled"]
    assert m["argument"] >= s["frozen"] + s["params"] + s["opt_state"]
    assert m["alias"] >= s["frozen"] + s["params"] + s["opt_state"] - 64  # donated, passed through
    text = planner.format_report(report)
    assert "frozen base" in text and "kernels nf4" in text and "adapters" in text
