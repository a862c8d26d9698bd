"""One prepare per output directory at a time, and a dataset appears whole or not at all: a second prepare
while one runs is refused with one error line; a rebuild that fails leaves the previous dataset as it was;
a directory without meta.json (the completion record, written last) is never taken for a dataset; a
directory holding files prepare did not write is not replaced."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vicuna_jax.cli import UserError
from vicuna_jax.data import bundled_tokenizer_path, prepare
from vicuna_jax.data.prepare import prepare_dataset
from vicuna_jax.data.store import META_FILE, PreparedDataset
from vicuna_jax.fileio import hold_lock, release_lock

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _raw(tmp_path, n: int = 30) -> str:
    raw = tmp_path / "raw.jsonl"
    rows = [{"id": f"r{k}", "conversations": [{"from": "human", "value": f"Question {k}?"},
                                               {"from": "gpt", "value": f"Answer number {k}."}]}
            for k in range(n)]
    raw.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(raw)


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=REPO)


def _cli(raw: str, out: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vicuna_jax.data.prepare", f"--input={raw}", f"--output_dir={out}",
            f"--tokenizer={bundled_tokenizer_path()}", "--max_length=64", "--validation_fraction=0.1", *extra]


def test_a_second_prepare_while_one_runs_is_refused(tmp_path):
    raw, out = _raw(tmp_path), str(tmp_path / "ds")
    fd = hold_lock(prepare.lock_path(out))  # a prepare in progress
    try:
        proc = subprocess.run(_cli(raw, out), capture_output=True, text=True, timeout=300, check=False,
                              env=_env())
    finally:
        release_lock(fd)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "being prepared by another process" in errors[0], proc.stderr[-3000:]
    assert not os.path.exists(out)


def test_two_prepares_at_once_leave_one_whole_dataset(tmp_path):
    raw, out = _raw(tmp_path), str(tmp_path / "ds")
    env = _env()
    procs = [subprocess.Popen(_cli(raw, out, *extra), stderr=subprocess.PIPE, text=True, env=env)
             for extra in ((), ("--max_length=48",))]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert any(rc == 0 for rc, _ in results), results
    for rc, err in results:
        assert rc == 0 or (rc == 2 and "being prepared by another process" in err), err[-3000:]
    meta = PreparedDataset(out).meta
    assert meta["options"]["max_length"] in (64, 48)
    assert len(PreparedDataset(out).source("train")) == meta["splits"]["train"]["examples"]


def test_a_failed_rebuild_leaves_the_previous_dataset_whole(tmp_path, monkeypatch):
    raw, out = _raw(tmp_path), str(tmp_path / "ds")
    tok = bundled_tokenizer_path()
    prepare_dataset(raw, out, tokenizer=tok, max_length=64, validation_fraction=0.1, verbose=False)
    before = PreparedDataset(out).meta

    def crash(*args, **kwargs):
        raise RuntimeError("disk pulled mid-write")

    monkeypatch.setattr(prepare, "write_dataset", crash)
    with pytest.raises(RuntimeError, match="mid-write"):
        prepare_dataset(raw, out, tokenizer=tok, max_length=32, validation_fraction=0.1, verbose=False)
    after = PreparedDataset(out)
    assert after.meta == before and len(after.source("train")) == before["splits"]["train"]["examples"]
    assert sorted(os.listdir(tmp_path)) == sorted([".ds.prepare-lock", "ds", "raw.jsonl"])


def test_a_directory_without_its_completion_record_is_not_a_dataset(tmp_path):
    raw, out = _raw(tmp_path), str(tmp_path / "ds")
    prepare_dataset(raw, out, tokenizer=bundled_tokenizer_path(), max_length=64, validation_fraction=0.1,
                    verbose=False)
    os.remove(os.path.join(out, META_FILE))  # as an older version's interrupted prepare left it
    with pytest.raises(FileNotFoundError, match="missing meta.json"):
        PreparedDataset(out)
    prepare_dataset(raw, out, tokenizer=bundled_tokenizer_path(), max_length=64, validation_fraction=0.1,
                    verbose=False)  # rebuilt, not reused
    assert PreparedDataset(out).meta["splits"]["train"]["examples"] > 0


def test_a_directory_with_other_files_is_not_replaced(tmp_path):
    raw, out = _raw(tmp_path), tmp_path / "ds"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    with pytest.raises(UserError, match=r"holds files prepare did not write \(notes\.txt\)"):
        prepare_dataset(raw, str(out), tokenizer=bundled_tokenizer_path(), max_length=64, verbose=False)
    assert os.listdir(out) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine\n"
