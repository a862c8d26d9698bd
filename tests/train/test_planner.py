"""The memory planner against a real sharded training step on 4 simulated devices.

Exact: the planner's per-device parameter and optimizer bytes equal device 0's shards of the real state that
train.py builds; the compiled step's argument bytes equal that state plus the batch; its aliased bytes equal
the donated state; its outputs are the state plus the metrics (within a few hundred bytes of tuple index
tables). The temporaries of the abstract (ShapeDtypeStruct) compile equal those of the step compiled from the
real arrays within 1%, and the real step runs and returns a state of the predicted size.
"""

import importlib.util
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from vicuna_jax.train import planner as plan

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL_MODEL = dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2)


def small_config(**overrides):
    spec = importlib.util.spec_from_file_location("tiny_cfg", os.path.join(REPO, "configs", "tiny.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    for key, value in SMALL_MODEL.items():
        c.model_overrides[key] = value
    c.seq_len, c.batch_size, c.mesh.fsdp, c.loss_chunk_size = 128, 8, 4, 0
    for key, value in overrides.items():
        c[key] = value
    return c


def device0_bytes(tree) -> int:
    first = jax.devices()[0]
    return sum(s.data.nbytes for leaf in jax.tree.leaves(tree) for s in leaf.addressable_shards
               if s.device == first)


def real_state_and_batch(setup):
    """The state exactly as the trainer builds it, and a packed batch of real conversations."""
    from vicuna_jax.bench.sharegpt import encoded_conversations, make_batches

    train_setup = setup["setup"]
    state = train_setup.init_state()
    examples = encoded_conversations(40, 129)
    host = make_batches(examples, 8, 128, packing=True)[0]
    return state, train_setup.global_batch(host)


@pytest.mark.parametrize("remat", ["none", "nothing_saveable"])
def test_plan_matches_the_real_sharded_step(remat):
    setup = plan.build(small_config(remat_policy=remat), num_devices=4)
    predicted = plan.compiled_memory(plan.compile_step(setup))
    parts = plan.state_bytes(setup)
    state, batch = real_state_and_batch(setup)

    assert parts["params"] == device0_bytes(state.params)
    assert parts["opt_state"] == device0_bytes(state.opt_state)
    state_bytes = device0_bytes(state)
    assert predicted["argument"] == state_bytes + device0_bytes(batch)
    assert predicted["alias"] == state_bytes  # donation: the new state reuses the old one's buffers
    metrics_bytes = 5 * 4 + 1  # five fp32 scalars and the `finite` flag
    assert 0 <= predicted["output"] - state_bytes - metrics_bytes < 1024

    with jax.set_mesh(setup["mesh"]):
        real = setup["step"].lower(state, batch).compile()
        measured = plan.compiled_memory(real)
        assert measured["temp"] == pytest.approx(predicted["temp"], rel=0.01)
        new_state, metrics = real(state, batch)
    assert device0_bytes(new_state) == state_bytes
    assert np.isfinite(float(metrics.loss))
    estimate = plan.analytic(setup)
    assert estimate["params"] == parts["params"] and estimate["opt_state"] == parts["opt_state"]


def test_analytic_activations_follow_the_remat_policy():
    setup = plan.build(small_config(), num_devices=4)
    acts = {p: plan.analytic(setup, p, flash=True)["activations"] for p in
            ("none", "save_attn_mlp", "save_qkv_attn", "save_qkv_proj", "nothing_saveable")}
    assert acts["none"] > acts["save_attn_mlp"] > acts["save_qkv_attn"] > acts["save_qkv_proj"]
    assert acts["save_qkv_proj"] > acts["nothing_saveable"] > 0
    assert plan.analytic(setup, "none", flash=False)["activations"] > acts["none"]


def test_cli_simulates_the_devices_it_is_asked_for(tmp_path):
    overrides = [f"--config.model_overrides.{k}={v}" for k, v in SMALL_MODEL.items()]
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    out = tmp_path / "plan.json"
    proc = subprocess.run(
        [sys.executable, "-m", "vicuna_jax.train.planner",
         f"--config={os.path.join(REPO, 'configs', 'tiny.py')}",
         "--devices=2", "--platform=cpu", "--hbm_gb=0.001", "--config.seq_len=128", "--config.batch_size=4",
         f"--json={out}", *overrides],
        capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 cpu device(s)" in proc.stdout and "'fsdp': 2" in proc.stdout
    assert "NO (compiled)" in proc.stdout  # a 1 MB device does not hold it
    import json

    report = json.loads(out.read_text())
    assert report["devices"] == 2 and not report["fits"]
