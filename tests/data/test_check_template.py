"""check-template: renders samples with targets highlighted, verifies ids/prompts/end-of-turn against
transformers, and fails (exit 1) on a conversation the template cannot be aligned on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

pytest.importorskip("transformers")

from hf_tokenizers import CHATML_GENERATION_TEMPLATE, QWEN3_TEMPLATE, save_hf_tokenizer  # noqa: E402

from vicuna_jax.cli import UserError  # noqa: E402
from vicuna_jax.data.check_template import main  # noqa: E402
from vicuna_jax.data.tokenizer import bundled_tokenizer_path  # noqa: E402


def test_qwen3_template_passes_with_targets_highlighted(tmp_path, capsys):
    path = save_hf_tokenizer(str(tmp_path / "q"), "qwen", chat_template=QWEN3_TEMPLATE)
    assert main(["--tokenizer", path, "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "end-of-turn ids <|im_end|>" in out and "transformers 5" in out and "result: OK" in out
    # The final reply's empty reasoning block is trained on; the prompt before it is not.
    assert "<|im_start|>assistant\n[[<think>\n\n</think>\n\n4.<|im_end|>]]" in out
    assert "[[Hello! How can I help?<|im_end|>]]\n<|im_start|>user" in out


def test_generation_blocks_without_the_end_of_turn_are_reported(tmp_path, capsys):
    template = CHATML_GENERATION_TEMPLATE.replace("message.content + '<|im_end|>'", "message.content")
    template = template.replace("{{- '\n' }}", "{{- '<|im_end|>\n' }}")
    path = save_hf_tokenizer(str(tmp_path / "g"), "qwen", chat_template=template)
    assert main(["--tokenizer", path, "--color", "always"]) == 0
    out = capsys.readouterr().out
    assert "generation blocks: yes" in out and "\x1b[30;42m4.<|im_end|>\x1b[0m" in out
    assert "differs from return_assistant_tokens_mask: +1 tokens" in out


def test_sentencepiece_vicuna_against_its_export(capsys):
    args = ["--tokenizer", bundled_tokenizer_path(), "--template", "vicuna_v1.1", "--color", "never"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "built-in (Part-based)" in out and "ASSISTANT:[[ 4.</s>]]" in out and "transformers 5" in out


def test_a_conversation_that_cannot_be_aligned_fails(tmp_path, capsys):
    path = save_hf_tokenizer(str(tmp_path / "l"), "llama3")
    data = tmp_path / "convs.jsonl"
    rows = [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "fine"}]},
            {"conversations": [{"from": "human", "value": "say <|eot_id|>"}, {"from": "gpt", "value": "no"}]}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["--tokenizer", path, "--conversations", str(data), "--num", "2", "--color", "never"]) == 1
    out = capsys.readouterr().out
    assert "--- conversation 5" in out and "REJECTED: special_token_text" in out and "result: FAILED" in out


def test_bad_inputs_are_one_error_line(tmp_path):
    path = save_hf_tokenizer(str(tmp_path / "n"), "qwen", chat_template="{{ messages[0]['content'] }}")
    with pytest.raises(UserError, match="cannot find its end-of-turn token"):
        main(["--tokenizer", path])
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    good = save_hf_tokenizer(str(tmp_path / "ok"), "qwen")
    result = subprocess.run([sys.executable, "-m", "vicuna_jax.data.check_template", "--tokenizer", good,
                             "--conversations", str(bad)], capture_output=True, text=True, check=False)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "bad.jsonl:1" in result.stderr


RUNAWAY = {  # the four of issue 19: hours, 10 GB, OverflowError and RecursionError tracebacks before
    "nested_loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "huge_string": "{{ 'a' * 10**10 }}",
    "huge_range": "{% for i in range(10**9) %}{{ i }}{% endfor %}",
    "recursive_macro": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
}


def _limit_memory():
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # a memory bomb fails here, not the machine


@pytest.mark.parametrize("name", sorted(RUNAWAY))
def test_a_runaway_template_in_a_model_directory_is_one_error_line_naming_its_file(tmp_path, name):
    path = save_hf_tokenizer(str(tmp_path / name), "qwen", chat_template=None)
    template_file = os.path.join(path, "chat_template.jinja")
    with open(template_file, "w") as f:
        f.write(RUNAWAY[name])
    t0 = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "vicuna_jax.data.check_template", "--tokenizer", path],
                            capture_output=True, text=True, check=False, timeout=60, preexec_fn=_limit_memory)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"chat template 'hf' ({template_file}): " in errors[0], result.stderr
    assert time.monotonic() - t0 < 30
