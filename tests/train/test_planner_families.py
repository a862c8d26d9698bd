"""The memory planner on the new families: exact state bytes for the Llama-3 / Qwen3 / Mistral recipes at 8B
on 8 devices (abstract, nothing allocated or compiled), and a real compiled step of a tiny Qwen2 with a
sliding window whose state matches the plan."""

import importlib.util
import os

import jax
import numpy as np
import pytest
from test_planner import REPO, device0_bytes, real_state_and_batch, small_config

from vicuna_jax.model.config import get_preset
from vicuna_jax.train import planner as plan


def _config(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.mark.parametrize("name,preset,template", [("llama3_8b", "llama3_1_8b", "llama-3"),
                                                  ("qwen3_8b", "qwen3_8b", "hf"),
                                                  ("mistral_7b", "mistral_7b", "mistral")])
def test_recipes_plan_their_8b_state_exactly(name, preset, template):
    c = _config(name)
    assert (c.model, c.data.template, c.seq_len, c.batch_size) == (preset, template, 4096, 32)
    setup = plan.build(c, num_devices=8)
    cfg = get_preset(preset)
    assert setup["cfg"] == cfg and setup["mesh"].shape["fsdp"] == 8
    parts = plan.state_bytes(setup)
    # fp32 parameters, FSDP over 8 devices: one eighth each, plus the few small tensors (norms, biases) that
    # stay replicated; AdamW keeps two more copies.
    assert parts["params"] == pytest.approx(cfg.num_params() * 4 / 8, rel=0.002)
    assert parts["opt_state"] == pytest.approx(2 * parts["params"], rel=0.001)
    estimate = plan.analytic(setup, flash=True)
    assert estimate["params"] == parts["params"] and estimate["total"] < 80 * 2**30


def test_tiny_qwen2_with_a_window_plans_the_real_step():
    c = small_config()
    c.model = "tiny_qwen2"
    c.model_overrides.sliding_window = 32
    setup = plan.build(c, num_devices=4)
    assert setup["cfg"].qkv_bias and setup["cfg"].sliding_window == 32
    predicted = plan.compiled_memory(plan.compile_step(setup))
    parts = plan.state_bytes(setup)
    state, batch = real_state_and_batch(setup)
    assert parts["params"] == device0_bytes(state.params)
    assert "bias" in state.params["layers"]["self_attn"]["q_proj"]
    state_bytes = device0_bytes(state)
    assert predicted["argument"] == state_bytes + device0_bytes(batch)
    with jax.set_mesh(setup["mesh"]):
        new_state, metrics = setup["step"](state, batch)  # donates `state`
    assert device0_bytes(new_state) == state_bytes and np.isfinite(float(metrics.loss))
