"""One chat format, resolved once and recorded (issue 18): the one rule, the record written with the data, the
run, every checkpoint and every export, and the checks where they meet. Each numbered case of the issue has a
test here (7 is in tests/data/test_mistral_system.py; the import graph in tests/test_layers.py)."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hf_tokenizers import LLAMA2_CHAT_TEMPLATE
from tiny_run import cpu_env, tiny_config

from vicuna_jax.cli import UserError
from vicuna_jax.data import bundled_tokenizer_path, chat_format, get_template
from vicuna_jax.data.chat_format import ChatFormatError
from vicuna_jax.data.prepare import bundled_sample_path, prepare_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LLAMA2 = os.environ.get("VICUNA_JAX_LLAMA_TOKENIZER")
CONVERSATION = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "It is 4."},
                {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "Six."}]


def _sp_dir(path, chat_template=None, model=None) -> str:
    """A LLaMA-style tokenizer directory: tokenizer.model + tokenizer_config.json (with a template or not)."""
    from vicuna_jax.data.hf_tokenizer import sentencepiece_tokenizer_config

    os.makedirs(path, exist_ok=True)
    shutil.copyfile(model or bundled_tokenizer_path(), os.path.join(path, "tokenizer.model"))
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(sentencepiece_tokenizer_config(specials, chat_template), f)
    return str(path)


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, *args], env=cpu_env(), capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


# ---------------------------------------------------------------- the one rule


def test_the_one_rule_record_then_own_template_then_vicuna(tmp_path):
    plain = chat_format.resolve(bundled_tokenizer_path())
    assert (plain.template, plain.eos_token_ids) == ("vicuna_v1.1", (2,))
    assert plain.generation_prompt == "ASSISTANT:"
    assert "default" in plain.resolved_from
    # The tokenizer's own template wins over the default; our own export text is recognised by name.
    own = chat_format.resolve(_sp_dir(tmp_path / "own", get_template("llama-2").hf_chat_template(bos=True)))
    assert own.template == "llama-2" and "own" in own.resolved_from
    # A record wins over the tokenizer's own template, and rebuilds the identical format from its text.
    recorded = chat_format.resolve(_sp_dir(tmp_path / "own2", LLAMA2_CHAT_TEMPLATE),
                                   recorded=plain.record(), recorded_in="X")
    assert recorded == plain and recorded.template == "vicuna_v1.1"
    # An explicit template against a record: an error where it would train/export (default), a warning for
    # decoding.
    with pytest.raises(ChatFormatError, match=r"--template=llama-2 differs from the chat format X records "
                                              r"\(vicuna_v1.1"):
        chat_format.resolve(bundled_tokenizer_path(), "llama-2", recorded=plain.record(), recorded_in="X")
    assert chat_format.resolve(bundled_tokenizer_path(), "llama-2", recorded=plain.record(),
                               on_conflict="warn").template == "llama-2"
    with pytest.raises(ChatFormatError, match="unknown chat template 'vicunna'"):
        chat_format.resolve(bundled_tokenizer_path(), "vicunna")


def test_a_record_of_another_tokenizer_or_an_edited_template_is_refused(tmp_path):
    record = chat_format.resolve(bundled_tokenizer_path()).record()
    other = dict(record, tokenizer_fingerprint="0123456789abcdef")
    with pytest.raises(ChatFormatError, match="made with the tokenizer 0123456789abcdef"):
        chat_format.resolve(bundled_tokenizer_path(), recorded=other, recorded_in="W")
    edited = dict(record, chat_template=record["chat_template"] + " ")
    with pytest.raises(ChatFormatError, match="does not match its sha256"):
        chat_format.resolve(bundled_tokenizer_path(), recorded=edited, recorded_in="W")
    (tmp_path / chat_format.FORMAT_FILE).write_text("{not json")
    with pytest.raises(ChatFormatError, match="unreadable chat format record"):
        chat_format.read_record(str(tmp_path))


# ---------------------------------------------------------------- 6: sentencepiece + its own Jinja template


def test_auto_on_a_sentencepiece_model_with_a_chat_template_uses_it(tmp_path):
    directory = _sp_dir(tmp_path / "llama2chat", LLAMA2_CHAT_TEMPLATE)
    fmt = chat_format.resolve(directory)  # auto
    assert fmt.template == "hf" and fmt.chat_template == LLAMA2_CHAT_TEMPLATE and fmt.end_of_turn == ("</s>",)
    ids, mask = fmt.encode(CONVERSATION)
    tok = fmt.tokenizer
    runs = np.split(ids[mask], np.flatnonzero(np.diff(np.flatnonzero(mask)) > 1) + 1)
    assert [tok.decode(r) for r in runs] == ["It is 4. ", "Six. "]  # the template puts " " before </s>
    assert all(int(r[-1]) == tok.eos_id for r in runs)  # each reply's </s> is trained on
    prompt = fmt.encode_prompt(CONVERSATION[:2])
    assert ids[:len(prompt)].tolist() == prompt  # prefix-stable: the prompt is what training saw


@pytest.mark.skipif(not LLAMA2, reason="set VICUNA_JAX_LLAMA_TOKENIZER to the LLaMA-2 tokenizer.model")
def test_llama2_chat_template_ids_equal_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    directory = _sp_dir(tmp_path / "l2", LLAMA2_CHAT_TEMPLATE, model=LLAMA2)
    fmt = chat_format.resolve(directory)
    hf = transformers.AutoTokenizer.from_pretrained(directory)
    for messages in (CONVERSATION, CONVERSATION[1:], CONVERSATION[:4]):
        ref = hf.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        if messages[-1]["role"] == "assistant":
            assert fmt.encode(messages)[0].tolist() == list(ref)
        else:
            assert fmt.encode_prompt(messages) == list(ref)


# ---------------------------------------------------------------- 1, 2, 3, 8: data, run, export


@pytest.fixture(scope="module")
def llama2_data(tmp_path_factory):
    """The bundled sample prepared in the llama-2 template for 129-token rows."""
    out = str(tmp_path_factory.mktemp("fmt") / "llama2_data")
    return prepare_dataset(bundled_sample_path(), out, tokenizer=bundled_tokenizer_path(), max_length=129,
                           template="llama-2", validation_fraction=0.05, verbose=False)


def _run_settings(data: str, **more):
    settings = {"data.path": data, "seq_len": 128, "batch_size": 8, "total_steps": 2, "checkpoint_every": 2,
                "eval_every": 0, "log_every": 1, "model_overrides.num_layers": 1, "export_dtype": "float32"}
    return tiny_config({**settings, **more})


def test_data_prepared_in_a_template_trains_and_exports_in_it(llama2_data, tmp_path):
    from vicuna_jax.checkpoint import read_chat_format
    from vicuna_jax.generate import load_generator
    from vicuna_jax.train import train

    meta = json.load(open(os.path.join(llama2_data, "meta.json")))
    assert meta["chat_format"]["template"] == "llama-2" and meta["chat_format"]["max_length"] == 129
    workdir = str(tmp_path / "run")
    summary = train(_run_settings(llama2_data), workdir)  # config.data.template = auto: the data's
    llama2 = get_template("llama-2").hf_chat_template(bos=True)
    exported = json.load(open(os.path.join(summary["hf_dir"], "tokenizer_config.json")))
    assert exported["chat_template"] == llama2
    for record in (chat_format.read_record(workdir), chat_format.read_record(summary["hf_dir"]),
                   read_chat_format(os.path.join(workdir, "checkpoints", "2"))[0]):
        assert record["template"] == "llama-2" and record["max_length"] == 129
    # Every command reading the run or its export decodes in the format it was trained in.
    for path in (workdir, summary["hf_dir"]):
        assert load_generator(path).chat_format.template == "llama-2"
    # An explicit other template on the same data is one error line naming both, before any training.
    with pytest.raises(UserError, match=r"config.data.template=vicuna_v1.1 differs from the chat format the "
                                        r"dataset .* records \(llama-2"):
        train(_run_settings(llama2_data, **{"data.template": "vicuna_v1.1"}), str(tmp_path / "other"))
    assert not os.path.exists(str(tmp_path / "other" / "checkpoints"))
    # Rerunning the finished run's workdir with another template: the workdir's record refuses it.
    with pytest.raises(UserError, match=r"config.data.template=vicuna_v1.1 differs from the chat format "
                                        r".*run/chat_format.json records \(llama-2"):
        train(_run_settings(llama2_data, **{"data.template": "vicuna_v1.1"}), workdir)


def test_a_dataset_longer_than_a_row_is_refused_before_training(tmp_path):
    from vicuna_jax.train import train

    data = prepare_dataset(bundled_sample_path(), str(tmp_path / "d513"), tokenizer=bundled_tokenizer_path(),
                           max_length=513, validation_fraction=0.05, verbose=False)
    with pytest.raises(UserError, match=r"config.seq_len: .* max_length 513, longer than a training row "
                                        r"\(seq_len 16 \+ 1 = 17\).*config.seq_len=512.*--max_length=17"):
        train(_run_settings(data, seq_len=16), str(tmp_path / "run"))
    assert not os.path.exists(str(tmp_path / "run" / "checkpoints"))


def test_a_run_whose_batches_hold_no_target_token_stops(tmp_path):
    """Whatever the cause: here a dataset whose meta claims targets its examples do not have (every reply
    is cut off by the 17-token limit, after the vicuna system prompt)."""
    from vicuna_jax.train import train

    raw = tmp_path / "short.json"
    raw.write_text(json.dumps([{"id": f"c{k}", "conversations": [
        {"from": "human", "value": f"Hello number {k}, how are you?"},
        {"from": "gpt", "value": f"Fine, thank you for asking {k} times."}]} for k in range(64)]))
    data = prepare_dataset(str(raw), str(tmp_path / "d17"), tokenizer=bundled_tokenizer_path(),
                           max_length=17, validation_fraction=0.05, verbose=False)
    meta_path = os.path.join(data, "meta.json")
    meta = json.load(open(meta_path))
    assert meta["splits"]["train"]["target_tokens"] == 0
    meta["splits"]["train"]["target_tokens"] = 5
    json.dump(meta, open(meta_path, "w"))
    workdir = str(tmp_path / "run")
    with pytest.raises(UserError, match="step 1: the batch holds no target"):
        train(_run_settings(data, seq_len=16), workdir)
    assert not os.path.exists(os.path.join(workdir, "hf"))
    assert not os.listdir(os.path.join(workdir, "checkpoints"))


def test_export_of_a_sentencepiece_checkpoint_and_of_a_finished_run(tmp_path, llama2_data):
    """`convert --from_hf` of a LLaMA-2-style directory (tokenizer.model, no template) and back to HF, with
    the README's default flags; then the same on a finished run's workdir."""
    from vicuna_jax.convert import save_hf
    from vicuna_jax.model.config import LlamaConfig
    from vicuna_jax.model.llama import build_model, model_params

    cfg = LlamaConfig(vocab_size=4096, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                      max_position_embeddings=256)
    hf_in = save_hf(model_params(build_model(cfg, seed=0)), cfg, str(tmp_path / "llama2_hf"), dtype="float32")
    _sp_dir(hf_in)
    ckpt, out = str(tmp_path / "ckpt"), str(tmp_path / "out")
    r = _cli("-m", "vicuna_jax.convert", f"--from_hf={hf_in}", f"--to_checkpoint={ckpt}")
    assert r.returncode == 0, r.stderr[-2000:]
    r = _cli("-m", "vicuna_jax.convert", f"--from_checkpoint={ckpt}", f"--to_hf={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    config = json.load(open(os.path.join(out, "tokenizer_config.json")))
    assert config["chat_template"] == get_template("vicuna_v1.1").hf_chat_template(bos=True)
    assert chat_format.read_record(out)["template"] == "vicuna_v1.1"
    # A finished run's workdir exports in the run's format; naming another one is refused.
    from vicuna_jax.train import train

    workdir = str(tmp_path / "run")
    train(_run_settings(llama2_data, export_hf_at_end=False), workdir)
    r = _cli("-m", "vicuna_jax.convert", f"--from_checkpoint={workdir}", f"--to_hf={tmp_path / 'run_hf'}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert chat_format.read_record(str(tmp_path / "run_hf"))["template"] == "llama-2"
    r = _cli("-m", "vicuna_jax.convert", f"--from_checkpoint={workdir}", f"--to_hf={tmp_path / 'bad'}",
             "--template=vicuna_v1.1")
    assert r.returncode == 2
    assert re.search(r"^error: --template=vicuna_v1.1 differs .*llama-2", r.stderr, re.M)
    assert "Traceback" not in r.stderr and not os.path.exists(tmp_path / "bad")


# ------------------------------------------------------------ 4: LoRA exports (5: tests/lora/test_peft.py)


@pytest.fixture(scope="module")
def json_base(tmp_path_factory):
    """A tiny HF model whose tokenizer is a tokenizer.json (Llama-3 style, with its chat template)."""
    from hf_tokenizers import save_hf_tokenizer

    from vicuna_jax.convert import save_hf
    from vicuna_jax.model.config import LlamaConfig
    from vicuna_jax.model.llama import build_model, model_params

    cfg = LlamaConfig(vocab_size=2048, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, max_position_embeddings=128)
    out = save_hf(model_params(build_model(cfg, seed=0)), cfg, str(tmp_path_factory.mktemp("jb") / "base"),
                  dtype="float32")
    save_hf_tokenizer(out, "llama3")
    return out, cfg


def test_lora_merge_onto_a_tokenizer_json_base_writes_its_tokenizer(json_base, tmp_path):
    from vicuna_jax.generate import load_generator
    from vicuna_jax.lora.config import LoRAConfig
    from vicuna_jax.lora.peft import save_peft

    base, cfg = json_base
    lora = LoRAConfig(rank=2, alpha=4.0, dropout=0.0, target_modules=("q_proj", "v_proj"))
    adapters = {"layers": {}}
    rng = np.random.RandomState(0)
    from vicuna_jax.lora.config import TARGETS, projection_shape

    for module in lora.target_modules:
        n_in, n_out = projection_shape(cfg, module)
        adapters["layers"].setdefault(TARGETS[module][0], {})[module] = {
            "lora_a": rng.randn(cfg.num_layers, n_in, 2).astype(np.float32),
            "lora_b": rng.randn(cfg.num_layers, 2, n_out).astype(np.float32)}
    adapter = save_peft(adapters, lora, cfg, str(tmp_path / "adapter"), base_model=base)
    merged = str(tmp_path / "merged")
    r = _cli("-m", "vicuna_jax.lora", f"--adapter={adapter}", f"--base={base}", f"--out={merged}", "--merge")
    assert r.returncode == 0, r.stderr[-2000:]
    assert os.path.isfile(os.path.join(merged, "tokenizer.json"))
    gen = load_generator(merged)  # what `chat --model=<merged>` loads
    assert gen.chat_format.template == "hf" and gen.chat_format.tokenizer_kind == "tokenizer.json"
    assert gen.chat_format.end_of_turn == ("<|eot_id|>",)


# ---------------------------------------------------------------- 9: the README names what exists


def test_every_vicuna_jax_name_in_the_readme_exists():
    import importlib

    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    names = sorted(set(re.findall(r"\bvicuna_jax(?:\.[A-Za-z_]\w*)+", text)))
    missing = []
    for name in names:
        parts = name.split(".")
        for k in range(len(parts), 0, -1):  # the longest importable module, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:k]))
            except ImportError:
                continue
            try:
                for attr in parts[k:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                missing.append(name)
            break
        else:
            missing.append(name)
    assert names and not missing, missing


def test_a_dataset_prepared_by_the_previous_version_is_kept_and_its_format_recorded(tmp_path):
    """A workdir's data prepared by pipeline version 3 (no chat format recorded) with these very inputs is
    reused with its key (a run's loader position is tied to it) and gains the record; other inputs are
    prepared again."""
    from vicuna_jax.data.prepare import _key, _version3_options

    out = prepare_dataset(bundled_sample_path(), str(tmp_path / "d"), tokenizer=bundled_tokenizer_path(),
                          max_length=129, validation_fraction=0.05, verbose=False)
    meta_path = os.path.join(out, "meta.json")
    meta = json.load(open(meta_path))
    fmt = chat_format.resolve(bundled_tokenizer_path())
    old_options = _version3_options(meta["options"], fmt)
    old = {k: v for k, v in meta.items() if k != "chat_format"}
    old.update(key=_key(old_options), options=old_options)
    json.dump(old, open(meta_path, "w"))
    cleaned = os.path.join(out, "cleaned.jsonl")
    os.utime(cleaned, (1, 1))
    prepare_dataset(bundled_sample_path(), out, tokenizer=bundled_tokenizer_path(), max_length=129,
                    validation_fraction=0.05, verbose=False)
    upgraded = json.load(open(meta_path))
    assert upgraded["key"] == old["key"] and upgraded["current_key"] == meta["key"]
    assert upgraded["chat_format"] == fmt.with_max_length(129).record()
    assert os.stat(cleaned).st_mtime == 1  # not prepared again
    # The same old record with other inputs (another max_length) is prepared again.
    old_options["max_length"] = 257
    json.dump({**old, "key": _key(old_options), "options": old_options}, open(meta_path, "w"))
    prepare_dataset(bundled_sample_path(), out, tokenizer=bundled_tokenizer_path(), max_length=129,
                    validation_fraction=0.05, verbose=False)
    assert json.load(open(meta_path))["key"] == meta["key"] and os.stat(cleaned).st_mtime != 1
