"""Where a jitted step spends its time on the host: one traced call, per-HLO-op durations, source op names.

Why: on CPU the jax profiler records one event per XLA thunk (fusion, dot, copy...). Joining those events
with the compiled HLO's `op_name` metadata says which model code a hot fusion comes from (the LM head, the
attention softmax, the optimizer...) without TensorBoard/xprof, which this project does not depend on.
"""

from __future__ import annotations

import collections
import glob
import re
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax

_OP_LINE = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) .*?metadata=\{op_name=\"([^\"]*)\"")


def hlo_op_names(compiled_text: str) -> dict[str, tuple[str, str]]:
    """HLO instruction name -> (result shape, op_name metadata) from `compiled.as_text()`."""
    out = {}
    for line in compiled_text.splitlines():
        m = _OP_LINE.match(line)
        if m:
            out[m.group(1)] = (m.group(2), m.group(3))
    return out


def profile_call(fn: Callable[[], Any], compiled_text: str = "", top: int = 25) -> dict[str, Any]:
    """Runs `fn` (which must block until its result is ready) once under the jax profiler.

    Returns the wall time and the `top` XLA ops by total duration, each with its share of the summed op time,
    event count, result shape and source op name (when `compiled_text` is given).
    """
    names = hlo_op_names(compiled_text) if compiled_text else {}
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp):
            start = time.perf_counter()
            fn()
            wall = time.perf_counter() - start
        (path,) = glob.glob(f"{tmp}/**/*.xplane.pb", recursive=True)
        data = jax.profiler.ProfileData.from_file(path)
    total: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            if line.name.startswith("python") or "PjRtCpuClient" in line.name:
                continue  # Python frames and the executor's own wait span the whole call
            for event in line.events:
                if event.name.startswith(("ThunkExecutor", "SlinkyThreadPool")):
                    continue
                total[event.name] += event.duration_ns
                count[event.name] += 1
    summed = sum(total.values()) or 1
    ops = []
    for name, ns in total.most_common(top):
        shape, source = names.get(name, ("", ""))
        ops.append({"op": name, "ms": ns / 1e6, "share": ns / summed, "count": count[name], "shape": shape,
                    "source": source})
    return {"wall_s": wall, "op_seconds": summed / 1e9, "ops": ops}


def format_profile(result: dict[str, Any]) -> str:
    lines = [f"wall {result['wall_s']:.3f} s, summed op time {result['op_seconds']:.3f} s"]
    for op in result["ops"]:
        lines.append(f"{op['ms']:9.1f} ms {op['share']:6.1%} x{op['count']:<3d} {op['op'][:28]:28s} "
                     f"{op['shape'][:34]:34s} {op['source'][-70:]}")
    return "\n".join(lines)
