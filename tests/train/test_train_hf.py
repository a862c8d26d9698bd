"""Fine-tuning starts from a Hugging Face directory and ends with an export transformers loads."""

import os
import shutil

import numpy as np
import pytest
from train_utils import config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hf_models import hf_logits, make_hf_llama, save_hf_llama  # noqa: E402

from vicuna_jax import checkpoint as ckpt_lib  # noqa: E402
from vicuna_jax.data import bundled_tokenizer_path, encode_prompt, load_tokenizer  # noqa: E402
from vicuna_jax.model.llama import model_from_params  # noqa: E402
from vicuna_jax.train import train  # noqa: E402


@pytest.fixture(scope="module")
def hf_base(tmp_path_factory):
    model = make_hf_llama("gqa", seed=11, vocab_size=4096, max_position_embeddings=256)
    path = save_hf_llama(model, str(tmp_path_factory.mktemp("base")))
    shutil.copyfile(bundled_tokenizer_path(), os.path.join(path, "tokenizer.model"))
    return model, path


def _run(prepared, workdir, hf_dir, **overrides):
    c = config(prepared, init_from_hf=hf_dir, model="", total_steps=3, checkpoint_every=3,
               export_hf_at_end=True, export_dtype="float32", **overrides)
    for key in list(c.model_overrides.keys()):
        c.model_overrides[key] = None
    return train(c, workdir)


def test_init_from_hf_then_export_round_trips(prepared, hf_base, tmp_path):
    """With a vanishing learning rate the exported model is the imported one."""
    hf_model, hf_dir = hf_base
    summary = _run(prepared, str(tmp_path / "w"), hf_dir, **{"optimizer.learning_rate": 1e-30})
    exported = transformers.LlamaForCausalLM.from_pretrained(summary["hf_dir"], dtype=torch.float32)
    tokens = np.random.RandomState(0).randint(0, 4096, (1, 40))
    np.testing.assert_allclose(hf_logits(exported, tokens), hf_logits(hf_model, tokens), atol=1e-5)
    umask = os.umask(0)
    os.umask(umask)
    out = summary["hf_dir"]
    modes = {n: os.stat(os.path.join(out, n)).st_mode & 0o777 for n in os.listdir(out)
             if os.path.isfile(os.path.join(out, n))}
    assert set(modes.values()) == {0o666 & ~umask}, modes  # the safetensors shards too (safetensors: 0600)


def test_init_from_hf_with_a_nan_weight_is_refused_before_training(prepared, hf_base, tmp_path):
    from safetensors.numpy import load_file, save_file

    from vicuna_jax.convert import ConvertError

    hf_dir = str(tmp_path / "nan_base")
    shutil.copytree(hf_base[1], hf_dir)
    (shard,) = [os.path.join(hf_dir, n) for n in os.listdir(hf_dir) if n.endswith(".safetensors")]
    tensors = load_file(shard)
    tensors["model.layers.1.self_attn.v_proj.weight"][4, 2] = np.nan
    save_file(tensors, shard, metadata={"format": "pt"})
    name = "model.layers.1.self_attn.v_proj.weight"
    with pytest.raises(ConvertError, match=f"{shard}: tensor '{name}' holds 1 NaN/Inf value"):
        _run(prepared, str(tmp_path / "w"), hf_dir)
    assert not os.path.isdir(tmp_path / "w" / "checkpoints") or not os.listdir(tmp_path / "w" / "checkpoints")


def test_trained_export_matches_checkpoint_and_chat_template(prepared, hf_base, tmp_path):
    _, hf_dir = hf_base
    workdir = str(tmp_path / "w")
    summary = _run(prepared, workdir, hf_dir)
    assert summary["loss"] < summary["first_loss"]
    exported = transformers.LlamaForCausalLM.from_pretrained(summary["hf_dir"], dtype=torch.float32)
    cfg, params = ckpt_lib.load_params(workdir)
    ours = model_from_params(cfg, params)
    tokens = np.random.RandomState(1).randint(0, 4096, (1, 40))
    np.testing.assert_allclose(np.asarray(ours(tokens)[0]), hf_logits(exported, tokens), atol=1e-4)
    # The exported tokenizer renders our vicuna_v1.1 prompt through transformers' chat template.
    hf_tok = transformers.AutoTokenizer.from_pretrained(summary["hf_dir"])
    messages = [{"role": "user", "content": "What is JAX?"}, {"role": "assistant", "content": "A library."},
                {"role": "user", "content": "Show me an example."}]
    ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert list(ids) == encode_prompt(messages, load_tokenizer(bundled_tokenizer_path()))
    # The workdir itself is a model for generate/chat/eval (its train_config.json is not an HF config).
    from vicuna_jax.generate import SamplingParams, load_generator

    gen = load_generator(workdir)
    from_workdir = gen.generate_ids([ids], SamplingParams(max_new_tokens=5))[0]
    from_export = load_generator(summary["hf_dir"]).generate_ids([ids], SamplingParams(max_new_tokens=5))[0]
    assert len(from_workdir) == 5 and from_workdir == from_export
