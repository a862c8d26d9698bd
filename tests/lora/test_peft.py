"""PEFT interop: our adapters load in `peft` with equal logits, PEFT's load in ours, merged exports equal
base + adapter in transformers, and bad or foreign adapters are refused with the file and key named."""

import json
import os
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


Q0_A = peft_name(0, "q_proj", "A")
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
