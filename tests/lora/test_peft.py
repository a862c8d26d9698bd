"""PEFT interop: our adapters load in `peft` with equal logits, PEFT's load in ours, merged exports equal
base + adapter in transformers, and bad or foreign adapters are refused with the file and key named."""

import json
import os
import re
import shutil

import numpy as np
import pytest
from flax import nnx
from hf_models import hf_logits
from lora_utils import logits, random_adapters, random_params, tiny_cfg

from vicuna_jax.load import load_model
from vicuna_jax.lora import model as lora_model
from vicuna_jax.lora.base import BaseMismatchError, BaseModel, fingerprint
from vicuna_jax.lora.config import TARGETS, LoRAConfig
from vicuna_jax.lora.peft import AdapterError, load_peft, merged_params, peft_name, save_peft
from vicuna_jax.model.llama import model_from_params

LORA = LoRAConfig(rank=4, alpha=8.0, dropout=0.0, target_modules=tuple(TARGETS), base_dtype="float32")
TOKENS = np.random.RandomState(0).randint(1, 211, (2, 20))


def ours(params, lora, adapters):
    """Logits of our LoRA model (the unmerged low-rank path the trainer uses)."""
    model = lora_model.attach(model_from_params(tiny_cfg(), params), lora)
    state = nnx.state(model, lora_model.LoRAParam)
    nnx.replace_by_pure_dict(state, adapters)
    nnx.update(model, state)
    return logits(model, TOKENS)


def peft_model(base_dir, adapter_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    return PeftModel.from_pretrained(base, adapter_dir).eval()


@pytest.fixture(scope="module")
def exported(base_dir, tmp_path_factory):
    """Our random (both factors nonzero) adapter, exported with its base's record."""
    params = random_params(0)
    adapters = random_adapters(LORA)
    record = BaseModel(params, base_dir, fingerprint(params)).record(LORA)
    out = save_peft(adapters, LORA, tiny_cfg(), str(tmp_path_factory.mktemp("peft") / "adapter"),
                    base_model=base_dir, record=record)
    return out, adapters


def test_our_adapter_loads_in_peft_with_equal_logits(base_dir, exported):
    out, adapters = exported
    config = json.load(open(os.path.join(out, "adapter_config.json")))
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 4, 8.0)
    assert config["target_modules"] == list(TARGETS) and config["base_model_name_or_path"] == base_dir
    want = ours(random_params(0), LORA, adapters)
    got = hf_logits(peft_model(base_dir, out), TOKENS)
    assert np.abs(got - want).max() <= 1e-4
    base_only = ours(random_params(0), LORA, jax_zero_b(adapters))
    assert np.abs(base_only - want).max() > 1e-2  # the adapter matters


def jax_zero_b(adapters):
    import jax

    return jax.tree_util.tree_map_with_path(
        lambda path, a: np.zeros_like(a) if path[-1].key == "lora_b" else a, adapters)


def test_peft_made_adapter_imports_with_equal_logits(base_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=3, lora_alpha=12, target_modules=["q_proj", "o_proj", "down_proj"], use_rslora=True,
                        init_lora_weights=False, task_type="CAUSAL_LM")  # random B: a "trained" adapter
    model = get_peft_model(base, config).eval()
    model.save_pretrained(str(tmp_path / "theirs"))
    lora, adapters, record = load_peft(str(tmp_path / "theirs"), tiny_cfg())
    assert (lora.rank, lora.alpha, lora.use_rslora, record) == (3, 12.0, True, None)
    assert lora.target_modules == ("q_proj", "o_proj", "down_proj")
    assert lora.scale == pytest.approx(12 / np.sqrt(3))
    want = hf_logits(model, TOKENS)
    lora = LoRAConfig(**{**lora.__dict__, "dropout": 0.0})
    assert np.abs(ours(random_params(0), lora, adapters) - want).max() <= 1e-4
    # ... and through --model=BASE --adapter=DIR (merged at load)
    merged, _, _ = load_model(base_dir, adapter=str(tmp_path / "theirs"))
    assert np.abs(logits(merged, TOKENS) - want).max() <= 1e-4


def test_merged_export_equals_base_plus_adapter_in_transformers(base_dir, exported, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from vicuna_jax.convert import save_hf

    out, adapters = exported
    merged_dir = save_hf(merged_params(random_params(0), adapters, LORA), tiny_cfg(),
                         str(tmp_path / "merged"), dtype="float32")
    want = hf_logits(peft_model(base_dir, out), TOKENS)
    hf = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    assert np.abs(hf_logits(hf, TOKENS) - want).max() <= 1e-4
    loaded, _, _ = load_model(base_dir, adapter=out)
    assert np.abs(logits(loaded, TOKENS) - want).max() <= 1e-4


def test_an_adapter_of_another_base_is_refused(exported, tmp_path):
    from vicuna_jax.convert import save_hf

    other = save_hf(random_params(5), tiny_cfg(), str(tmp_path / "other"), dtype="float32")
    with pytest.raises(BaseMismatchError, match="another base model.*" + str(tmp_path / "other")):
        load_model(other, adapter=exported[0])


def _corrupt(exported, tmp_path, change):
    out = str(tmp_path / "bad")
    shutil.copytree(exported[0], out)
    change(out)
    return out


def _rewrite_tensors(edit):
    from safetensors.numpy import load_file, save_file

    def change(out):
        path = os.path.join(out, "adapter_model.safetensors")
        tensors = load_file(path)
        edit(tensors)
        save_file(tensors, path)
    return change


def _rewrite_config(**changes):
    def change(out):
        path = os.path.join(out, "adapter_config.json")
        config = json.load(open(path))
        config.update(changes)
        json.dump(config, open(path, "w"))
    return change


def _to_bin(content):
    """Replaces adapter_model.safetensors by an adapter_model.bin holding content(tensors as torch)."""
    def change(out):
        import torch
        from safetensors.numpy import load_file

        path = os.path.join(out, "adapter_model.safetensors")
        state = {k: torch.from_numpy(v.copy()) for k, v in load_file(path).items()}
        os.remove(path)
        torch.save(content(state), os.path.join(out, "adapter_model.bin"))
    return change


def _nan_in_bin(state):
    state[Q0_A][0, 3] = float("nan")
    return state


Q0_A = peft_name(0, "q_proj", "A")
D1_B = peft_name(1, "down_proj", "B")
UPDATE = "the update scale\\*A@B of q_proj in layer 0 reaches .* the adapter is damaged or mis-scaled"
BAD = {
    "missing": (_rewrite_tensors(lambda t: t.pop(Q0_A)), f"tensor '{Q0_A}' is missing"),
    "shape": (_rewrite_tensors(lambda t: t.update({Q0_A: np.zeros((5, 64), np.float32)})),
              f"tensor '{Q0_A}' has shape \\(5, 64\\)"),
    "unexpected": (_rewrite_tensors(lambda t: t.update({"base_model.model.lm_head.lora_A.weight": t[Q0_A]})),
                   "unexpected tensor 'base_model.model.lm_head.lora_A.weight'"),
    "dora": (_rewrite_config(use_dora=True), "use_dora=True is not supported"),
    "regex": (_rewrite_config(target_modules=".*proj"), "regular expression"),
    "type": (_rewrite_config(peft_type="IA3"), "only LORA adapters"),
    "no_config": (lambda out: os.remove(os.path.join(out, "adapter_config.json")),
                  "has no adapter_config.json"),
    "truncated": (lambda out: open(os.path.join(out, "adapter_model.safetensors"), "r+b").truncate(100),
                  "cannot read .*adapter_model.safetensors"),
    # Non-finite or absurdly scaled weights: refused as read, the file and tensor named.
    "nan": (_rewrite_tensors(lambda t: t[Q0_A].__setitem__((1, 2), np.nan)),
            f"adapter_model.safetensors: tensor '{Q0_A}' holds 1 NaN/Inf value \\(first at \\[1, 2\\]\\)"),
    "inf": (_rewrite_tensors(lambda t: t[D1_B].__setitem__((slice(None), 0), -np.inf)),
            f"tensor '{D1_B}' holds 64 NaN/Inf values"),
    "scaled_1e30": (_rewrite_tensors(lambda t: t.update({k: v * np.float32(1e30) for k, v in t.items()})),
                    "adapter_model.safetensors: " + UPDATE),
    "alpha_1e30": (_rewrite_config(lora_alpha=1e30), UPDATE),
    "alpha_nan": (_rewrite_config(lora_alpha=float("nan")), "lora_alpha must be a positive number"),
    "dropout": (_rewrite_config(lora_dropout="none"), "lora_dropout must be a number in \\[0, 1\\)"),
    "targets": (_rewrite_config(target_modules=7), "target_modules: expected module names"),
    # adapter_model.bin files that are not state dicts of tensors, or hold a NaN.
    "bin_list": (_to_bin(lambda state: list(state.values())), "adapter_model.bin: holds a list, not a state"),
    "bin_int": (_to_bin(lambda state: {**state, Q0_A: 3}), f"adapter_model.bin: entry '{Q0_A}' is a int"),
    "bin_nan": (_to_bin(_nan_in_bin), f"adapter_model.bin: tensor '{Q0_A}' holds 1 NaN/Inf value"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_adapters_are_refused_naming_file_and_key(exported, tmp_path, case):
    change, message = BAD[case]
    out = _corrupt(exported, tmp_path, change)
    with pytest.raises(AdapterError, match=message) as info:
        load_peft(out, tiny_cfg())
    assert out in str(info.value)


def test_peft_adapters_listing_full_module_paths_load(tmp_path):
    """peft writes target_modules="all-linear" as full module paths (model.layers.0.mlp.down_proj, ...)."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from vicuna_jax.convert import save_hf

    base_dir = save_hf(random_params(0), tiny_cfg(), str(tmp_path / "base"), dtype="float32")
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules="all-linear", init_lora_weights=False,
                             task_type="CAUSAL_LM")
    model = peft.get_peft_model(base, config).eval()
    model.save_pretrained(str(tmp_path / "all_linear"))
    saved = json.load(open(tmp_path / "all_linear" / "adapter_config.json"))["target_modules"]
    assert any(name.startswith("model.layers.") for name in saved)  # the full paths this case is about
    lora, _, _ = load_peft(str(tmp_path / "all_linear"), tiny_cfg())
    assert lora.target_modules == tuple(TARGETS)
    tokens = np.random.RandomState(0).randint(1, 211, (2, 12))
    merged, _, _ = load_model(base_dir, adapter=str(tmp_path / "all_linear"))
    assert np.abs(logits(merged, tokens) - hf_logits(model, tokens)).max() <= 1e-4


@pytest.mark.parametrize("case", ["bin_list", "bin_int", "scaled_1e30"])
def test_bad_adapters_give_one_error_line_from_the_cli(base_dir, exported, tmp_path, case):
    import subprocess
    import sys

    change, message = BAD[case]
    out = _corrupt(exported, tmp_path, change)
    proc = subprocess.run([sys.executable, "-m", "vicuna_jax.lora", f"--adapter={out}", f"--base={base_dir}",
                           f"--out={tmp_path / 'export'}", "--merge"], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0] == proc.stderr.strip().splitlines()[-1], proc.stderr[-3000:]
    assert out in lines[0] and re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize("damage", ["nan", "scaled_1e30"])
def test_a_lora_checkpoint_with_damaged_adapters_is_refused(tmp_path, damage):
    """Our own checkpoint format (a LoRA run's checkpoints/<step>) is checked like a PEFT directory."""
    import orbax.checkpoint as ocp

    from vicuna_jax.checkpoint import CONFIG_ITEM, LORA_ITEM, PARAMS_ITEM, _checkpointer
    from vicuna_jax.cli import UserError
    from vicuna_jax.lora.inference import read_adapter

    adapters = random_adapters(LORA)
    node = adapters["layers"]["mlp"]["up_proj"]
    if damage == "nan":
        node["lora_b"][1, 2, 3] = np.nan
    else:
        node["lora_a"] *= np.float32(1e30)
    params = random_params(0)
    record = BaseModel(params, "base", fingerprint(params)).record(LORA)
    step = str(tmp_path / "run" / "checkpoints" / "10")
    _checkpointer().save(step, ocp.args.Composite(**{
        PARAMS_ITEM: ocp.args.StandardSave(adapters), CONFIG_ITEM: ocp.args.JsonSave(tiny_cfg().to_dict()),
        LORA_ITEM: ocp.args.JsonSave(record)}))
    message = ("tensor 'up_proj/lora_b' holds 1 NaN/Inf value \\(first at \\[1, 2, 3\\]\\)" if damage == "nan"
               else "the update scale\\*A@B of up_proj in layer 0 reaches")
    with pytest.raises(UserError, match=f"{step}: {message}"):
        read_adapter(str(tmp_path / "run"), tiny_cfg())


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_saved_adapter_files_follow_the_umask(tmp_path, umask):
    """safetensors itself creates files 0600 whatever the umask; an adapter directory follows it."""
    old = os.umask(umask)
    try:
        out = save_peft(random_adapters(LORA), LORA, tiny_cfg(), str(tmp_path / "adapter"), base_model="base")
    finally:
        os.umask(old)
    modes = {n: os.stat(os.path.join(out, n)).st_mode & 0o777 for n in os.listdir(out)}
    assert set(modes.values()) == {0o666 & ~umask}, modes
