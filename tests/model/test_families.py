"""Llama-3.x, Mistral, Qwen2 and Qwen3 against transformers on tiny random models: logits (fp32), greedy
generation, bit-exact HF round trips, and every unsupported configuration named."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hf_models import HF_FAMILIES, hf_logits, make_hf_family, save_hf_llama  # noqa: E402

from vicuna_jax import checkpoint  # noqa: E402
from vicuna_jax.convert import ConvertError, load_hf, save_hf  # noqa: E402
from vicuna_jax.generate import Generator, SamplingParams  # noqa: E402
from vicuna_jax.model.config import ConfigError, LlamaConfig  # noqa: E402
from vicuna_jax.model.llama import model_from_params  # noqa: E402

TOL = 1e-4  # max abs logit difference, fp32
FAMILIES = sorted(HF_FAMILIES)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    hf = make_hf_family(request.param, seed=3)
    path = save_hf_llama(hf, str(tmp_path_factory.mktemp(request.param)))
    cfg, params = load_hf(path)
    return request.param, hf, path, cfg, params


def test_config_reads_each_family_switch(family):
    name, _, _, cfg, _ = family
    assert cfg.architecture == {"llama3": "llama"}.get(name, name)
    assert cfg.qkv_bias == (name == "qwen2") and cfg.qk_norm == (name == "qwen3")
    assert cfg.sliding_window == (16 if name == "mistral" else None)
    if name == "llama3":
        assert (cfg.rope_type, cfg.rope_scaling_factor, cfg.rope_original_max_position_embeddings) == (
            "llama3", 8.0, 64)
        assert cfg.tie_word_embeddings and cfg.eos_token_ids == (2, 3)
    if name == "qwen3":
        assert cfg.dim_per_head == 24
    if name.startswith("qwen"):
        assert cfg.bos_token_id is None


@pytest.mark.parametrize("scan_layers", [False, True])
def test_logits_match_transformers(family, scan_layers):
    name, hf, _, cfg, params = family
    model = model_from_params(cfg, params, scan_layers=scan_layers)
    tokens = np.random.RandomState(1).randint(0, cfg.vocab_size, (2, 100))
    diff = np.abs(np.asarray(model(jnp.asarray(tokens))[0]) - hf_logits(hf, tokens)).max()
    assert diff <= TOL, f"{name}: max abs logit diff {diff:.2e}"


def test_each_switch_matters(family):
    """Turning the family's feature off moves the logits far from transformers: the tests above see it."""
    name, hf, _, cfg, params = family
    if name == "llama3":
        plain = cfg.replace(rope_type="default", rope_scaling_factor=1.0)
    elif name == "mistral":
        plain = cfg.replace(sliding_window=None)
    elif name == "qwen2":
        plain = cfg
        params = {**params, "layers": {**params["layers"], "self_attn": {
            **params["layers"]["self_attn"],
            "q_proj": {**params["layers"]["self_attn"]["q_proj"],
                       "bias": np.zeros_like(params["layers"]["self_attn"]["q_proj"]["bias"])}}}}
    else:
        plain = cfg
        attn = dict(params["layers"]["self_attn"])
        attn["q_norm"] = {"scale": np.ones_like(attn["q_norm"]["scale"])}
        params = {**params, "layers": {**params["layers"], "self_attn": attn}}
    tokens = np.random.RandomState(1).randint(0, cfg.vocab_size, (1, 100))
    ours = np.asarray(model_from_params(plain, params)(jnp.asarray(tokens))[0])
    diff = np.abs(ours - hf_logits(hf, tokens))
    assert diff.max() > 10 * TOL, f"{name}: {diff.max():.2e}"


def test_packed_segments_match_separate_sequences(family):
    """Packing: each segment of a row gives the logits HF gives it alone (a window never crosses segments)."""
    name, hf, _, cfg, params = family
    model = model_from_params(cfg, params)
    rng = np.random.RandomState(2)
    lengths = [23, 40, 17]
    pieces = [rng.randint(0, cfg.vocab_size, n) for n in lengths]
    tokens = np.concatenate(pieces + [np.zeros(8, int)])[None]
    segs = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)] + [np.zeros(8, int)])[None]
    pos = np.concatenate([np.arange(n) for n in lengths] + [np.zeros(8, int)])[None]
    ours = np.asarray(model(jnp.asarray(tokens), jnp.asarray(pos), jnp.asarray(segs))[0])[0]
    start = 0
    for piece in pieces:
        diff = np.abs(ours[start:start + len(piece)] - hf_logits(hf, piece[None])[0]).max()
        assert diff <= TOL, f"{name}: segment at {start}: {diff:.2e}"
        start += len(piece)


def test_greedy_generation_matches_transformers(family):
    """KV-cache decoding (prompts shorter and longer than Mistral's window, decoding across it) is
    token-identical to transformers' greedy generate; both prompts run in one batch."""
    name, hf, _, cfg, params = family
    gen = Generator(model_from_params(cfg, params), eos_token_ids=[-5], chunk=8)
    rng = np.random.RandomState(7)
    prompts = [[1] + rng.randint(3, cfg.vocab_size, n).tolist() for n in (5, 40)]
    ours = gen.generate_ids(prompts, SamplingParams(max_new_tokens=24))
    for prompt, got in zip(prompts, ours, strict=True):
        out = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=24, min_new_tokens=24,
                          eos_token_id=None, pad_token_id=0)
        assert got == out[0, len(prompt):].tolist(), f"{name}: prompt of {len(prompt)} tokens"


def test_round_trip_is_bit_exact_and_transformers_loads_it(family, tmp_path):
    name, hf, path, cfg, params = family
    ckpt = checkpoint.save_model(str(tmp_path / "ckpt"), params, cfg)
    cfg2, restored = checkpoint.load_params(ckpt)
    assert cfg2 == cfg
    out = save_hf(restored, cfg2, str(tmp_path / "hf"), dtype="float32")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert type(theirs).__name__ == type(hf).__name__
    before, after = hf.state_dict(), theirs.state_dict()
    assert sorted(before) == sorted(after)
    for key in before:
        np.testing.assert_array_equal(before[key].numpy(), after[key].numpy(), err_msg=f"{name}: {key}")
    with open(os.path.join(out, "config.json")) as f:
        exported = json.load(f)
    with open(os.path.join(path, "config.json")) as f:
        original = json.load(f)
    for key in ("model_type", "architectures", "sliding_window", "tie_word_embeddings", "eos_token_id",
                "bos_token_id", "head_dim", "use_sliding_window", "layer_types"):
        if key in original:
            assert exported[key] == original[key], f"{name}: {key}"
    assert LlamaConfig.from_hf_config(exported) == cfg
    tokens = np.random.RandomState(4).randint(0, cfg.vocab_size, (1, 50))
    # Same weights; transformers picks SDPA for the loaded model and eager for ours, hence not bit-equal.
    np.testing.assert_allclose(hf_logits(theirs, tokens), hf_logits(hf, tokens), atol=1e-5)


def _hf_config(family: str) -> dict:
    return make_hf_family(family).config.to_dict()


def test_unsupported_architectures_and_settings_are_named():
    base = _hf_config("qwen3")
    with pytest.raises(ConfigError, match=r"unsupported architecture \(model_type='gemma2'"):
        LlamaConfig.from_hf_config(dict(base, model_type="gemma2", architectures=["Gemma2ForCausalLM"]))
    with pytest.raises(ConfigError, match="unsupported architecture"):
        LlamaConfig.from_hf_config(dict(base, architectures=["Qwen3MoeForCausalLM"]))
    with pytest.raises(ConfigError, match="unsupported attention_bias=True"):
        LlamaConfig.from_hf_config(dict(base, attention_bias=True))
    for rope_type in ("yarn", "dynamic", "longrope"):
        named = f"unsupported rope scaling type '{rope_type}' in rope_parameters"
        with pytest.raises(ConfigError, match=named):
            LlamaConfig.from_hf_config(dict(base, rope_parameters={"rope_type": rope_type, "factor": 2.0,
                                                                   "rope_theta": 1e6}))
    llama3 = _hf_config("llama3")
    broken = dict(llama3["rope_parameters"])
    del broken["low_freq_factor"]
    with pytest.raises(ConfigError, match="'llama3' needs 'low_freq_factor'"):
        LlamaConfig.from_hf_config(dict(llama3, rope_parameters=broken))
    mixed = dict(base, use_sliding_window=True, sliding_window=8,
                 layer_types=["full_attention", "sliding_attention"])
    with pytest.raises(ConfigError, match="layer_types.*some layers use a sliding window"):
        LlamaConfig.from_hf_config(mixed)
    # Qwen's sliding_window is ignored unless use_sliding_window is set, as in transformers.
    assert LlamaConfig.from_hf_config(dict(base, sliding_window=8)).sliding_window is None
    every = dict(base, use_sliding_window=True, sliding_window=8, max_window_layers=0, layer_types=None)
    assert LlamaConfig.from_hf_config(every).sliding_window == 8
    with pytest.raises(ConfigError, match="eos_token_id is missing or null"):
        LlamaConfig.from_hf_config(dict(base, eos_token_id=None))


def test_tied_checkpoint_with_a_stored_head(tmp_path):
    """Some tied checkpoints also store lm_head.weight: equal to the embedding it is skipped, else named."""
    from safetensors.numpy import load_file, save_file

    hf = make_hf_family("llama3")
    path = save_hf_llama(hf, str(tmp_path / "tied"))
    weights = os.path.join(path, "model.safetensors")
    tensors = load_file(weights)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()
    save_file(tensors, weights, metadata={"format": "pt"})
    cfg, params = load_hf(path)
    assert cfg.tie_word_embeddings and "lm_head" not in params
    tensors["lm_head.weight"] = tensors["lm_head.weight"] + 1.0
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(ConvertError, match="'lm_head.weight' differs from 'model.embed_tokens.weight'"):
        load_hf(path)


def test_qwen2_bias_missing_from_checkpoint_is_named(tmp_path):
    from safetensors.numpy import load_file, save_file

    path = save_hf_llama(make_hf_family("qwen2"), str(tmp_path / "q"))
    weights = os.path.join(path, "model.safetensors")
    tensors = load_file(weights)
    del tensors["model.layers.1.self_attn.k_proj.bias"]
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(ConvertError, match=r"1 tensors missing.*layers.1.self_attn.k_proj.bias"):
        load_hf(path)
