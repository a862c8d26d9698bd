"""The data CLIs end every user mistake with one `error:` line and exit status 2, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vicuna_jax.data.tokenizer import bundled_tokenizer_path

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOOD = {"id": "a", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}


def run_tool(tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", f"vicuna_jax.data.{tool}", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)  # fmt: skip


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def tool_args(tool: str, input_path, out_dir) -> list[str]:
    """The arguments each tool needs, reading `input_path` and writing under `out_dir`."""
    args, tok = [f"--input={input_path}"], f"--tokenizer={bundled_tokenizer_path()}"
    if tool == "prepare":
        return args + [f"--output_dir={out_dir}", tok, "--max_length=64"]
    args.append(f"--output={os.path.join(out_dir, 'out.jsonl')}")
    return args + ([tok] if tool == "split" else [])


TOOLS = ["clean", "split", "prepare"]


@pytest.mark.parametrize("tool", TOOLS)
def test_missing_or_directory_input(tmp_path, tool):
    line = one_error_line(run_tool(tool, *tool_args(tool, tmp_path / "nope.json", tmp_path / "o")))
    assert line == f"error: input file not found: {tmp_path / 'nope.json'}"
    line = one_error_line(run_tool(tool, *tool_args(tool, tmp_path, tmp_path / "o")))
    assert line == f"error: input {tmp_path} is a directory, not a data file"


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("content", ["", "[]", "\n\n"], ids=["0-bytes", "empty-array", "blank-lines"])
def test_empty_input(tmp_path, tool, content):
    src = tmp_path / "empty.json"
    src.write_text(content)
    line = one_error_line(run_tool(tool, *tool_args(tool, src, tmp_path / "o")))
    if tool == "split":
        assert line == f"error: {src}: no records to split"
    else:
        assert line == f"error: {src}: no usable conversation: the file holds no records"
    assert not (tmp_path / "o" / "out.jsonl").exists()


@pytest.mark.parametrize("tool", ["clean", "prepare"])
def test_input_with_no_usable_conversation_lists_the_reject_counts(tmp_path, tool):
    src = tmp_path / "bad.jsonl"
    src.write_text('not json\n{"id": "x"}\n{oops\n')
    line = one_error_line(run_tool(tool, *tool_args(tool, src, tmp_path / "o")))
    assert line.startswith(f"error: {src}: no usable conversation: all 3 records were rejected "
                           "(malformed_json 2, bad_structure 1)")  # fmt: skip


def test_split_names_the_bad_record(tmp_path):
    src = tmp_path / "raw.jsonl"
    src.write_text(json.dumps(GOOD) + "\n{oops\n")
    line = one_error_line(run_tool("split", *tool_args("split", src, tmp_path / "o")))
    assert line.startswith(f"error: {src}:2: line 2: malformed JSON")
    src.write_text(json.dumps(GOOD) + "\n" + json.dumps({"id": "b", "messages": "hi"}) + "\n")
    line = one_error_line(run_tool("split", *tool_args("split", src, tmp_path / "o")))
    assert line.startswith(f"error: {src}:2: cannot split this record: no 'conversations' key")


@pytest.mark.parametrize("tool", TOOLS)
def test_broken_json_array(tmp_path, tool):
    src = tmp_path / "cut.json"
    src.write_text("[\n" + json.dumps(GOOD) + ",\n" + json.dumps(GOOD)[:20])
    line = one_error_line(run_tool(tool, *tool_args(tool, src, tmp_path / "o")))
    assert line.startswith(f"error: {src}:3: malformed JSON array: the file ends inside")


@pytest.mark.parametrize("tool", TOOLS)
def test_unwritable_output_directory(tmp_path, tool):
    src = tmp_path / "ok.jsonl"
    src.write_text(json.dumps(GOOD) + "\n")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    line = one_error_line(run_tool(tool, *tool_args(tool, src, blocker / "sub")))
    assert line.startswith(f"error: cannot write to the output directory {blocker / 'sub'}: ")


@pytest.mark.parametrize("tool", ["split", "prepare"])
def test_bad_tokenizer_and_template(tmp_path, tool):
    src = tmp_path / "ok.jsonl"
    src.write_text(json.dumps(GOOD) + "\n")
    args = tool_args(tool, src, tmp_path / "o")
    no_model = f"--tokenizer={tmp_path / 'no.model'}"
    missing = [no_model if a.startswith("--tokenizer=") else a for a in args]
    line = one_error_line(run_tool(tool, *missing))
    assert line == f"error: --tokenizer: tokenizer model not found: {tmp_path / 'no.model'}"
    line = one_error_line(run_tool(tool, *args, "--template=nope"))
    assert line.startswith("error: --template: unknown chat template 'nope'")
