"""HF import/export: bit-exact round trips, transformers loads our export, and every bad input is named."""

import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hf_models import hf_logits, make_hf_llama, save_hf_llama  # noqa: E402

from vicuna_jax import checkpoint  # noqa: E402
from vicuna_jax.convert import ConvertError, load_hf, save_hf  # noqa: E402
from vicuna_jax.load import load_model  # noqa: E402
from vicuna_jax.model.config import ConfigError, LlamaConfig  # noqa: E402


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    model = make_hf_llama("gqa")
    # Small shards, so the import path exercises the index and several files.
    return save_hf_llama(model, str(tmp_path_factory.mktemp("hf")), max_shard_size="60KB")


def _state(path):
    model = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
    return {k: v.numpy() for k, v in model.state_dict().items()}


def test_import_reads_sharded_index(hf_dir):
    assert os.path.exists(os.path.join(hf_dir, "model.safetensors.index.json"))
    assert len([n for n in os.listdir(hf_dir) if n.endswith(".safetensors")]) > 1
    cfg, params = load_hf(hf_dir)
    assert cfg.num_kv_heads == 2 and cfg.num_heads == 4
    assert params["layers"]["self_attn"]["k_proj"]["kernel"].shape == (2, 64, 32)


def test_round_trip_hf_checkpoint_hf_is_bit_exact(hf_dir, tmp_path):
    cfg, params = load_hf(hf_dir)
    ckpt = checkpoint.save_model(str(tmp_path / "ckpt"), params, cfg)
    cfg2, restored = checkpoint.load_params(ckpt)
    assert cfg2 == cfg
    out = save_hf(restored, cfg2, str(tmp_path / "hf_out"), dtype="float32", max_shard_bytes=100_000)
    files = sorted(n for n in os.listdir(out) if n.endswith(".safetensors"))
    assert len(files) > 1 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    before, after = _state(hf_dir), _state(out)
    assert sorted(before) == sorted(after)
    for name in before:
        assert before[name].dtype == after[name].dtype
        np.testing.assert_array_equal(before[name], after[name], err_msg=name)


def test_export_bf16_loads_in_transformers_and_matches(hf_dir, tmp_path):
    cfg, params = load_hf(hf_dir)
    out = save_hf(params, cfg, str(tmp_path / "bf16"), dtype="bfloat16")
    model = transformers.LlamaForCausalLM.from_pretrained(out)
    assert model.config.num_key_value_heads == 2
    assert next(model.parameters()).dtype == torch.bfloat16
    tokens = np.random.RandomState(0).randint(0, cfg.vocab_size, (1, 20))
    ref = hf_logits(make_hf_llama("gqa"), tokens)
    got = hf_logits(model.float(), tokens)
    assert np.abs(got - ref).max() < 0.05  # bf16 rounding of the weights only
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["torch_dtype"] == "bfloat16"
    assert os.path.exists(os.path.join(out, "generation_config.json"))


def test_config_round_trip_with_linear_rope_scaling():
    cfg = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                      num_kv_heads=2, rope_theta=5e5, rope_scaling_factor=4.0, max_position_embeddings=4096,
                      rms_norm_eps=1e-5)
    hf = cfg.to_hf_config()
    assert LlamaConfig.from_hf_config(hf) == cfg
    # transformers understands our keys the same way.
    t = transformers.LlamaConfig.from_dict(hf)
    assert t.rope_parameters["rope_type"] == "linear" and t.rope_parameters["factor"] == 4.0
    assert t.rope_parameters["rope_theta"] == 5e5
    # transformers-4 style input (rope_theta + rope_scaling) also reads.
    old = {k: v for k, v in hf.items() if k != "rope_parameters"}
    assert LlamaConfig.from_hf_config(old) == cfg


def test_load_model_from_checkpoint_and_hf_dir_agree(hf_dir, tmp_path):
    cfg, params = load_hf(hf_dir)
    ckpt = checkpoint.save_model(str(tmp_path / "c"), params, cfg)
    tokens = np.arange(12)[None] % cfg.vocab_size
    m1, _, _ = load_model(hf_dir)
    m2, _, _ = load_model(ckpt)
    np.testing.assert_array_equal(np.asarray(m1(tokens)[0]), np.asarray(m2(tokens)[0]))


def test_pytorch_bin_import(tmp_path):
    model = make_hf_llama("mha")
    path = save_hf_llama(model, str(tmp_path / "bin"), safe_serialization=False)
    if not any(n.startswith("pytorch_model") for n in os.listdir(path)):
        torch.save(model.state_dict(), os.path.join(path, "pytorch_model.bin"))
        for n in os.listdir(path):
            if n.endswith(".safetensors"):
                os.remove(os.path.join(path, n))
    cfg, params = load_hf(path)
    np.testing.assert_array_equal(params["embed_tokens"], model.model.embed_tokens.weight.detach().numpy())


# ---------------------------------------------------------------- bad input


def _copy(hf_dir, tmp_path):
    dst = str(tmp_path / "broken")
    shutil.copytree(hf_dir, dst)
    return dst


def _index(path):
    with open(os.path.join(path, "model.safetensors.index.json")) as f:
        return json.load(f)


def test_missing_shard_is_named(hf_dir, tmp_path):
    path = _copy(hf_dir, tmp_path)
    victim = sorted(set(_index(path)["weight_map"].values()))[1]
    os.remove(os.path.join(path, victim))
    with pytest.raises(ConvertError, match=f"missing shard .*{victim}"):
        load_hf(path)


def test_truncated_shard_is_named(hf_dir, tmp_path):
    path = _copy(hf_dir, tmp_path)
    victim = sorted(set(_index(path)["weight_map"].values()))[0]
    full = os.path.join(path, victim)
    with open(full, "rb") as f:
        data = f.read()
    with open(full, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ConvertError, match=victim):
        load_hf(path)


def test_unexpected_and_missing_keys_are_named(tmp_path):
    from safetensors.numpy import save_file

    model = make_hf_llama("mha")
    path = save_hf_llama(model, str(tmp_path / "one"))
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    extra = dict(state, **{"model.layers.0.self_attn.q_proj.bias": np.zeros(64, np.float32)})
    save_file(extra, os.path.join(path, "model.safetensors"))
    with pytest.raises(ConvertError, match=r"unexpected tensor 'model.layers.0.self_attn.q_proj.bias'"):
        load_hf(path)
    missing = {k: v for k, v in state.items() if k != "model.layers.1.mlp.up_proj.weight"}
    save_file(missing, os.path.join(path, "model.safetensors"))
    with pytest.raises(ConvertError, match=r"missing .*model.layers.1.mlp.up_proj.weight"):
        load_hf(path)


def test_shape_mismatch_is_named(hf_dir, tmp_path):
    path = _copy(hf_dir, tmp_path)
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    cfg["intermediate_size"] = 128
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    with pytest.raises(ConvertError, match=r"gate_proj.weight.* has shape \(96, 64\).*\(128, 64\)"):
        load_hf(path)


def test_unsupported_architecture_is_named(hf_dir, tmp_path):
    path = _copy(hf_dir, tmp_path)
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    cfg.update(model_type="gemma", architectures=["GemmaForCausalLM"])
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    with pytest.raises(ConvertError, match=r"config.json: unsupported architecture"):
        load_hf(path)
    with pytest.raises(ConfigError, match="rope scaling type 'dynamic'"):
        LlamaConfig.from_hf_config(dict(cfg, model_type="llama", architectures=["LlamaForCausalLM"],
                                        rope_scaling={"type": "dynamic", "factor": 2.0}))


def test_no_weights_and_missing_dir(tmp_path):
    os.makedirs(tmp_path / "empty")
    with open(tmp_path / "empty" / "config.json", "w") as f:
        json.dump(LlamaConfig(vocab_size=10, hidden_size=8, intermediate_size=8, num_layers=1,
                              num_heads=2).to_hf_config(), f)
    with pytest.raises(ConvertError, match="no model.safetensors"):
        load_hf(str(tmp_path / "empty"))
    with pytest.raises(ConvertError, match="is not a directory"):
        load_hf(str(tmp_path / "nope"))


def test_failed_export_leaves_nothing(hf_dir, tmp_path):
    cfg, params = load_hf(hf_dir)
    del params["layers"]["mlp"]["down_proj"]
    out = tmp_path / "partial"
    with pytest.raises(KeyError):
        save_hf(params, cfg, str(out))
    assert not out.exists() and not any(p.name.startswith("partial") for p in tmp_path.iterdir())


def test_existing_output_needs_overwrite(hf_dir, tmp_path):
    cfg, params = load_hf(hf_dir)
    out = save_hf(params, cfg, str(tmp_path / "o"))
    with pytest.raises(ConvertError, match="already exists"):
        save_hf(params, cfg, out)
    save_hf(params, cfg, out, overwrite=True)


def test_conflicting_rope_keys_are_rejected():
    hf = LlamaConfig(vocab_size=10, hidden_size=8, intermediate_size=8, num_layers=1, num_heads=2,
                     rope_scaling_factor=2.0).to_hf_config()
    hf["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
    with pytest.raises(ConfigError, match="disagree"):
        LlamaConfig.from_hf_config(hf)


def test_exported_chat_template_renders_vicuna_prompt(hf_dir, tmp_path):
    from vicuna_jax.data import (
        bundled_tokenizer_path,
        chat_format,
        encode_prompt,
        get_template,
        load_tokenizer,
    )

    cfg, params = load_hf(hf_dir)
    fmt = chat_format.resolve(bundled_tokenizer_path())
    out = save_hf(params, cfg, str(tmp_path / "with_tok"), chat_format=fmt)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Hi! 1+1=?"}, {"role": "assistant", "content": "2"},
                {"role": "user", "content": "And 2+2?"}]
    text = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    template = get_template("vicuna_v1.1")
    expected = template.render(messages[1:], system="You are terse.", add_generation_prompt=True)
    assert text == "<s>" + expected
    assert expected.endswith("USER: And 2+2? ASSISTANT:") and "ASSISTANT: 2</s>USER:" in expected
    ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert list(ids) == encode_prompt(messages, load_tokenizer(bundled_tokenizer_path()))
