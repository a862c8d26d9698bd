"""A workdir belongs to one run: rerunning it with a setting that changes the model, the data order or the
optimizer state is refused before anything is restored or moved (one error line naming the keys, old -> new,
and the ways out); settings that may change on resume (total_steps, cadence, ...) resume. Checkpoints are
moved aside only when their bytes fail their seal, never for not fitting the run. metrics.jsonl only grows.
`config.init_from` starts a new run from another run's checkpoint."""

from __future__ import annotations

import hashlib
import os
import shutil

import numpy as np
import pytest
from train_utils import config, losses, run_cli

from vicuna_jax import checkpoint as ckpt_lib
from vicuna_jax.cli import UserError
from vicuna_jax.train import train
from vicuna_jax.train.checkpointing import DAMAGED_DIR

FIRST = {"total_steps": 4, "checkpoint_every": 2}


@pytest.fixture(scope="module")
def finished(prepared, tmp_path_factory):
    """A 4-step run with checkpoints at 2 and 4."""
    workdir = str(tmp_path_factory.mktemp("settings") / "w")
    train(config(prepared, **FIRST), workdir)
    return workdir


def _tree_digest(directory: str) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            if name == ".lock":  # holds the last holder's PID
                continue
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _copy(finished: str, tmp_path) -> str:
    workdir = str(tmp_path / "w")
    shutil.copytree(finished, workdir)
    return workdir


@pytest.mark.parametrize("key, old, new", [
    ("model_overrides.num_layers", 2, 3),
    ("batch_size", 8, 16),
    ("seed", 0, 1),
    ("seq_len", 128, 64),
])
def test_a_changed_setting_is_refused_before_anything_is_touched(prepared, finished, tmp_path, key, old, new):
    workdir = _copy(finished, tmp_path)
    before = _tree_digest(workdir)
    metrics = open(os.path.join(workdir, "metrics.jsonl"), "rb").read()
    proc = run_cli(prepared, workdir, **FIRST, **{key: new})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert f"config.{key}: {old} -> {new}" in errors[0], errors[0]
    assert "init_from" in errors[0] and "new workdir" in errors[0], errors[0]
    assert _tree_digest(workdir) == before  # checkpoints, metrics, records: untouched
    assert open(os.path.join(workdir, "metrics.jsonl"), "rb").read() == metrics
    assert not os.path.exists(os.path.join(workdir, DAMAGED_DIR))


def test_settings_that_may_change_on_resume_resume(prepared, finished, tmp_path):
    workdir = _copy(finished, tmp_path)
    metrics = open(os.path.join(workdir, "metrics.jsonl"), "rb").read()
    summary = train(config(prepared, total_steps=6, checkpoint_every=3, log_every=2, eval_every=3,
                           keep_checkpoints=5, **{"optimizer.learning_rate": 1e-3}), workdir)
    assert summary["start_step"] == 4 and summary["final_step"] == 6
    assert open(os.path.join(workdir, "metrics.jsonl"), "rb").read().startswith(metrics)  # appended


def test_a_checkpoint_that_does_not_fit_the_model_is_not_called_damaged(prepared, finished, tmp_path):
    """Without the workdir's settings record (an older workdir), a shape mismatch still moves nothing."""
    workdir = _copy(finished, tmp_path)
    os.remove(os.path.join(workdir, "train_config.json"))
    before = _tree_digest(os.path.join(workdir, "checkpoints"))
    with pytest.raises(UserError, match=r"step 4 .*does not fit this run.*intact"):
        train(config(prepared, **FIRST, **{"model_overrides.num_layers": 3}), workdir)
    assert _tree_digest(os.path.join(workdir, "checkpoints")) == before
    assert not os.path.exists(os.path.join(workdir, DAMAGED_DIR))


def test_metrics_jsonl_is_only_appended_to(prepared, finished, tmp_path):
    """A run killed after logging past its last checkpoint (and mid-line): the resume appends; the rows it
    logs again for those steps come later in the file (readers take the last row of a step)."""
    workdir = _copy(finished, tmp_path)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write('{"step": 5, "loss": 1.0')  # cut short by the kill
    metrics = open(os.path.join(workdir, "metrics.jsonl"), "rb").read()
    summary = train(config(prepared, **FIRST), workdir)
    assert summary["start_step"] == 2 and summary["final_step"] == 4
    after = open(os.path.join(workdir, "metrics.jsonl"), "rb").read()
    assert after.startswith(metrics)
    assert losses(workdir) == losses(finished)  # every line parses; steps 3 and 4 again, identical


def test_init_from_starts_a_new_run_from_a_checkpoint(prepared, finished, tmp_path):
    """Other data settings in a new workdir, weights from `finished`'s latest checkpoint, step 0, a fresh
    optimizer: with a vanishing learning rate the weights after one step are the checkpoint's."""
    workdir = str(tmp_path / "new")
    summary = train(config(prepared, init_from=finished, total_steps=1, batch_size=16, seed=3,
                           **{"optimizer.learning_rate": 1e-30}), workdir)
    assert summary["start_step"] == 0 and summary["final_step"] == 1
    _, want = ckpt_lib.load_params(finished)
    _, got = ckpt_lib.load_params(workdir)
    for a, b in zip(*(jax_leaves(t) for t in (want, got)), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(UserError, match=r"config\.init_from: .*no complete vicuna_jax checkpoint"):
        train(config(prepared, init_from=str(tmp_path)), str(tmp_path / "other"))


def jax_leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]
