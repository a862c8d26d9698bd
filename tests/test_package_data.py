"""What `pip install .` ships: every bundled asset (sample data, tokenizers with their chat templates, judge
prompts, the chat page) is package data, so a non-editable install runs the tiny configs offline too."""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIRS = ("assets", os.path.join("eval", "prompts"), "serve_static")


def test_build_ships_every_bundled_asset(tmp_path):
    # build_py is the step that copies packages and package_data into the wheel's tree.
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)], cwd=REPO,
                   check=True, capture_output=True)
    package = os.path.join(REPO, "vicuna_jax")
    wanted = {os.path.relpath(os.path.join(root, f), package)
              for d in DATA_DIRS for root, _, files in os.walk(os.path.join(package, d)) for f in files
              if "__pycache__" not in root}
    assert any(w.startswith(os.path.join("assets", "tokenizers", "qwen3")) for w in wanted)
    shipped = {os.path.relpath(os.path.join(root, f), tmp_path / "vicuna_jax")
               for root, _, files in os.walk(tmp_path / "vicuna_jax") for f in files}
    assert sorted(wanted - shipped) == []


def _extras(tmp_path) -> dict[str, set[str]]:
    """The install metadata's extras (egg_info's requires.txt: what pip reads)."""
    subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path)], cwd=REPO,
                   check=True, capture_output=True)
    (info,) = [d for d in os.listdir(tmp_path) if d.endswith(".egg-info")]
    extras: dict[str, set[str]] = {}
    section = None
    for line in open(os.path.join(tmp_path, info, "requires.txt")):
        line = line.strip()
        if line.startswith("["):
            section = extras.setdefault(line.strip("[]"), set())
        elif line and section is not None:
            section.add(line)
    return extras


def test_hf_extra_installs_the_interop_and_test_includes_it(tmp_path):
    # README's quick tour step 3 (transformers loads the export) and the PEFT round trip need these.
    extras = _extras(tmp_path)
    names = {r.split(">")[0].split("=")[0] for r in extras["hf"]}
    assert names == {"transformers", "torch", "peft", "safetensors"}
    assert extras["hf"] <= extras["test"]
