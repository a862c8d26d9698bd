"""The trainer's step compiled for 8 H100s by XLA's GPU compiler on this GPU-less host (compile-only devices
from the CUDA PJRT plugin given an H100 description; needs `pip install -e '.[gpu-aot]'`, skipped without
it). cuDNN attention cannot be built without a GPU, so `auto` attention falls back to the Pallas Triton
kernel, which compiles."""

import logging

import pytest
from test_tpu_aot import tiny_config

from vicuna_jax.hardware.gpu_target import have_cuda_plugin
from vicuna_jax.train import planner

pytestmark = pytest.mark.skipif(not have_cuda_plugin(),
                                reason="needs JAX's CUDA PJRT plugin (pip install -e '.[gpu-aot]')")


def test_packed_fsdp_step_compiles_for_eight_h100s_with_the_triton_kernel(caplog):
    with caplog.at_level(logging.WARNING):
        report = planner.plan(tiny_config(**{"mesh.fsdp": 8}), topology="h100-8")
    assert report["platform"] == "gpu" and report["devices"] == 8 and report["mesh"]["fsdp"] == 8
    assert report["device_kind"] == "NVIDIA H100 80GB HBM3"
    assert report["topology"]["mosaic_kernels"] >= 3  # forward, remat forward, backward: Triton custom calls
    assert "cuDNN attention cannot be compiled without a GPU" in caplog.text
    m, s = report["compiled"], report["state"]
    assert m["alias"] == s["params"] + s["opt_state"] + s["step"]  # no TPU tiling: exact, as on CPU
    assert m["argument"] - m["alias"] == s["batch"] and m["temp"] > 0
    assert report["fits"] and report["roofline"] is None
