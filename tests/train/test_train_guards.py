"""What the trainer refuses before it trains, with one clear error: a shared or unusable workdir, data made
with another tokenizer, data without targets or too small for a batch; and a finished run is not redone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from train_utils import REPO, cli_args, config, env

from vicuna_jax.cli import UserError
from vicuna_jax.train import train


def _error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def test_a_second_trainer_in_the_same_workdir_fails_at_once_naming_the_holder(prepared, tmp_path):
    workdir = str(tmp_path / "w")
    os.makedirs(workdir)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom vicuna_jax.train.workdir import WorkdirLock\n"
         f"with WorkdirLock({workdir!r}):\n    print('held', flush=True)\n    time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = subprocess.run(cli_args(prepared, workdir), capture_output=True, text=True, env=env(),
                              timeout=120, check=False)
        line = _error_line(proc)
        assert "in use by another training run" in line and f"PID {holder.pid}" in line, line
        assert not os.path.exists(os.path.join(workdir, "checkpoints"))
    finally:
        holder.kill()
        holder.wait()
    # The lock dies with its holder (even on kill -9): the workdir is free again.
    from vicuna_jax.train.workdir import WorkdirLock

    with WorkdirLock(workdir):
        pass


def test_user_mistakes_on_the_command_line_are_one_error_line(prepared, tmp_path):
    a_file = tmp_path / "not_a_dir"
    a_file.write_text("x")
    cases = [
        (cli_args(prepared, str(a_file)), "is not a directory"),
        ([sys.executable, "-m", "vicuna_jax.train", "--config=configs/nope.py", f"--workdir={tmp_path}/w"],
         "No such file"),
        (cli_args(prepared, str(tmp_path / "w2"), seqlen=128), "did you mean --config.seq_len?"),
        (cli_args(prepared, str(tmp_path / "w3"), seq_len="many"), "--config.seq_len"),
    ]
    for args, expected in cases:
        proc = subprocess.run(args, capture_output=True, text=True, env=env(), timeout=120, check=False,
                              cwd=REPO)
        assert expected in _error_line(proc), (args, proc.stderr[-2000:])


def test_a_read_only_workdir_is_one_error_line(prepared, tmp_path):
    workdir = tmp_path / "ro"
    workdir.mkdir()
    if os.geteuid() == 0:  # root writes through file modes: make it a read-only mount instead
        if subprocess.run(["mount", "--bind", "-o", "ro", str(workdir), str(workdir)],
                          capture_output=True, check=False).returncode != 0:
            pytest.skip("cannot make a read-only mount here")
    else:
        workdir.chmod(0o555)
    try:
        proc = subprocess.run(cli_args(prepared, str(workdir)), capture_output=True, text=True, env=env(),
                              timeout=120, check=False)
        assert "is not writable" in _error_line(proc)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(workdir)], check=False)
        else:
            workdir.chmod(0o755)


def _other_tokenizer(tmp_path) -> str:
    import sentencepiece as spm

    from vicuna_jax.data.prepare import bundled_sample_path

    with open(bundled_sample_path()) as f:
        text = " ".join(m["value"] for conv in json.load(f)[:300] for m in conv.get("conversations", [])
                        if isinstance(m, dict) and isinstance(m.get("value"), str))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text)
    prefix = str(tmp_path / "other")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=prefix, vocab_size=600, model_type="bpe",
                                   character_coverage=0.99, byte_fallback=True, bos_id=1, eos_id=2, unk_id=0,
                                   pad_id=-1, minloglevel=2)
    return prefix + ".model"


def test_data_prepared_with_another_tokenizer_is_refused_before_compiling(prepared, tmp_path):
    other = _other_tokenizer(tmp_path)
    with pytest.raises(UserError, match="made with the tokenizer .*but the tokenizer here"):
        train(config(prepared, tokenizer=other), str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_data_without_target_tokens_is_refused(tmp_path):
    from vicuna_jax.data.prepare import bundled_sample_path

    # 7 tokens per row: every assistant reply is cut off (the system prompt alone is longer).
    c = config(bundled_sample_path(), seq_len=7)
    with pytest.raises(UserError, match="no target .*tokens at seq_len 7|no training conversations"):
        train(c, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_data_smaller_than_one_global_batch_is_said_before_the_model_is_built(prepared, tmp_path):
    with pytest.raises(UserError, match="fewer than one global batch of 4096 rows"):
        train(config(prepared, batch_size=4096), str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_rerunning_a_finished_run_reports_it_is_done(prepared, tmp_path):
    workdir = str(tmp_path / "w")
    c = config(prepared, total_steps=2, checkpoint_every=2, eval_every=2, export_hf_at_end=True)
    first = train(c, workdir)
    assert first["final_step"] == 2 and "hf_dir" in first
    metrics = open(os.path.join(workdir, "metrics.jsonl")).read()
    exported = os.path.join(first["hf_dir"], "config.json")
    mtime = os.stat(exported).st_mtime_ns
    again = train(c, workdir)
    assert again["already_complete"] is True and again["start_step"] == 2
    assert open(os.path.join(workdir, "metrics.jsonl")).read() == metrics  # no duplicate eval row
    assert os.stat(exported).st_mtime_ns == mtime  # not exported again


def test_a_planted_symbolic_link_never_redirects_a_write(prepared, tmp_path):
    """In a shared workdir someone links the trainer's fixed names to a victim's files: the lock and the
    metrics log (written in place) refuse the link; files written whole replace the link, not its target; a
    directory linked by another user is refused. Every victim keeps its bytes."""
    from vicuna_jax.train.workdir import WorkdirError

    workdir = tmp_path / "w"
    workdir.mkdir()
    victims = {}
    for name in (".lock", "metrics.jsonl", "train_config.json", "tokenizer.model"):
        victim = tmp_path / f"victim{len(victims)}"
        victim.write_text("precious\n")
        victims[name] = victim
    c = config(prepared, total_steps=1, checkpoint_every=1)

    (workdir / ".lock").symlink_to(victims[".lock"])
    with pytest.raises(WorkdirError, match=r"\.lock is a symbolic link"):
        train(c, str(workdir))
    (workdir / ".lock").unlink()
    (workdir / "metrics.jsonl").symlink_to(victims["metrics.jsonl"])
    with pytest.raises(UserError, match=r"metrics\.jsonl is a symbolic link"):
        train(c, str(workdir))
    (workdir / "metrics.jsonl").unlink()
    shutil.rmtree(workdir / "checkpoints", ignore_errors=True)  # stopped before its first step

    victim_dir = tmp_path / "victim_dir"
    victim_dir.mkdir()
    (victim_dir / "config.json").write_text("precious\n")
    (workdir / "hf").symlink_to(victim_dir)
    if os.geteuid() != 0:
        pytest.skip("needs root to make a link owned by another user")
    os.lchown(workdir / "hf", 12345, 12345)
    with pytest.raises(WorkdirError, match=r"hf is a symbolic link owned by another user"):
        train(c, str(workdir))
    (workdir / "hf").unlink()

    for name in ("train_config.json", "tokenizer.model"):
        (workdir / name).unlink(missing_ok=True)
        (workdir / name).symlink_to(victims[name])
    assert train(c, str(workdir))["final_step"] == 1
    for name, victim in victims.items():
        assert victim.read_text() == "precious\n", name
        assert not (workdir / name).is_symlink(), name
    assert (victim_dir / "config.json").read_text() == "precious\n"
