"""The README's TPU table: every shipped config compiled for TPU slices by the real TPU compiler on this host
(no TPU; libtpu installed; the H100 rows need the gpu-aot extra), one planner process per row, run one
after another (7B compiles are heavy).

    python scripts/tpu_aot_table.py [--out=/tmp/tpu_aot] [--only=vicuna_7b,llama3_8b]

Prints a markdown table (per-device GiB: arguments / temporaries / total, fits, compile seconds, and the
roofline estimate when the planner gives one) with the date, versions and machine it was measured on.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys

# (config, topology, extra planner flags): each shipped config on a slice where it fits, plus a few rows that
# show the compiler refusing a slice that is too small, and Mistral's window in use (rows longer than it).
ROWS: list[tuple[str, str, tuple[str, ...]]] = [
    ("vicuna_7b", "v5p-8", ()),
    ("vicuna_7b", "v5e-4", ()),
    ("vicuna_13b", "v5p-8", ()),
    ("vicuna_v15_7b", "v5p-8", ()),
    ("vicuna_7b_lora", "v5e-4", ()),
    ("vicuna_7b_qlora", "v5e-1", ()),
    ("vicuna_7b_qlora", "v5e-1", ("--config.grad_accum_steps=16",)),
    ("vicuna_7b_qlora", "v5e-4", ()),
    ("llama3_8b", "v5p-8", ()),
    ("llama3_8b", "v6e-8", ()),
    ("qwen3_8b", "v5p-8", ()),
    ("mistral_7b", "v5p-8", ()),
    ("mistral_7b", "v5p-8", ("--config.seq_len=8192", "--config.batch_size=16")),
    # H100s without a GPU (needs the gpu-aot extra): attention compiles as the Pallas Triton kernel.
    ("vicuna_7b", "h100-8", ()),
    ("llama3_8b", "h100-8", ()),
]

GIB = 2**30
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_row(config: str, topo: str, extra: tuple[str, ...], out_dir: str) -> dict:
    tag = f"{config}_{topo}" + ("_" + "_".join(a.split("=")[-1] for a in extra) if extra else "")
    path = os.path.join(out_dir, f"{tag}.json")
    command = [sys.executable, "-m", "vicuna_jax.train.planner", f"--config=configs/{config}.py",
               f"--topology={topo}", f"--json={path}", *extra]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    with open(os.path.join(out_dir, f"{tag}.log"), "w") as f:
        f.write(done.stdout + done.stderr)
    if done.returncode != 0:
        return {"config": config, "topology": topo, "extra": extra, "error": done.stderr.strip()[-300:]}
    with open(path) as f:
        return {"config": config, "topology": topo, "extra": extra, "report": json.load(f)}


def _row(r: dict) -> str:
    name = r["config"] + (" " + " ".join(r["extra"]) if r["extra"] else "")
    if "error" in r:
        return f"| {name} | {r['topology']} | error: {r['error']} |||||||"
    p = r["report"]
    m, t = p["compiled"], p["topology"]
    shape = f"{p['batch_size']}x{p['seq_len']}" + (f" (accum {p['grad_accum_steps']})"
                                                   if p["grad_accum_steps"] > 1 else "")
    if m is None:
        memory = "refused | - | -"
        fits = "no: " + p["compiler_out_of_memory"].split("RESOURCE_EXHAUSTED: ")[-1][:110]
    else:
        memory = f"{m['argument'] / GIB:.2f} | {m['temp'] / GIB:.2f} | {m['total'] / GIB:.2f}"
        fits = "yes" if p["fits"] else "no"
    roof = p.get("roofline") or {}
    estimate = (f"{roof['step_seconds']:.2f} s, {roof['mfu']:.0%}, {roof['tokens_per_s_per_chip']:,.0f}"
                if roof.get("step_seconds") else "")
    slice_ = f"{t['cloud_name']} ({t['chips']} x {t['usable_hbm_gib']:g} GiB)"
    return f"| {name} | {slice_} | {shape} | {memory} | {fits} | {p['compile_seconds']:.0f} | {estimate} |"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/tpu_aot")
    parser.add_argument("--only", default="", help="comma list of config names or config@topology")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    only = {n for n in args.only.split(",") if n}
    results = [run_row(c, t, e, args.out) for c, t, e in ROWS if not only or c in only or f"{c}@{t}" in only]
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor())
    versions = ", ".join(f"{name} {_version(name)}" for name in ("jax", "libtpu", "jax-cuda13-pjrt"))
    print(f"Measured {datetime.date.today().isoformat()}: {versions}, on {os.cpu_count()} cores of {cpu} "
          "(no TPU, no GPU), one row at a time.\n")
    print("| config | TPU slice (chips x usable HBM) | batch x seq | arguments GiB | temporaries GiB | "
          "total GiB | fits | compile s | roofline ESTIMATE: step, MFU, tokens/s/chip |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(_row(r))


if __name__ == "__main__":
    main()
