"""One benchmark side in its own process: `python -m vicuna_jax.bench.worker` (started by `bench.train`).

Why a process per side: each framework gets its own threads, its own XLA_FLAGS (read once, at backend start)
and its own peak-memory counter, while the parent alternates steps between them so that load from other
programs on a shared machine hits both sides alike.

Protocol: one JSON object per line. The parent writes `{"cmd": "setup", "spec": {...}}`, then
`{"cmd": "step"}` (any number), `{"cmd": "reset_peak"}`, `{"cmd": "stats"}`, `{"cmd": "quit"}`; the worker
answers each with one JSON line on its original stdout (library output is redirected to stderr).

Memory is read from /proc/self/status: VmRSS (resident now) and VmHWM (peak resident). Writing "5" to
/proc/self/clear_refs resets VmHWM, so `reset_peak` after warm-up makes the next `stats` report the peak of
the timed steps alone (the steady state of training), separately from the peak including compilation.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any

import numpy as np


def memory() -> dict[str, float]:
    """Resident and peak-resident memory of this process in MiB (Linux /proc)."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0]) / 1024
    except OSError:
        import resource

        out["VmHWM"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def release_free_heap() -> None:
    """glibc keeps freed heap (from compilation, setup) resident; hand it back so RSS shows live data."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def load_batch(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


class JaxSide:
    """vicuna_jax's real training step (built by `vicuna_jax.train.setup.build`), on one CPU device;
    `spec["lora"]` (LoRAConfig fields) trains LoRA adapters on the same (random, seeded) base instead."""

    def __init__(self, spec: dict[str, Any]):
        import jax

        from vicuna_jax import parallel
        from vicuna_jax.data.pack import BATCH_KEYS
        from vicuna_jax.lora.base import random_base
        from vicuna_jax.lora.config import LoRAConfig
        from vicuna_jax.model.config import LlamaConfig
        from vicuna_jax.train.config import RunOptions, TrainConfig
        from vicuna_jax.train.optimizer import OptimizerConfig
        from vicuna_jax.train.setup import build

        self.jax = jax
        self.compiles = 0
        lora = dict(spec.get("lora") or {})
        if "target_modules" in lora:
            lora["target_modules"] = tuple(lora["target_modules"])
        jax.monitoring.register_event_duration_secs_listener(self._on_event)
        cfg = TrainConfig(
            model=LlamaConfig(**spec["model"]), optimizer=OptimizerConfig(**spec["optimizer"]),
            run=RunOptions(dtype=spec["dtype"], param_dtype="float32", scan_layers=spec["scan"],
                           remat_policy=spec["remat"], attention=spec.get("attention", "xla")),
            grad_accum_steps=spec.get("grad_accum_steps", 1), loss_chunk_size=spec["loss_chunk"],
            seed=spec["seed"], lora=LoRAConfig(**lora))
        mesh = parallel.make_mesh(1, 1, 1, devices=jax.devices()[:1])
        setup = build(cfg, mesh, spec["total_steps"])
        # The state is placed with the shardings the step declares, as the trainer places it: an input whose
        # sharding differs from the step's output (e.g. an uncommitted array) would compile the step twice.
        base = random_base(cfg) if cfg.lora.enabled else None  # the full side's initial weights
        self.state = setup.init_state(base)
        params = base if base is not None else self.state.params
        if spec.get("export_weights"):
            export_torch_weights(params, cfg.model, spec["export_weights"])
        self.step_fn, self.batch_sh = setup.train_step, setup.batch_sharding
        paths = spec["batch"] if isinstance(spec["batch"], list) else [spec["batch"]]
        self.batches = [{k: v for k, v in load_batch(p).items() if k in BATCH_KEYS} for p in paths]
        self.mesh = mesh
        self.info = {"num_params": int(sum(x.size for x in jax.tree.leaves(params))),
                     "trainable_params": int(sum(x.size for x in jax.tree.leaves(self.state.params))),
                     "jax": jax.__version__, "device": jax.devices()[0].device_kind,
                     "xla_flags": os.environ.get("XLA_FLAGS", "")}

    def _on_event(self, name: str, _secs: float, **_: Any) -> None:
        if name == "/jax/core/compile/backend_compile_duration":
            self.compiles += 1

    def step(self, index: int = 0) -> dict[str, Any]:
        jax = self.jax
        compiles = self.compiles
        cpu, start = time.process_time(), time.perf_counter()
        with jax.set_mesh(self.mesh):
            # The host-to-device copy the trainer makes every step.
            batch = jax.device_put(self.batches[index], self.batch_sh)
            self.state, metrics = self.step_fn(self.state, batch)
            loss = float(metrics.loss)
            jax.block_until_ready(self.state)
        return {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu,
                "loss": loss, "compiles": self.compiles - compiles}

    def stats(self) -> dict[str, Any]:
        """Compilations so far, and XLA's own account of the step's device buffers (state, batch, temps)."""
        jax = self.jax
        out = {"compiles_total": self.compiles, "step_cache_size": self.step_fn._cache_size()}
        with jax.set_mesh(self.mesh):
            batch = jax.device_put(self.batches[0], self.batch_sh)
            m = self.step_fn.lower(self.state, batch).compile().memory_analysis()
        return {**out, "xla_argument_mib": m.argument_size_in_bytes / 2**20,
                "xla_temp_mib": m.temp_size_in_bytes / 2**20}

    def profile(self, top: int = 25) -> dict[str, Any]:
        from vicuna_jax.bench.profile import profile_call

        jax = self.jax
        with jax.set_mesh(self.mesh):
            batch = jax.device_put(self.batches[0], self.batch_sh)
            text = self.step_fn.lower(self.state, batch).compile().as_text()

            def call() -> None:
                self.state, _ = self.step_fn(self.state, batch)
                jax.block_until_ready(self.state)

            return profile_call(call, text, top)


def export_torch_weights(params: dict[str, Any], cfg: Any, directory: str) -> None:
    """Our parameters as HF-named, HF-shaped .npy files, so the torch side starts from the same weights."""
    from vicuna_jax.convert import hf_names

    os.makedirs(directory, exist_ok=True)
    for name, (path, layer, transpose) in hf_names(cfg).items():
        node: Any = params if layer is None else params["layers"]
        for part in path:
            node = node[part]
        arr = np.asarray(node if layer is None else node[layer], np.float32)
        np.save(os.path.join(directory, name + ".npy"), np.ascontiguousarray(arr.T if transpose else arr))


class TorchSide:
    """Hugging Face LlamaForCausalLM + torch AdamW, the way FastChat trains (eager), with torch's best CPU
    settings: intra-op threads = cores, SDPA attention, fused AdamW, and HF's packed-sequence path
    (position_ids restart at 0 per conversation, so attention stays inside each conversation)."""

    def __init__(self, spec: dict[str, Any]):
        import torch
        from transformers import LlamaConfig as HFConfig
        from transformers import LlamaForCausalLM

        from vicuna_jax.model.config import LlamaConfig

        self.torch = torch
        torch.set_num_threads(spec["threads"])
        cfg = LlamaConfig(**spec["model"])
        hf = cfg.to_hf_config(spec["dtype"])
        hf = HFConfig(**{k: v for k, v in hf.items() if k not in ("architectures", "torch_dtype", "dtype")},
                      attn_implementation=spec["attention"])
        torch.manual_seed(0)
        model = LlamaForCausalLM(hf).to(getattr(torch, spec["dtype"]))
        with torch.no_grad():  # our initial weights, one tensor at a time (no second copy of the model)
            for name, tensor in model.state_dict().items():
                tensor.copy_(torch.from_numpy(np.load(os.path.join(spec["weights"], name + ".npy"))))
        if spec.get("lora"):  # PEFT's LoRA on the same base (FastChat's train_lora.py)
            from peft import LoraConfig, get_peft_model

            lora = spec["lora"]
            model = get_peft_model(model, LoraConfig(
                r=lora["rank"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                target_modules=list(lora["target_modules"]), task_type="CAUSAL_LM"))
        self.model = model.train()
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        o = spec["optimizer"]
        self.opt = torch.optim.AdamW(self.trainable, lr=o["learning_rate"], betas=(o["b1"], o["b2"]),
                                     eps=o["eps"], weight_decay=o["weight_decay"], fused=spec["fused_adamw"])
        self.grad_clip = o["grad_clip"]
        b = load_batch(spec["batch"])
        self.input_ids = torch.from_numpy(b["input_tokens"].astype(np.int64))
        self.position_ids = torch.from_numpy(b["positions"].astype(np.int64))
        # HF's loss convention: targets outside the mask are ignore_index; sum, then / number of targets.
        labels = np.where(b["loss_mask"] > 0, b["target_tokens"], -100).astype(np.int64)
        self.labels = torch.from_numpy(labels)
        self.num_targets = float((labels != -100).sum())
        if spec.get("compile"):
            self.model = torch.compile(self.model)
        import transformers

        num_params = int(sum(p.numel() for p in model.parameters()))
        self.info = {"num_params": num_params, "torch": torch.__version__,
                     "trainable_params": int(sum(p.numel() for p in self.trainable)),
                     "transformers": transformers.__version__, "threads": torch.get_num_threads(),
                     "attention": spec["attention"]}

    def step(self) -> dict[str, Any]:
        torch = self.torch
        cpu, start = time.process_time(), time.perf_counter()
        logits = self.model(input_ids=self.input_ids, position_ids=self.position_ids, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), self.labels.flatten(),
                                                 ignore_index=-100, reduction="sum") / self.num_targets
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        value = float(loss.detach())
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "cpu_seconds": time.process_time() - cpu, "loss": value}

    def stats(self) -> dict[str, Any]:
        return {}


def main() -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the protocol
    side = None
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            cmd = msg["cmd"]
            if cmd == "setup":
                spec = msg["spec"]
                side = JaxSide(spec) if spec["side"] == "jax" else TorchSide(spec)
                reply: dict[str, Any] = {**side.info, **memory()}
            elif cmd == "step":
                reply = side.step(msg["index"]) if "index" in msg else side.step()
            elif cmd == "reset_peak":
                before = memory()  # the peak so far (setup, compilation, warm-up), then reset it
                release_free_heap()
                reply = {**before, "reset": reset_peak(), "rss_after_trim": memory().get("VmRSS")}
            elif cmd == "profile":
                reply = side.profile(msg.get("top", 25))
            elif cmd == "stats":
                reply = {**memory(), **side.stats()}  # memory first: stats() compiles
            elif cmd == "quit":
                proto.write(json.dumps({"ok": True}) + "\n")
                return
            else:
                raise ValueError(f"unknown command {cmd!r}")
        except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it
            reply = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        proto.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()
