"""configs/tiny_<family>.py run as written, offline: a tiny Llama-3 / Qwen3 / Mistral model trained from
scratch with the family's bundled tokenizer.json (real special tokens, real chat template) on the bundled
sample -> a chat format record of that family -> an HF export that transformers loads with the same logits,
the same chat template and the same prompt ids."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hf_models import hf_logits  # noqa: E402
from train_utils import REPO  # noqa: E402

from vicuna_jax import checkpoint as ckpt_lib  # noqa: E402
from vicuna_jax.data import encode_conversation, encode_prompt, load_tokenizer  # noqa: E402
from vicuna_jax.data.tokenizer import bundled_family_tokenizer_path  # noqa: E402
from vicuna_jax.generate import load_generator  # noqa: E402
from vicuna_jax.model.llama import model_from_params  # noqa: E402
from vicuna_jax.train import train  # noqa: E402

# family -> (HF model class, end-of-turn token, special tokens its tokenizer must hold, BOS, EOS)
FAMILIES = {
    "llama3": ("LlamaForCausalLM", "<|eot_id|>",
               ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"],
               "<|begin_of_text|>", "<|end_of_text|>"),
    "qwen3": ("Qwen3ForCausalLM", "<|im_end|>", ["<|im_start|>", "<|endoftext|>", "<think>", "</think>"],
              None, "<|im_end|>"),
    "mistral": ("MistralForCausalLM", "</s>", ["<s>", "[INST]", "[/INST]", "<unk>"], "<s>", "</s>"),
}
CONVERSATION = [
    {"from": "system", "value": "You are a concise assistant."},
    {"from": "human", "value": "How do I reverse a list in Python?"},
    {"from": "gpt", "value": "Use slicing: `xs[::-1]`, or `xs.reverse()` in place."},
    {"from": "human", "value": "And a string?"},
    {"from": "gpt", "value": "Slicing works too: `s[::-1]`."},
]


def _config(family: str):
    spec = importlib.util.spec_from_file_location(f"tiny_{family}", os.path.join(REPO, "configs",
                                                                                  f"tiny_{family}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.total_steps, c.checkpoint_every, c.eval_every = 3, 3, 0  # only fewer steps than the config runs
    return c


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def run(request, tmp_path_factory):
    family = request.param
    c = _config(family)
    assert not c.init_from_hf and c.tokenizer == bundled_family_tokenizer_path(family)
    workdir = str(tmp_path_factory.mktemp(f"tiny_{family}"))
    return family, workdir, train(c, workdir)


def test_bundled_tokenizer_carries_the_family_tokens_and_template(run):
    family, _, _ = run
    _, eot, specials, bos, eos = FAMILIES[family]
    path = bundled_family_tokenizer_path(family)
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    assert size < 200_000, size  # small enough to ship in the package
    tok = load_tokenizer(path)
    for t in [eot, *specials]:
        assert tok.piece_to_id(t) is not None, t
    # The ids the tiny presets declare: BOS 1 (none for Qwen3), EOS 2.
    assert (tok.bos_id, tok.piece_to_id(eos)) == (1 if bos else None, 2)
    hf = transformers.AutoTokenizer.from_pretrained(path)
    text = "Hello world 1234, ünïcødé 你好 🦙\n\n  code()"
    assert tok.encode_hf(text) == hf(text)["input_ids"]


def test_runs_offline_in_the_family_format(run):
    family, workdir, summary = run
    _, eot, _, _, _ = FAMILIES[family]
    assert summary["final_step"] == 3 and summary["loss"] < summary["first_loss"]
    with open(os.path.join(workdir, "chat_format.json")) as f:
        record = json.load(f)
    with open(os.path.join(bundled_family_tokenizer_path(family), "tokenizer_config.json")) as f:
        template = json.load(f)["chat_template"]
    assert record["template"] == "hf" and record["chat_template"] == template
    assert record["end_of_turn"] == [eot]
    with open(os.path.join(workdir, "data", "meta.json")) as f:
        meta = json.load(f)
    assert meta["chat_format"]["chat_template"] == template
    split = meta["splits"]["train"]
    assert 0.3 < split["target_tokens"] / split["tokens"] < 0.9  # assistant-only targets


def test_export_loads_in_transformers_with_our_logits_template_and_ids(run):
    family, workdir, summary = run
    cls, eot, _, _, _ = FAMILIES[family]
    hf_dir = summary["hf_dir"]
    theirs = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    assert type(theirs).__name__ == cls
    cfg, params = ckpt_lib.load_params(workdir)
    tokens = np.random.RandomState(0).randint(0, cfg.vocab_size, (1, 32))
    np.testing.assert_allclose(np.asarray(model_from_params(cfg, params)(tokens)[0]),
                               hf_logits(theirs, tokens), atol=1e-4)

    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    with open(os.path.join(bundled_family_tokenizer_path(family), "tokenizer_config.json")) as f:
        assert hf_tok.chat_template == json.load(f)["chat_template"]
    with open(os.path.join(hf_dir, "generation_config.json")) as f:
        eos = json.load(f)["eos_token_id"]
    assert hf_tok.convert_tokens_to_ids(eot) in (eos if isinstance(eos, list) else [eos])

    messages = [{"role": "system" if t["from"] == "system" else "user" if t["from"] == "human"
                 else "assistant", "content": t["value"]} for t in CONVERSATION]
    gen = load_generator(hf_dir, template="auto")  # what generate/chat/serve use
    prompt = hf_tok.apply_chat_template(messages[:4], add_generation_prompt=True, tokenize=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    assert encode_prompt(CONVERSATION[:4], gen.tokenizer, template="auto") == prompt
    # The training encoding is transformers' rendering of the whole conversation, with targets on replies.
    full = hf_tok.apply_chat_template(messages, tokenize=True)
    full = list(full["input_ids"] if hasattr(full, "keys") else full)
    ids, mask = encode_conversation(CONVERSATION, gen.tokenizer, template="auto")
    assert ids.tolist() == full
    targets = gen.tokenizer.decode(ids[mask])
    assert "How do I" not in targets and "And a string" not in targets and "Slicing works too" in targets
    assert ids[mask][-1] == hf_tok.convert_tokens_to_ids(eot)


def test_init_from_hf_uses_the_models_own_tokenizer_not_the_bundled_one(tmp_path):
    """`--config.init_from_hf=DIR` on a tiny family config: DIR's tokenizer, never the bundled one."""
    import shutil

    from vicuna_jax.data import bundled_tokenizer_path
    from vicuna_jax.model.config import get_preset
    from vicuna_jax.train import config as config_lib
    from vicuna_jax.train.data import resolve_tokenizer

    model_dir = tmp_path / "hf"
    shutil.copytree(bundled_family_tokenizer_path("qwen3"), model_dir)  # some other tokenizer.json
    (model_dir / "config.json").write_text(json.dumps(get_preset("tiny_llama3").to_hf_config()))
    c = _config("llama3")
    assert resolve_tokenizer(config_lib.load(c, 8)) == bundled_family_tokenizer_path("llama3")
    c.init_from_hf = str(model_dir)
    assert resolve_tokenizer(config_lib.load(c, 8)) == str(model_dir)
    c.tokenizer = str(tmp_path / "mine.model")  # a tokenizer named by the user still wins
    shutil.copyfile(bundled_tokenizer_path(), c.tokenizer)
    assert resolve_tokenizer(config_lib.load(c, 8)) == c.tokenizer
