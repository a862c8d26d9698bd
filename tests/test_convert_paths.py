"""Export destinations that are symlinks (live or dangling), and config.json files that are not configs."""

import os
import subprocess
import sys

import pytest

from vicuna_jax import checkpoint
from vicuna_jax.convert import load_hf, save_hf
from vicuna_jax.model.config import ConfigError, LlamaConfig
from vicuna_jax.model.llama import build_model, model_params

CFG = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                  num_kv_heads=1, max_position_embeddings=32)


@pytest.fixture(scope="module")
def params():
    return model_params(build_model(CFG, seed=0))


def _leftovers(directory) -> list[str]:
    return sorted(n for n in os.listdir(directory) if ".tmp" in n)


def test_overwrite_through_a_symlink_replaces_its_target_and_keeps_the_link(params, tmp_path):
    real = tmp_path / "models" / "v1"
    save_hf(params, CFG, str(real), dtype="float32")
    (real / "stale.txt").write_text("from the old export")
    link = tmp_path / "current"
    link.symlink_to(real, target_is_directory=True)
    out = save_hf(params, CFG, str(link), dtype="float32", overwrite=True)
    assert out == str(real)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert not (real / "stale.txt").exists() and (real / "config.json").is_file()
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "models") == []
    cfg, _ = load_hf(str(link))
    assert cfg == CFG


def test_a_dangling_symlink_is_filled_in_and_nothing_is_left_behind(params, tmp_path):
    link = tmp_path / "latest"
    link.symlink_to(tmp_path / "exports" / "run7", target_is_directory=True)
    (tmp_path / "exports").mkdir()
    save_hf(params, CFG, str(link), dtype="float32")
    assert (tmp_path / "exports" / "run7" / "config.json").is_file()
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "exports") == []
    # The same holds for model checkpoints.
    ckpt_link = tmp_path / "ckpt"
    ckpt_link.symlink_to(tmp_path / "exports" / "ckpt7", target_is_directory=True)
    checkpoint.save_model(str(ckpt_link), params, CFG)
    assert checkpoint.load_model_config(str(ckpt_link)) == CFG
    assert _leftovers(tmp_path / "exports") == []


@pytest.mark.parametrize("content", ["null", "[]", "3", '"llama"'])
def test_a_config_json_that_is_not_an_object_is_named(tmp_path, content):
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(ConfigError, match="config.json: must hold a JSON object"):
        LlamaConfig.from_hf_config(str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "vicuna_jax.convert", f"--from_hf={tmp_path}",
                           f"--to_checkpoint={tmp_path / 'out'}"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: "), proc.stderr[-2000:]
