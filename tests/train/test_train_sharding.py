"""FSDP on 8 simulated devices trains like one device; weights really are sharded; bad configs fail early."""

import pytest
from train_utils import config, losses, run_cli

from vicuna_jax.model.config import ConfigError
from vicuna_jax.train import train
from vicuna_jax.train.config import validate


def test_eight_devices_match_one_device(prepared, tmp_path):
    summary = train(config(prepared, **{"mesh.data": 2, "mesh.fsdp": 4}), str(tmp_path / "eight"))
    proc = run_cli(prepared, str(tmp_path / "one"), devices=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    many, one = losses(str(tmp_path / "eight")), losses(str(tmp_path / "one"))
    assert sorted(many) == sorted(one) == [1, 2, 3, 4, 5, 6]
    for step in one:
        assert abs(many[step] - one[step]) / one[step] < 2e-3, (step, many[step], one[step])
    assert one[6] < one[1]  # it learns
    specs = summary["param_shardings"]
    big = ("embed_tokens", "layers/mlp/up_proj/kernel", "layers/self_attn/q_proj/kernel", "lm_head/kernel")
    for name in big:
        assert "fsdp" in specs[name], (name, specs[name])
    assert "fsdp" not in specs["norm/scale"]


@pytest.mark.parametrize("overrides, key", [
    ({"mesh.fsdp": 3}, "config.mesh"),
    ({"mesh.fsdp": -1, "mesh.data": -1}, "config.mesh: at most one"),
    ({"mesh.tensor": 0}, "config.mesh.tensor"),
    ({"seq_len": 5000}, "config.seq_len"),
    ({"remat_policy": "bogus"}, "config.remat_policy"),
    ({"optimizer.learning_rate": -1.0}, "config.optimizer.learning_rate"),
    ({"batch_size": 6, "mesh.fsdp": 8}, "config.batch_size"),
    ({"grad_accum_steps": 3}, "config.grad_accum_steps"),
    ({"attention": "flash"}, "config.attention"),
    ({"model": "llama9"}, "config.model"),
    ({"model_overrides.num_kv_heads": 3}, "config.model_overrides"),
    ({"data.path": "/nonexistent/data.json"}, "config.data.path"),
    ({"total_steps": 0}, "config.total_steps"),
])
def test_bad_config_values_name_the_key(prepared, overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(config(prepared, **overrides), num_devices=8)


def test_cli_bad_value_fails_before_compiling(prepared, tmp_path):
    proc = run_cli(prepared, str(tmp_path / "w"), devices=1, **{"mesh.tensor": 2})
    assert proc.returncode == 2
    assert "error: config.mesh" in proc.stderr
    assert "Traceback" not in proc.stderr
    unknown = run_cli(prepared, str(tmp_path / "w"), devices=1, **{"no_such_key": 1})
    assert unknown.returncode != 0 and "no_such_key" in unknown.stderr


@pytest.mark.parametrize("name", ["tiny", "vicuna_7b", "vicuna_13b", "vicuna_v15_7b"])
def test_shipped_configs_validate(name):
    import importlib.util
    import os

    from train_utils import REPO

    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for devices in (1, 8):
        cfg = validate(module.get_config(), num_devices=devices)
        assert cfg.num_params() > 0
