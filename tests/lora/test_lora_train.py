"""LoRA through the trainer: `--config.lora.rank` trains, checkpoints hold only adapters and record their
base, exports load in peft and transformers, kill -9 resumes exactly, and a mismatched base or setting is
refused before anything is restored."""

import os
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
from hf_models import hf_logits
from lora_utils import cli_args, env, logits, losses, train_config

from vicuna_jax import checkpoint as ckpt_lib
from vicuna_jax.cli import UserError
from vicuna_jax.load import load_model
from vicuna_jax.model.config import ConfigError
from vicuna_jax.train import train
from vicuna_jax.train.config import validate

TOKENS = np.random.RandomState(0).randint(1, 4000, (2, 24))


def test_a_lora_run_trains_adapters_only_and_exports_for_peft_and_transformers(lora_workdir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from vicuna_jax.lora.base import read_record

    workdir, summary = lora_workdir
    assert summary["final_step"] == 4 and summary["adapter_dir"] == os.path.join(workdir, "adapter")
    assert summary["loss"] < summary["first_loss"]
    assert set(summary["param_shardings"]) == {f"layers/{g}/{m}/lora_{f}" for g, m in [
        ("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"), ("self_attn", "o_proj"),
        ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj")] for f in "ab"}
    step_dir = ckpt_lib.latest_step_dir(os.path.join(workdir, "checkpoints"))
    record = read_record(step_dir)
    assert record["rank"] == 4 and record["base_model"] == os.path.join(workdir, "base")
    assert len(record["base_fingerprint"]) == 64

    def size(path):
        return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)

    base_bytes = size(os.path.join(workdir, "base"))
    assert size(os.path.join(step_dir, "params")) + size(os.path.join(step_dir, "opt_state")) < base_bytes / 2

    ours, _, _ = load_model(workdir)  # a LoRA workdir loads onto its recorded base
    ours = logits(ours, TOKENS)
    base = AutoModelForCausalLM.from_pretrained(os.path.join(workdir, "base"), dtype=torch.float32)
    peft = PeftModel.from_pretrained(base, os.path.join(workdir, "adapter")).eval()
    assert np.abs(hf_logits(peft, TOKENS) - ours).max() <= 1e-4
    merged = AutoModelForCausalLM.from_pretrained(os.path.join(workdir, "hf"), dtype=torch.float32).eval()
    assert np.abs(hf_logits(merged, TOKENS) - ours).max() <= 1e-4
    plain, _, _ = load_model(os.path.join(workdir, "base"))
    assert np.abs(logits(plain, TOKENS) - ours).max() > 1e-3  # it learned something


LONG = {"total_steps": 16, "checkpoint_every": 2, "keep_checkpoints": 2, "export_hf_at_end": False,
        "lora.dropout": 0.1, "lora.base_quantization": "nf4", "lora.quant_block_size": 16}


def test_sigkill_then_restart_gives_identical_losses(prepared, tmp_path):
    reference = str(tmp_path / "reference")
    train(train_config(prepared, **LONG), reference)
    workdir = str(tmp_path / "killed")
    proc = subprocess.Popen(cli_args(prepared, workdir, **LONG), env=env(8), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while ckpt_lib.latest_step_dir(os.path.join(workdir, "checkpoints")) is None:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert max(losses(workdir), default=0) < LONG["total_steps"], "finished before the kill; make it longer"
    resumed = subprocess.run(cli_args(prepared, workdir, **LONG), env=env(8), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    assert losses(workdir) == losses(reference)  # bit-identical, step by step (dropout masks included)


@pytest.fixture(scope="module")
def small_bases(tmp_path_factory):
    """Two HF bases of the trainer's small architecture (different weights)."""
    from vicuna_jax.convert import save_hf
    from vicuna_jax.data import bundled_tokenizer_path, chat_format
    from vicuna_jax.model.config import get_preset
    from vicuna_jax.model.llama import build_model, model_params

    cfg = get_preset("tiny").replace(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                                     num_kv_heads=2)
    root = tmp_path_factory.mktemp("bases")
    fmt = chat_format.resolve(bundled_tokenizer_path())
    return [save_hf(jax.tree.map(np.asarray, model_params(build_model(cfg, seed=s))), cfg,
                    str(root / f"b{s}"), dtype="float32", chat_format=fmt) for s in (0, 1)]


def test_resuming_on_another_base_or_with_other_settings_is_refused(prepared, small_bases, tmp_path):
    base_a, base_b = small_bases
    workdir = str(tmp_path / "w")
    first = train(train_config(prepared, init_from_hf=base_a, total_steps=2, export_hf_at_end=False), workdir)
    assert first["final_step"] == 2
    more = {"init_from_hf": base_a, "total_steps": 4, "export_hf_at_end": False}
    with pytest.raises(UserError, match=f"another base model: trained on '{base_a}'.*given is '{base_b}'"):
        train(train_config(prepared, **{**more, "init_from_hf": base_b}), workdir)
    with pytest.raises(UserError, match=r"config\.lora\.rank: .* trained with rank=4, the config says 8"):
        train(train_config(prepared, **{**more, "lora.rank": 8}), workdir)
    with pytest.raises(UserError, match=r"config\.lora\.base_quantization: .*trained with base_quantization"):
        train(train_config(prepared, **{**more, "lora.base_quantization": "int8",
                                        "lora.quant_block_size": 16}), workdir)
    with pytest.raises(UserError, match=r"config\.lora\.rank: .* holds LoRA adapters"):
        train(train_config(prepared, **{**more, "lora.rank": 0}), workdir)
    assert os.listdir(os.path.join(workdir, "checkpoints")) == ["2"]  # nothing was moved aside
    assert not os.path.exists(os.path.join(workdir, "checkpoints-damaged"))
    resumed = train(train_config(prepared, **more), workdir)
    assert resumed["start_step"] == 2 and resumed["final_step"] == 4
    full = str(tmp_path / "full")
    train(train_config(prepared, **{"lora.rank": 0, "total_steps": 2, "export_hf_at_end": False}), full)
    with pytest.raises(UserError, match=r"config\.lora\.rank: .* full fine-tuning checkpoint"):
        train(train_config(prepared, **{"total_steps": 4, "export_hf_at_end": False}), full)


def test_training_continues_from_a_peft_adapter(prepared, small_bases, lora_workdir):
    from vicuna_jax import parallel
    from vicuna_jax.lora import run as lora_run
    from vicuna_jax.lora.base import BaseMismatchError, for_run
    from vicuna_jax.lora.peft import load_peft
    from vicuna_jax.train import config as config_lib
    from vicuna_jax.train.setup import build

    workdir, _ = lora_workdir
    adapter = os.path.join(workdir, "adapter")
    cfg = config_lib.load(train_config(prepared, **{"lora.rank": 0, "lora.init_adapter": adapter,
                                                    "lora.target_modules": "q"}), jax.device_count())
    assert cfg.lora.rank == 4 and len(cfg.lora.target_modules) == 7  # taken from the adapter
    setup = build(cfg, parallel.make_mesh(), total_steps=4)
    base = for_run(cfg, workdir, None)  # the run's own base (workdir/base)
    state = lora_run.initial_state(setup, base)
    _, want, _ = load_peft(adapter, cfg.model)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), state.params, want)
    other = for_run(cfg.__class__(**{**cfg.__dict__, "init_from_hf": small_bases[1]}), workdir, None)
    with pytest.raises(BaseMismatchError):
        lora_run.initial_state(setup, other)


@pytest.mark.parametrize("overrides, key", [
    ({"lora.rank": -1}, "config.lora.rank"),
    ({"lora.dropout": 1.5}, "config.lora.dropout"),
    ({"lora.alpha": 0.0}, "config.lora.alpha"),
    ({"lora.base_quantization": "int4"}, "config.lora.base_quantization"),
    ({"lora.base_dtype": "int8"}, "config.lora.base_dtype"),
    ({"lora.target_modules": "q,x"}, "config.lora.target_modules: unknown module 'x'"),
    ({"lora.base_quantization": "nf4", "lora.quant_block_size": 48}, "config.lora.quant_block_size"),
    ({"lora.rank": 0, "lora.base_quantization": "nf4"}, "config.lora.base_quantization"),
    ({"lora.init_adapter": "/nonexistent"}, "config.lora.init_adapter: /nonexistent has no adapter_config"),
])
def test_bad_lora_values_name_the_key(prepared, overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(train_config(prepared, **overrides), num_devices=8)


@pytest.mark.parametrize("name", ["vicuna_7b_lora", "vicuna_7b_qlora"])
def test_shipped_lora_configs_validate(name):
    import importlib.util

    from lora_utils import REPO

    from vicuna_jax.lora.config import load

    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    for devices in (1, 8):
        model = validate(c, num_devices=devices)
        assert load(c.lora, model).enabled
