"""Base + adapter everywhere a model is loaded: generate (CLI), the engine behind serve, chat/answers'
loader; and `python -m vicuna_jax.lora` exports (PEFT directory, --merge) with one-line errors."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from lora_utils import env

from vicuna_jax.cli import UserError
from vicuna_jax.generate import SamplingParams, load_generator, prompt_ids

PROMPT = "How do I reverse a list?"


def _greedy(workdir_model, **kw):
    gen = load_generator(workdir_model, **kw)
    ids = prompt_ids(gen, PROMPT)
    return gen, ids, gen.generate([ids], SamplingParams(max_new_tokens=12))[0]


def test_generate_cli_with_an_adapter_equals_the_merged_model(lora_workdir):
    workdir, _ = lora_workdir
    _, _, merged = _greedy(os.path.join(workdir, "hf"))
    proc = subprocess.run([sys.executable, "-m", "vicuna_jax.generate", f"--model={workdir}/base",
                           f"--adapter={workdir}/adapter", f"--prompt={PROMPT}", "--max_new_tokens=12"],
                          capture_output=True, text=True, env=env(1), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == merged.text.strip()
    _, _, base_only = _greedy(os.path.join(workdir, "base"))
    assert base_only.token_ids != merged.token_ids  # the adapter changes the replies
    with pytest.raises(UserError, match=f"--adapter: {workdir}/tensorboard is neither a PEFT adapter"):
        load_generator(f"{workdir}/base", adapter=f"{workdir}/tensorboard")


def test_the_serving_engine_takes_base_and_adapter(lora_workdir):
    from vicuna_jax.serve import load_engine
    from vicuna_jax.serve.engine import SeqRequest

    workdir, _ = lora_workdir
    _, ids, want = _greedy(workdir)  # the LoRA workdir itself, loaded onto its recorded base
    engine, _ = load_engine(os.path.join(workdir, "base"), adapter=os.path.join(workdir, "adapter"),
                            max_batch=2, decode_steps=4, warmup=False)
    done, events = threading.Event(), []

    def on_event(ev):
        events.append(ev)
        if ev.finish_reason:
            done.set()

    try:
        engine.submit(SeqRequest(tuple(ids), 12), on_event)
        assert done.wait(120)
    finally:
        engine.shutdown()
    assert events[-1].completion_tokens == len(want.token_ids)
    assert "".join(ev.text for ev in events) == want.text


def test_lora_export_cli_writes_peft_and_merged(lora_workdir, tmp_path):
    from vicuna_jax.lora.peft import load_peft
    from vicuna_jax.model.config import LlamaConfig

    workdir, _ = lora_workdir
    run = lambda *args: subprocess.run([sys.executable, "-m", "vicuna_jax.lora", *args], capture_output=True,
                                       text=True, env=env(1), timeout=300)
    peft = run(f"--adapter={workdir}/checkpoints", f"--out={tmp_path}/peft")
    assert peft.returncode == 0, peft.stderr[-3000:]
    merged = run(f"--adapter={tmp_path}/peft", f"--out={tmp_path}/merged", "--merge", "--dtype=float32")
    assert merged.returncode == 0, merged.stderr[-3000:]
    cfg = LlamaConfig.from_hf_config(os.path.join(workdir, "base"))
    _, ours, _ = load_peft(f"{tmp_path}/peft", cfg)
    _, trained, _ = load_peft(os.path.join(workdir, "adapter"), cfg)
    for a, b in zip(*(sorted(_leaves(x)) for x in (ours, trained)), strict=True):
        np.testing.assert_array_equal(a[1], b[1])
    from safetensors.numpy import load_file

    got = load_file(f"{tmp_path}/merged/model-00001-of-00001.safetensors")
    want = load_file(f"{workdir}/hf/model-00001-of-00001.safetensors")
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    umask = os.umask(0)
    os.umask(umask)
    for directory in (f"{workdir}/hf", f"{workdir}/adapter", f"{tmp_path}/peft", f"{tmp_path}/merged"):
        modes = {n: os.stat(os.path.join(directory, n)).st_mode & 0o777 for n in os.listdir(directory)
                 if os.path.isfile(os.path.join(directory, n))}
        assert set(modes.values()) == {0o666 & ~umask}, (directory, modes)  # safetensors files too
    refused = run(f"--adapter={tmp_path}/peft", f"--out={tmp_path}/x", f"--base={workdir}/hf")
    assert refused.returncode == 2 and "another base model" in refused.stderr
    assert "Traceback" not in refused.stderr


def _leaves(tree, prefix=""):
    if isinstance(tree, dict):
        return [item for k, v in tree.items() for item in _leaves(v, f"{prefix}/{k}")]
    return [(prefix, tree)]
