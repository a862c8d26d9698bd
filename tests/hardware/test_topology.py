"""TPU topology names -> libtpu's slice descriptions, and the one-line errors for unknown names and a missing
libtpu. Nothing here needs libtpu except the last test, which compiles nothing and skips without it."""

import importlib.util
import os
import subprocess
import sys

import jax
import pytest

from vicuna_jax.cli import UserError
from vicuna_jax.hardware import chips, topology

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HAVE_LIBTPU = importlib.util.find_spec("libtpu") is not None


@pytest.mark.parametrize("name,libtpu_name,chip_count,cloud_name", [
    ("v5p-8", "v5p:2x2x1", 4, "v5p-8"),  # v5p counts TensorCores: 8 cores = 4 chips
    ("v5p-128", "v5p:4x4x4", 64, "v5p-128"),
    ("v4-8", "v4:2x2x1", 4, "v4-8"),
    ("v5e-1", "v5e:1x1", 1, "v5e-1"),  # v5e and v6e count chips
    ("v5litepod-16", "v5e:4x4", 16, "v5e-16"),
    ("v6e-8", "v6e:2x4", 8, "v6e-8"),
    ("v5p:2x2x1", "v5p:2x2x1", 4, "v5p-8"),
    ("v5:2x2x2", "v5p:2x2x2", 8, "v5p-16"),
    ("v6e:4x4", "v6e:4x4", 16, "v6e-16"),
])
def test_cloud_and_libtpu_names(name, libtpu_name, chip_count, cloud_name):
    t = topology.parse(name)
    assert (t.libtpu_name, t.chips, t.cloud_name) == (libtpu_name, chip_count, cloud_name)


def test_slice_layouts_follow_the_cloud_machines():
    v5p = topology.parse("v5p-128").describe_kwargs()
    assert v5p["chip_config_name"] == "megacore"  # one JAX device per chip, as JAX runs v5p
    assert v5p["wrap"] == (True, True, True) and v5p["chips_per_host_bounds"] == (2, 2, 1)
    assert topology.parse("v5p-64").describe_kwargs()["wrap"] == (False, False, False)  # 2x4x4: no torus
    assert topology.parse("v5e-1").describe_kwargs()["chips_per_host_bounds"] == (1, 1, 1)
    assert topology.parse("v6e-8").describe_kwargs()["chips_per_host_bounds"] == (2, 4, 1)  # one host
    assert "chip_config_name" not in topology.parse("v6e-4").describe_kwargs()
    assert topology.parse("v5p-8", slices=4).chips == 16


def test_h100_topologies_are_hosts_of_eight():
    assert topology.parse("h100-8").shape == (1, 8) and topology.parse("h100-8").libtpu_name == "1x1x8"
    assert topology.parse("h100-32").shape == (4, 8) and topology.parse("h100-32").platform == "gpu"
    assert topology.parse("h100-2").chips == 2 and topology.parse("v5p-8").platform == "tpu"


@pytest.mark.parametrize("bad", ["v5p-7", "v5p-6", "v7-8", "v5e-2", "v5e:2x2x1", "v4:2x2", "tpu", "v6e-512",
                                 "h100-12", "h100-3", "h100-0"])
def test_unknown_names_list_the_valid_ones(bad):
    with pytest.raises(UserError, match=r"unknown TPU topology .*v5p-8/16/32/64/128.*v6e-1/4/8"):
        topology.parse(bad)


def test_a_missing_libtpu_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "libtpu" else real(n, *a))
    monkeypatch.delenv("TPU_LIBRARY_PATH", raising=False)
    with pytest.raises(UserError, match=rf"needs libtpu.*pip install 'jax\[tpu\]=={jax.__version__}'"):
        topology.compile_only_devices(topology.parse("v5p-8"))


def _planner(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    command = [sys.executable, "-m", "vicuna_jax.train.planner", "--config=configs/tiny.py", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_cli_unknown_topology_is_one_error_line():
    out = _planner("--topology=v5p-9")
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown TPU topology 'v5p-9'"), out.stderr


@pytest.mark.skipif(HAVE_LIBTPU, reason="libtpu is installed here: the missing-libtpu message cannot show")
def test_cli_without_libtpu_is_one_error_line():
    out = _planner("--topology=v5p-8")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert lines[0].startswith("error: compiling for TPU needs libtpu") and "pip install" in lines[0]


@pytest.mark.skipif(not HAVE_LIBTPU, reason="needs libtpu (pip install -e '.[tpu-aot]')")
@pytest.mark.parametrize("name", ["v4-8", "v5e-4", "v5p-8", "v6e-1"])
def test_compile_only_devices_are_one_per_chip_of_the_named_generation(name):
    t = topology.parse(name)
    devices = topology.compile_only_devices(t)
    assert len(devices) == t.chips
    assert {d.device_kind for d in devices} == {t.chip.device_kind}
    assert chips.chip_for_device_kind(devices[0].device_kind) is t.chip


def test_a_missing_cuda_plugin_says_how_to_install_it(monkeypatch):
    from vicuna_jax.hardware import gpu_target

    monkeypatch.setattr(gpu_target, "have_cuda_plugin", lambda: False)
    with pytest.raises(UserError, match=rf"CUDA PJRT plugin.*jax-cuda13-pjrt=={jax.__version__}"):
        topology.compile_only_devices(topology.parse("h100-8"))


def test_h100_description_is_compute_capability_9():
    from vicuna_jax.hardware import gpu_target

    text = gpu_target.target_config_text()
    assert "cuda_compute_capability { major: 9 minor: 0 }" in text and "core_count: 132" in text
    assert 'device_description_str: "NVIDIA H100 80GB HBM3"' in text
