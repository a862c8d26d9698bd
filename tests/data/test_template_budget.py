"""A model directory's chat template renders in a sandbox with a time and size budget: real templates render
exactly as transformers renders them (large conversations too), and a runaway one ends, within about a
second of CPU, with one error naming its file in check-template, generate, serve and prepare. The corpus of
attacks is in test_bad_inputs.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

transformers = pytest.importorskip("transformers")

from hf_tokenizers import (  # noqa: E402
    LLAMA2_CHAT_TEMPLATE,
    LLAMA3_TEMPLATE,
    MISTRAL_V03_TEMPLATE,
    QWEN3_TEMPLATE,
    QWEN25_TEMPLATE,
    save_hf_tokenizer,
)
from transformers.utils.chat_template_utils import render_jinja_template  # noqa: E402

from vicuna_jax.data import chat_format  # noqa: E402
from vicuna_jax.data.chat_encode import AlignmentError  # noqa: E402
from vicuna_jax.data.chat_template import CHATML, render  # noqa: E402

REAL = {"llama-2": LLAMA2_CHAT_TEMPLATE, "llama-3": LLAMA3_TEMPLATE, "chatml": CHATML,
        "qwen2.5": QWEN25_TEMPLATE, "qwen3": QWEN3_TEMPLATE, "mistral-v0.3": MISTRAL_V03_TEMPLATE}
SPECIALS = {"bos_token": "<s>", "eos_token": "</s>"}
NESTED_LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
# A template that runs away only on one message: the rest of the data, and the next request, are fine.
BOMB_ON_BOOM = ("{% if messages[-1]['content'] == 'boom' %}" + NESTED_LOOPS + "{% endif %}" + CHATML)


def _conversations():
    long = "Long answer. " * 160_000  # 2 MB: the size budget grows with the conversation
    return [
        [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"},
         {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3? ünï 你好"}],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  Hello!\n\n- a\n- b  "},
         {"role": "user", "content": "Write it all " * 1000}, {"role": "assistant", "content": long},
         {"role": "user", "content": "Thanks"}],
    ]


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_templates_render_as_transformers_renders_them(name):
    for messages in _conversations():
        for prompt in (False, True):
            want = render_jinja_template([messages], chat_template=REAL[name], add_generation_prompt=prompt,
                                         **SPECIALS)[0][0]
            got, _ = render(REAL[name], messages, SPECIALS, add_generation_prompt=prompt)
            assert got == want, name


def _returns_within(seconds, fn, *args):
    box: dict = {}

    def run():
        try:
            box["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"did not return within {seconds} s"
    return box


def test_generate_and_serve_resolve_a_runaway_template_to_one_error_naming_its_file(tmp_path):
    path = save_hf_tokenizer(str(tmp_path / "m"), "qwen", chat_template=None)
    template_file = os.path.join(path, "chat_template.jinja")
    with open(template_file, "w") as f:
        f.write(NESTED_LOOPS)
    t0 = time.monotonic()
    box = _returns_within(30, chat_format.resolve, path)  # what load_model does for generate and serve
    assert isinstance(box.get("error"), chat_format.ChatFormatError), box
    assert f"chat template 'hf' ({template_file}): rendering took over 1 s of CPU time" in str(box["error"])
    assert time.monotonic() - t0 < 15


def test_a_template_that_runs_away_on_one_prompt_fails_that_prompt_only(tmp_path):
    path = save_hf_tokenizer(str(tmp_path / "m"), "qwen", chat_template=BOMB_ON_BOOM)
    fmt = chat_format.resolve(path)
    box = _returns_within(30, fmt.encode_prompt, [{"from": "human", "value": "boom"}])
    error = box.get("error")
    assert isinstance(error, AlignmentError) and error.reason == "template_limit", box  # serve: a 400
    assert os.path.join(path, "tokenizer_config.json") in str(error)
    assert fmt.encode_prompt([{"from": "human", "value": "fine"}])  # the next request is served


def test_prepare_rejects_the_conversation_a_template_runs_away_on(tmp_path):
    from vicuna_jax.data.formats import write_jsonl
    from vicuna_jax.data.prepare import prepare_dataset
    from vicuna_jax.data.store import PreparedDataset

    path = save_hf_tokenizer(str(tmp_path / "m"), "qwen", chat_template=BOMB_ON_BOOM)
    records = [{"id": f"r{k}", "conversations": [{"from": "human", "value": q},
                                                 {"from": "gpt", "value": "ok"}]}
               for k, q in enumerate(["hello", "boom", "again"])]
    write_jsonl(tmp_path / "raw.jsonl", records)
    box = _returns_within(60, lambda: prepare_dataset(
        str(tmp_path / "raw.jsonl"), str(tmp_path / "ds"), tokenizer=path, max_length=64,
        validation_fraction=0.0, verbose=False, num_workers=1))
    assert "error" not in box, box
    meta = PreparedDataset(box["value"]).meta
    assert meta["template_rejects"] == {"template_limit": 1} and meta["splits"]["train"]["examples"] == 2


def test_serve_with_a_runaway_template_exits_with_one_error_line(tiny_checkpoint, tmp_path):
    """It never binds its port and hangs: the template is tried while the model loads."""
    from vicuna_jax.data.hf_tokenizer import sentencepiece_tokenizer_config

    model = str(tmp_path / "model")
    shutil.copytree(tiny_checkpoint, model)
    config = sentencepiece_tokenizer_config({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
                                            NESTED_LOOPS)
    with open(os.path.join(model, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "vicuna_jax.serve", f"--model={model}", "--port=0"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and os.path.join(model, "tokenizer_config.json") in errors[0], proc.stderr[-2000:]
    assert "serving model" not in proc.stderr and time.monotonic() - t0 < 90
