"""Preemption safety: SIGKILL at any moment then the same command ends on exactly the same losses;
SIGTERM saves and exits 0; a NaN stops the run with the last good checkpoint intact."""

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
from train_utils import cli_args, config, env, losses, run_cli

from vicuna_jax import checkpoint as ckpt_lib
from vicuna_jax.train import TrainingError, train

STEPS = 40
LONG = {"total_steps": STEPS, "checkpoint_every": 4, "keep_checkpoints": 2}


@pytest.fixture(scope="module")
def reference(prepared, tmp_path_factory):
    """An uninterrupted run."""
    workdir = str(tmp_path_factory.mktemp("ref"))
    proc = run_cli(prepared, workdir, **LONG)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return losses(workdir)


def _start(prepared, workdir):
    return subprocess.Popen(cli_args(prepared, workdir, **LONG), env=env(1), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(workdir, proc, timeout=240):
    root = os.path.join(workdir, "checkpoints")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ckpt_lib.latest_step_dir(root) is not None:
            return
        if proc.poll() is not None:
            pytest.fail(f"training exited early: {proc.stderr.read()[-3000:]}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("no checkpoint appeared")


def test_sigkill_then_restart_gives_identical_losses(prepared, reference, tmp_path):
    workdir = str(tmp_path / "killed")
    proc = _start(prepared, workdir)
    _wait_for_checkpoint(workdir, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(losses(workdir)) if os.path.exists(os.path.join(workdir, "metrics.jsonl")) else 0
    assert killed_at < STEPS, "the run finished before it could be killed; make it longer"
    resumed = run_cli(prepared, workdir, **LONG)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    got = losses(workdir)
    assert sorted(got) == sorted(reference) == list(range(1, STEPS + 1))
    assert got == reference  # bit-identical, step by step


def test_sigterm_saves_exits_zero_and_resumes(prepared, reference, tmp_path):
    workdir = str(tmp_path / "term")
    proc = _start(prepared, workdir)
    _wait_for_checkpoint(workdir, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads(open(os.path.join(workdir, "run_summary.json")).read())
    assert summary["stopped_by"] == "SIGTERM"
    assert "Stopped by SIGTERM (checkpoint saved): run the same command to resume." in out
    stopped = summary["final_step"]
    assert stopped < STEPS
    latest = ckpt_lib.latest_step_dir(os.path.join(workdir, "checkpoints"))
    assert latest is not None and os.path.basename(latest) == str(stopped)
    resumed = run_cli(prepared, workdir, **LONG)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {os.path.join(workdir, 'checkpoints')}/{stopped}" in resumed.stderr
    assert losses(workdir) == reference


def test_interrupted_save_leaves_previous_checkpoint_usable(prepared, tmp_path):
    """A step directory still being written (orbax's tmp name) is ignored; the previous one is used."""
    workdir = str(tmp_path / "partial")
    first = run_cli(prepared, workdir, **{"total_steps": 4, "checkpoint_every": 4})
    assert first.returncode == 0, first.stderr[-3000:]
    root = os.path.join(workdir, "checkpoints")
    os.makedirs(os.path.join(root, "8.orbax-checkpoint-tmp-1234", "params"))
    assert os.path.basename(ckpt_lib.latest_step_dir(root)) == "4"
    resumed = run_cli(prepared, workdir, **{"total_steps": 6, "checkpoint_every": 4})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "/4 " in resumed.stderr
    assert sorted(losses(workdir)) == [1, 2, 3, 4, 5, 6]


def test_nan_loss_stops_with_last_good_checkpoint(prepared, tmp_path):
    workdir = str(tmp_path / "nan")
    c = config(prepared, **{"optimizer.learning_rate": 1e30, "optimizer.grad_clip": 0.0, "total_steps": 10,
                            "checkpoint_every": 1})
    with pytest.raises(TrainingError, match=r"not finite.*last good checkpoint is step \d+"):
        train(c, workdir)
    cfg, params = ckpt_lib.load_params(workdir)
    for leaf in np.asarray(params["norm"]["scale"]), np.asarray(params["layers"]["mlp"]["up_proj"]["kernel"]):
        assert np.isfinite(leaf).all()
