"""Damaged checkpoints: truncated, deleted or bit-flipped files, a broken data position, a deleted seal.
The run resumes
from the newest intact checkpoint, exactly, and says which one it skipped and why. A save that fails stops
the run with one error line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest
from train_utils import cli_args, config, env, losses

from vicuna_jax.train import train
from vicuna_jax.train.checkpointing import CHECKSUMS_FILE, DAMAGED_DIR, SEALS_FILE, NoIntactCheckpointError


@pytest.fixture(scope="module")
def finished_run(prepared, tmp_path_factory):
    """A 9-step run with checkpoints at 3, 6 and 9 (its losses are the reference for exact resumes)."""
    workdir = str(tmp_path_factory.mktemp("run") / "w")
    train(config(prepared, total_steps=9, checkpoint_every=3), workdir)
    return workdir


def _largest_file(directory: str) -> str:
    files = [os.path.join(r, f) for r, _, fs in os.walk(directory) for f in fs]
    return max(files, key=os.path.getsize)


def _truncate(path: str) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _flip_bit(path: str) -> None:
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x10]))


DAMAGE = {
    "truncated params": lambda step_dir: _truncate(_largest_file(os.path.join(step_dir, "params"))),
    "deleted optimizer file": lambda step_dir: os.remove(_largest_file(os.path.join(step_dir, "opt_state"))),
    "flipped bit in params": lambda step_dir: _flip_bit(_largest_file(os.path.join(step_dir, "params"))),
    "truncated data_state": lambda step_dir: _truncate(os.path.join(step_dir, "data_state", "metadata")),
    "deleted seal, flipped bit": lambda step_dir: (
        os.remove(os.path.join(step_dir, CHECKSUMS_FILE)),
        _flip_bit(_largest_file(os.path.join(step_dir, "params")))),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(prepared, finished_run, tmp_path, damage):
    workdir = str(tmp_path / "w")
    shutil.copytree(finished_run, workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "9"))  # resume from 6, whose damage sends us to 3
    assert os.path.isfile(os.path.join(workdir, "checkpoints", "6", CHECKSUMS_FILE))
    DAMAGE[damage](os.path.join(workdir, "checkpoints", "6"))

    summary = train(config(prepared, total_steps=9, checkpoint_every=3), workdir)
    assert summary["start_step"] == 3 and summary["final_step"] == 9
    aside = os.path.join(workdir, DAMAGED_DIR, "6")
    assert os.path.isdir(aside), os.listdir(workdir)
    reason = open(os.path.join(aside, "DAMAGED.txt")).read()
    assert reason.strip(), reason
    # Resumed exactly: steps 4..9 trained again give the losses of the uninterrupted run.
    reference, resumed = losses(finished_run), losses(workdir)
    for step in range(4, 10):
        assert resumed[step] == reference[step], (damage, step, resumed[step], reference[step])


def test_the_reason_names_the_damage(prepared, finished_run, tmp_path):
    workdir = str(tmp_path / "w")
    shutil.copytree(finished_run, workdir)
    _flip_bit(_largest_file(os.path.join(workdir, "checkpoints", "9", "params")))
    train(config(prepared, total_steps=12, checkpoint_every=3), workdir)
    reason = open(os.path.join(workdir, DAMAGED_DIR, "9", "DAMAGED.txt")).read()
    assert "params/" in reason and "checksum" in reason, reason


def test_a_checkpoint_saved_but_not_yet_sealed_when_killed_resumes(prepared, finished_run, tmp_path):
    """A kill between the end of orbax's save and the sealing leaves a complete checkpoint without
    checksums.json that the seal record does not list: it is judged by whether it restores, and it does."""
    workdir = str(tmp_path / "w")
    shutil.copytree(finished_run, workdir)
    os.remove(os.path.join(workdir, "checkpoints", "9", CHECKSUMS_FILE))
    with open(os.path.join(workdir, SEALS_FILE)) as f:
        assert json.load(f) == {"sealed": [3, 6, 9]}
    with open(os.path.join(workdir, SEALS_FILE), "w") as f:
        json.dump({"sealed": [3, 6]}, f)
    summary = train(config(prepared, total_steps=12, checkpoint_every=3), workdir)
    assert summary["start_step"] == 9 and not os.path.exists(os.path.join(workdir, DAMAGED_DIR))


def test_no_intact_checkpoint_is_a_clear_error(prepared, finished_run, tmp_path):
    workdir = str(tmp_path / "w")
    shutil.copytree(finished_run, workdir)
    for step in ("3", "6", "9"):
        _truncate(_largest_file(os.path.join(workdir, "checkpoints", step, "params")))
    with pytest.raises(NoIntactCheckpointError, match="none of the checkpoints"):
        train(config(prepared, total_steps=12, checkpoint_every=3), workdir)
    assert sorted(os.listdir(os.path.join(workdir, DAMAGED_DIR))) == ["3", "6", "9"]
    metrics = open(os.path.join(workdir, "metrics.jsonl"), "rb").read()
    with pytest.raises(NoIntactCheckpointError, match="every checkpoint of this run was moved"):
        train(config(prepared, total_steps=12, checkpoint_every=3), workdir)  # not silently from step 0
    assert open(os.path.join(workdir, "metrics.jsonl"), "rb").read() == metrics


def test_a_save_that_fails_stops_the_run_with_one_error_line(prepared, tmp_path):
    """The workdir turns read-only mid-run (a full or failed disk behaves the same for orbax)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to remount the workdir read-only")
    workdir = tmp_path / "w"
    workdir.mkdir()
    proc = subprocess.Popen(cli_args(str(prepared), str(workdir), total_steps=100_000, checkpoint_every=20),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    mounted = False
    try:
        deadline = time.monotonic() + 180
        while not os.path.isdir(workdir / "checkpoints" / "20") and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            time.sleep(0.2)
        mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(workdir), str(workdir)],
                                 capture_output=True, check=False).returncode == 0
        if not mounted:
            pytest.skip("cannot make a read-only mount here")
        _, stderr = proc.communicate(timeout=180)  # it must stop by itself, not hang
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if mounted:
            subprocess.run(["umount", str(workdir)], check=False)
    assert proc.returncode == 2, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "could not save" in errors[0] and "Read-only file system" in errors[0]
    assert "last complete checkpoint is step" in errors[0]
    assert "Traceback" not in stderr, stderr[-3000:]
