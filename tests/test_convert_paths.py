"""Export destinations that are symlinks (live or dangling); config.json files that are not configs or hold
bad values; non-finite weights on import and export; the file modes of exports."""

import json
import os
import subprocess
import sys

import pytest

from vicuna_jax import checkpoint
from vicuna_jax.convert import ConvertError, load_hf, save_hf
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


# ---------------------------------------------------------------- hostile or damaged inputs, file modes


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=180,
                          check=False)


def _one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The process failed with one `error:` line (the last), no traceback; that line holds every needle."""
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and proc.stderr.strip().splitlines()[-1] == lines[0], proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _poison(hf_dir: str, name: str, value: float, index=(0, 0)) -> str:
    """Sets one element of tensor `name` in the directory's safetensors shard; returns the shard's path."""
    from safetensors.numpy import load_file, save_file

    (shard,) = [os.path.join(hf_dir, n) for n in os.listdir(hf_dir) if n.endswith(".safetensors")]
    tensors = load_file(shard)
    tensors[name][index] = value
    save_file(tensors, shard, metadata={"format": "pt"})
    return shard


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_weight_in_an_hf_file_is_refused_naming_file_and_tensor(params, tmp_path, value):
    hf = save_hf(params, CFG, str(tmp_path / "hf"), dtype="float32")
    shard = _poison(hf, "model.layers.0.mlp.up_proj.weight", value, (3, 5))
    with pytest.raises(ConvertError, match="model.layers.0.mlp.up_proj.weight") as info:
        load_hf(hf)
    message = str(info.value)
    assert message.startswith(shard) and "1 NaN/Inf value" in message and "[3, 5]" in message, message


def test_a_non_finite_weight_in_an_hf_bf16_file_is_refused(params, tmp_path):
    hf = save_hf(params, CFG, str(tmp_path / "hf"), dtype="bfloat16")
    _poison(hf, "model.embed_tokens.weight", float("nan"), (7, 1))
    with pytest.raises(ConvertError, match="'model.embed_tokens.weight' holds 1 NaN/Inf value"):
        load_hf(hf)


def test_a_non_finite_weight_is_refused_by_every_importer(params, tmp_path):
    """convert --from_hf, generate --model=HF_DIR (load_model) and a LoRA base read the same way."""
    from vicuna_jax.load import load_model

    hf = save_hf(params, CFG, str(tmp_path / "hf"), dtype="float32")
    _poison(hf, "model.norm.weight", float("inf"), (2,))
    with pytest.raises(ConvertError, match="'model.norm.weight' holds 1 NaN/Inf"):
        load_model(hf)
    proc = _cli("vicuna_jax.convert", f"--from_hf={hf}", f"--to_checkpoint={tmp_path / 'ckpt'}")
    _one_error_line(proc, "model.norm.weight", "NaN/Inf", hf)
    assert not (tmp_path / "ckpt").exists()


def test_a_non_finite_weight_in_a_pytorch_bin_is_refused(params, tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.numpy import load_file

    hf = save_hf(params, CFG, str(tmp_path / "hf"), dtype="float32")
    shard = [os.path.join(hf, n) for n in os.listdir(hf) if n.endswith(".safetensors")][0]
    state = {k: torch.from_numpy(v.copy()) for k, v in load_file(shard).items()}
    state["model.layers.0.self_attn.k_proj.weight"][1, 2] = float("nan")
    for name in os.listdir(hf):
        if "safetensors" in name:
            os.remove(os.path.join(hf, name))
    torch.save(state, os.path.join(hf, "pytorch_model.bin"))
    name = "model.layers.0.self_attn.k_proj.weight"
    with pytest.raises(ConvertError, match=f"pytorch_model.bin: tensor '{name}' holds 1 NaN/Inf value"):
        load_hf(hf)


def test_an_import_cast_that_overflows_is_refused(params, tmp_path):
    hf = save_hf(params, CFG, str(tmp_path / "hf"), dtype="float32")
    _poison(hf, "lm_head.weight", 1e6, (0, 0))  # finite in float32, beyond float16's 65504
    load_hf(hf)  # as stored: fine
    with pytest.raises(ConvertError, match="'lm_head.weight'.*beyond the range of float16"):
        load_hf(hf, dtype="float16")


def test_an_export_that_would_write_non_finite_weights_is_refused(params, tmp_path):
    import numpy as np

    big = {**params, "norm": {"scale": np.full(CFG.hidden_size, 1e6, np.float32)}}
    with pytest.raises(ConvertError, match="'model.norm.weight'.*beyond the range of float16"):
        save_hf(big, CFG, str(tmp_path / "f16"), dtype="float16")
    assert not (tmp_path / "f16").exists()
    nan = {**params, "norm": {"scale": np.full(CFG.hidden_size, np.nan, np.float32)}}
    with pytest.raises(ConvertError, match="'model.norm.weight' holds 16 NaN/Inf values"):
        save_hf(nan, CFG, str(tmp_path / "nan"), dtype="float32")


@pytest.mark.parametrize("content", [["a list"], {"model.norm.weight": 3}])
def test_a_pytorch_bin_that_is_not_a_state_dict_is_named(tmp_path, content):
    torch = pytest.importorskip("torch")
    with open(tmp_path / "config.json", "w") as f:
        json.dump(CFG.to_hf_config(), f)
    bad = [torch.zeros(2)] if isinstance(content, list) else content
    torch.save(bad, tmp_path / "pytorch_model.bin")
    proc = _cli("vicuna_jax.convert", f"--from_hf={tmp_path}", f"--to_checkpoint={tmp_path / 'out'}")
    _one_error_line(proc, str(tmp_path / "pytorch_model.bin"))


BAD_CONFIG_VALUES = {
    "eos_token_id": ("two", "eos_token_id"),
    "rms_norm_eps": (-1, "rms_norm_eps"),
    "bos_token_id": (-3, "bos_token_id"),
    "pad_token_id": ("0", "pad_token_id"),
    "vocab_size": (0, "vocab_size"),
    "hidden_size": ("16", "hidden_size"),
    "num_hidden_layers": (1.5, "num_hidden_layers"),
    "num_key_value_heads": (3, "num_key_value_heads"),
    "max_position_embeddings": (-32, "max_position_embeddings"),
    "rope_theta": ("ten thousand", "rope_theta"),
    "tie_word_embeddings": ("false", "tie_word_embeddings"),
    "model_type": (["llama"], "model_type"),
    "architectures": ("LlamaForCausalLM", "architectures"),
    "head_dim": (0, "head_dim"),
}


@pytest.mark.parametrize("key", sorted(BAD_CONFIG_VALUES))
def test_bad_config_json_values_are_named(tmp_path, key):
    value, needle = BAD_CONFIG_VALUES[key]
    config = {**CFG.to_hf_config(), key: value}
    config.pop("rope_parameters")  # one reading of rope_theta (both are checked)
    with open(tmp_path / "config.json", "w") as f:
        json.dump(config, f)
    with pytest.raises(ConfigError) as info:
        LlamaConfig.from_hf_config(str(tmp_path))
    message = str(info.value)
    assert message.startswith(str(tmp_path / "config.json")) and needle in message, message


def test_eos_token_id_lists_are_checked(tmp_path):
    base = CFG.to_hf_config()
    for eos in (["2", 3], [], [2, None], [2, True], {"id": 2}):
        with pytest.raises(ConfigError, match="config: eos_token_id"):
            LlamaConfig.from_hf_config({**base, "eos_token_id": eos})
    for eps in (float("nan"), 0, True, "1e-5"):
        with pytest.raises(ConfigError, match="config: rms_norm_eps"):
            LlamaConfig.from_hf_config({**base, "rms_norm_eps": eps})
    assert LlamaConfig.from_hf_config({**base, "eos_token_id": [2, 5]}).extra_eos_token_ids == (5,)


@pytest.mark.parametrize("tool,key,value", [("vicuna_jax.convert", "eos_token_id", "two"),
                                            ("vicuna_jax.convert", "rms_norm_eps", -1),
                                            ("vicuna_jax.generate", "eos_token_id", "two")])
def test_bad_config_values_give_one_error_line_from_the_cli(tmp_path, tool, key, value):
    with open(tmp_path / "config.json", "w") as f:
        json.dump({**CFG.to_hf_config(), key: value}, f)
    args = ([f"--from_hf={tmp_path}", f"--to_checkpoint={tmp_path / 'out'}"] if tool.endswith("convert")
            else [f"--model={tmp_path}", "--prompt=hi"])
    _one_error_line(_cli(tool, *args), str(tmp_path / "config.json"), key)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_exported_safetensors_files_follow_the_umask(params, tmp_path, umask):
    """safetensors itself creates files 0600 whatever the umask; every file of an export follows it (the
    trainer's hf/ export and merged LoRA exports are written by the same save_hf)."""
    old = os.umask(umask)
    try:
        out = save_hf(params, CFG, str(tmp_path / "hf"), dtype="float32", max_shard_bytes=4096)
    finally:
        os.umask(old)
    modes = {n: os.stat(os.path.join(out, n)).st_mode & 0o777 for n in os.listdir(out)}
    assert sum(n.endswith(".safetensors") for n in modes) > 1
    assert set(modes.values()) == {0o666 & ~umask}, modes
