"""Two processes with jax.distributed on CPU (gloo) train exactly like one process with the same devices."""

import os
import socket
import subprocess

import pytest
from train_utils import cli_args, env, losses, run_cli

pytestmark = pytest.mark.multiprocess


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_agree_with_one(prepared, tmp_path):
    overrides = {"mesh.data": 2, "mesh.fsdp": 2, "total_steps": 4, "checkpoint_every": 2,
                 "export_hf_at_end": True}
    single = str(tmp_path / "single")
    proc = run_cli(prepared, single, devices=4, **overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]

    multi = str(tmp_path / "multi")
    port = _free_port()
    procs = []
    for pid in range(2):
        e = env(2, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                JAX_PROCESS_ID=str(pid))
        procs.append(subprocess.Popen(cli_args(prepared, multi, **overrides), env=e, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "process 1 of 2" in outs[1][1] and "4 global devices" in outs[1][1]
    one, two = losses(single), losses(multi)
    assert sorted(one) == sorted(two) == [1, 2, 3, 4]
    for step in one:
        assert abs(one[step] - two[step]) / one[step] < 1e-5, (step, one[step], two[step])
    # Only process 0 logs and exports; both wrote their shards of the same checkpoints.
    assert "Trained 4 steps" in outs[0][0] and "Trained" not in outs[1][0]  # the end-of-run summary
    assert os.path.isfile(os.path.join(multi, "run_summary.json"))
    assert os.path.isfile(os.path.join(multi, "hf", "config.json"))
    assert sorted(os.listdir(os.path.join(multi, "checkpoints"))) == sorted(
        os.listdir(os.path.join(single, "checkpoints")))
