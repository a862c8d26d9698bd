"""What `prepare` prints on an offline, local build: what it is doing, not tfds's "Downloading ..." line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from vicuna_jax.data.tokenizer import bundled_tokenizer_path

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_prepare_says_it_writes_the_dataset_and_never_downloading(tmp_path):
    records = [{"id": f"c{i}", "conversations": [{"from": "human", "value": f"Question number {i}?"},
                                                 {"from": "gpt", "value": f"Answer number {i}."}]}
               for i in range(40)]
    raw = tmp_path / "raw.json"
    raw.write_text(json.dumps(records))
    out = tmp_path / "prepared"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "vicuna_jax.data.prepare", f"--input={raw}",
                           f"--output_dir={out}", f"--tokenizer={bundled_tokenizer_path()}",
                           "--num_workers=1"], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    said = proc.stdout + proc.stderr
    assert "Downloading" not in said and "downloaded and prepared" not in said, said
    assert f"writing the prepared dataset to {out}" in said, said
