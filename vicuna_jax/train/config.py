"""Training configuration: the base ConfigDict that `configs/*.py` start from, its validation, and the typed,
frozen `TrainConfig` the rest of the trainer reads.

Every key's meaning is one line of `KEY_HELP` (`python -m vicuna_jax.train --help` lists each key with its
type, default and meaning; a test checks that every key has one). Config files and `--config.key=value`
overrides stay ConfigDicts; at the edge, `load` validates one once (before anything is compiled, raising
`ConfigError` naming the key: `config.mesh.fsdp`, `config.optimizer.learning_rate`, ...) and turns it into a
`TrainConfig`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict

from vicuna_jax.checkpoint import load_model_config
from vicuna_jax.cli import ConfigHelp, UserError, unknown_name
from vicuna_jax.data.template import known_template_names
from vicuna_jax.lora import config as lora_config
from vicuna_jax.lora.config import LoRAConfig
from vicuna_jax.model import config as model_config_lib
from vicuna_jax.model.attention import BACKENDS
from vicuna_jax.model.config import PRESETS, ConfigError, LlamaConfig, get_preset
from vicuna_jax.model.llama import REMAT_POLICIES
from vicuna_jax.parallel import DISTRIBUTED_MODES, mesh_shape
from vicuna_jax.train.optimizer import OptimizerConfig

BUNDLED_DATA = "bundled"
_FIELD_TYPES = {"rope_theta": float, "rope_scaling_factor": float, "rms_norm_eps": float,
                "tie_word_embeddings": bool, "architecture": str, "rope_type": str,
                "rope_low_freq_factor": float, "rope_high_freq_factor": float, "extra_eos_token_ids": tuple}
DTYPES = ("float32", "bfloat16", "float16")


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # Model: a preset name (see vicuna_jax.model.config.PRESETS) with optional field overrides, or the
    # architecture of `init_from_hf` when that is set.
    c.model = "tiny"
    # Any LlamaConfig field, e.g. --config.model_overrides.num_layers=2 (unset fields keep the preset's).
    c.model_overrides = ml_collections.ConfigDict({
        f.name: config_dict.placeholder(_FIELD_TYPES.get(f.name, int))
        for f in dataclasses.fields(LlamaConfig)})
    c.init_from_hf = ""  # HF Llama/Mistral/Qwen2/Qwen3 directory to start from ("" = random init).
    # A vicuna_jax checkpoint (a step directory, or a workdir: its latest) whose weights start a new run at
    # step 0 with a fresh optimizer and data position; its architecture is the run's. Full fine-tuning only.
    c.init_from = ""
    # tokenizer.model, tokenizer.json or a directory with one; "" = <init_from_hf>'s own, else the bundled.
    c.tokenizer = ""

    c.data = ml_collections.ConfigDict()
    c.data.path = BUNDLED_DATA  # raw ShareGPT .json/.jsonl (prepared into workdir/data), or a prepared dir.
    # auto: what this workdir or a prepared data.path records, else the tokenizer's own chat template, else
    # vicuna_v1.1 (`vicuna_jax.data.chat_format`); or vicuna_v1.1 | vicuna_v0 | llama-2 | llama-3 | chatml |
    # mistral | hf (the tokenizer's own Jinja template), which must agree with a record.
    c.data.template = "auto"
    c.data.validation_fraction = 0.02  # held-out share when preparing from raw data.
    c.data.packing = True  # False = FastChat-style one conversation per row, padded.
    c.data.window = 2048  # conversations packed together per shuffled window.

    c.seq_len = 2048
    c.batch_size = 128  # global rows per optimizer step (all hosts, all micro-batches).
    c.grad_accum_steps = 1  # micro-batches per step; the loss is normalised over the whole global batch.
    c.total_steps = -1  # > 0: train this many steps; -1: num_epochs over the training split.
    c.num_epochs = 3.0

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.learning_rate = 2e-5
    c.optimizer.warmup_ratio = 0.03
    c.optimizer.final_lr_ratio = 0.0
    c.optimizer.weight_decay = 0.0
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8
    c.optimizer.grad_clip = 1.0

    c.dtype = "bfloat16"  # compute dtype
    c.param_dtype = "float32"  # parameters and optimizer state
    c.remat_policy = "nothing_saveable"  # see vicuna_jax.model.llama.REMAT_POLICIES; "none" = no remat.
    c.scan_layers = True
    c.attention = "auto"  # auto | xla | cudnn | pallas
    c.loss_chunk_size = 512  # positions per LM-head/softmax chunk (0 = whole sequence at once).

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = 1
    c.mesh.fsdp = -1  # -1 = all remaining devices
    c.mesh.tensor = 1

    c.seed = 0
    c.checkpoint_every = 500  # steps; also saved at the end and on SIGTERM/SIGINT.
    c.keep_checkpoints = 3
    c.log_every = 10
    c.eval_every = 500  # steps (0 = never); also at the end.
    c.eval_batches = 0  # 0 = the whole validation split.
    c.export_hf_at_end = True  # write workdir/hf (transformers-loadable) when training finishes.
    c.export_dtype = "bfloat16"
    c.distributed = "auto"  # auto | on | off: jax.distributed.initialize() for multi-host runs.
    c.peak_flops_per_device = 0.0  # for MFU when the device is not in the built-in table.
    # LoRA / QLoRA (vicuna_jax.lora.config.LoRAConfig): lora.rank > 0 trains adapters on a frozen base.
    c.lora = lora_config.base_config()
    return c


# One line per key of `base_config`: what it means (shown by `--help` beside the key's type and value).
KEY_HELP: dict[str, str] = {
    "model": "model preset (vicuna_jax.model.config.PRESETS, e.g. tiny, llama2_7b, llama3_1_8b, qwen3_8b)",
    **{f"model_overrides.{k}": v for k, v in model_config_lib.FIELD_HELP.items()},  # unset: the preset's
    "init_from_hf": "HF Llama/Mistral/Qwen2/Qwen3 directory to fine-tune (its config.json is the "
                    "architecture); empty = random init",
    "init_from": "a vicuna_jax checkpoint step directory or workdir (its latest step) whose weights start a "
                 "new run at step 0 with a fresh optimizer; not with init_from_hf or LoRA",
    "tokenizer": "tokenizer.model, tokenizer.json or a directory with one; empty = init_from_hf's, else the "
                 "bundled one",
    "data.path": "raw ShareGPT .json/.jsonl (prepared into workdir/data), a prepared directory, or bundled",
    "data.template": f"chat template: {', '.join(known_template_names())} (auto: what the data or workdir "
                     "records, else the tokenizer's own, else vicuna_v1.1)",
    "data.validation_fraction": "held-out share when preparing raw data",
    "data.packing": "pack conversations into full rows (False = FastChat's one padded conversation per row)",
    "data.window": "conversations packed together per shuffled window",
    "seq_len": "tokens per training row",
    "batch_size": "global rows per optimizer step (all hosts, all micro-batches)",
    "grad_accum_steps": "micro-batches per step (the loss is normalised over the whole global batch)",
    "total_steps": "steps to train; -1 = num_epochs over the training split",
    "num_epochs": "epochs to train when total_steps is -1",
    "optimizer.learning_rate": "peak learning rate (AdamW, linear warmup, cosine decay)",
    "optimizer.warmup_ratio": "share of the steps spent warming the learning rate up from 0",
    "optimizer.final_lr_ratio": "learning rate at the last step, as a share of the peak",
    "optimizer.weight_decay": "AdamW decoupled weight decay",
    "optimizer.b1": "AdamW beta1",
    "optimizer.b2": "AdamW beta2",
    "optimizer.eps": "AdamW epsilon",
    "optimizer.grad_clip": "clip the global gradient norm to this (0 = no clipping)",
    "dtype": f"compute dtype: {', '.join(DTYPES)}",
    "param_dtype": f"dtype of the parameters and optimizer state: {', '.join(DTYPES)}",
    "remat_policy": "what the backward pass keeps instead of recomputing: none, full, dots_saveable, ... "
                    "(vicuna_jax.model.llama.REMAT_POLICIES)",
    "scan_layers": "run the decoder layers under lax.scan (faster compiles; False = a Python loop)",
    "attention": f"attention backend: {', '.join(BACKENDS)}",
    "loss_chunk_size": "positions per LM-head + softmax chunk (0 = the whole row at once)",
    "mesh.data": "data-parallel mesh axis size",
    "mesh.fsdp": "FSDP mesh axis size (-1 = all remaining devices)",
    "mesh.tensor": "tensor-parallel mesh axis size",
    "seed": "seed of the parameter init, the train/validation split and the data order",
    "checkpoint_every": "steps between checkpoints (also saved at the end and on SIGTERM/SIGINT)",
    "keep_checkpoints": "checkpoints kept in workdir/checkpoints",
    "log_every": "steps between rows of workdir/metrics.jsonl",
    "eval_every": "steps between validation losses (0 = never; also at the end)",
    "eval_batches": "validation batches per evaluation (0 = the whole validation split)",
    "export_hf_at_end": "write workdir/hf (transformers-loadable) when training finishes",
    "export_dtype": f"dtype of the HF export: {', '.join(DTYPES)}",
    "distributed": f"jax.distributed.initialize() for multi-host runs: {', '.join(DISTRIBUTED_MODES)}",
    "peak_flops_per_device": "peak FLOP/s of one device, for MFU on a device not in the built-in table",
    **{f"lora.{k}": v for k, v in lora_config.KEY_HELP.items()},
}
HELP = ConfigHelp(defaults=lambda: base_config(), meanings=KEY_HELP)


def vicuna_recipe(model: str, seq_len: int, batch_size: int) -> ml_collections.ConfigDict:
    """FastChat's Vicuna hyperparameters: lr 2e-5, 3 epochs, warmup 3%, cosine, no weight decay, clip 1.0,
    AdamW (0.9, 0.999, 1e-8), bf16 compute with fp32 parameters, full remat, vicuna_v1.1 template."""
    c = base_config()
    c.model = model
    c.seq_len = seq_len
    c.batch_size = batch_size
    c.data.template = "vicuna_v1.1"
    c.total_steps = -1
    c.num_epochs = 3.0
    c.optimizer.learning_rate = 2e-5
    c.optimizer.warmup_ratio = 0.03
    c.optimizer.weight_decay = 0.0
    c.optimizer.grad_clip = 1.0
    c.dtype = "bfloat16"
    c.param_dtype = "float32"
    c.remat_policy = "nothing_saveable"
    c.scan_layers = True
    c.attention = "auto"
    c.checkpoint_every = 200
    c.eval_every = 200
    c.export_dtype = "bfloat16"
    return c


def tiny_hf_recipe(model: str, template: str = "hf") -> ml_collections.ConfigDict:
    """A few CPU steps of the Vicuna recipe's shape (packed, masked, FSDP over every device) on a tiny model:
    the `configs/tiny_<family>.py` files. Give `init_from_hf` (a tiny HF model with its tokenizer.json), or a
    tokenizer.json `tokenizer` and a matching `model_overrides.vocab_size` to start from scratch."""
    c = base_config()
    c.model = model
    c.data.path = BUNDLED_DATA
    c.data.template = template
    c.data.validation_fraction = 0.05
    c.seq_len, c.batch_size, c.total_steps = 128, 8, 20
    c.optimizer.learning_rate = 3e-3
    c.optimizer.warmup_ratio = 0.0
    c.dtype, c.remat_policy, c.scan_layers, c.loss_chunk_size = "float32", "none", False, 0
    c.checkpoint_every = c.eval_every = 10
    c.log_every = 1
    c.export_dtype = "float32"
    return c


def _fail(key: str, message: str) -> None:
    raise ConfigError(f"config.{key}: {message}")


def _positive_int(c: ml_collections.ConfigDict, key: str, allow: tuple[int, ...] = ()) -> None:
    value = _get(c, key)
    if not isinstance(value, int) or isinstance(value, bool) or (value <= 0 and value not in allow):
        extra = f" (or {', '.join(map(str, allow))})" if allow else ""
        _fail(key, f"must be a positive integer{extra}, got {value!r}")


def _get(c: ml_collections.ConfigDict, key: str):
    node = c
    for part in key.split("."):
        node = node[part]
    return node


def model_config(c: ml_collections.ConfigDict) -> LlamaConfig:
    """The architecture: from `init_from_hf`'s config.json or `init_from`'s checkpoint, else the preset; plus
    overrides."""
    if c.init_from_hf and c.init_from:
        _fail("init_from", "give init_from (a vicuna_jax checkpoint) or init_from_hf, not both")
    if c.init_from:
        try:
            cfg = load_model_config(c.init_from)
        except UserError as e:
            _fail("init_from", str(e))
        except Exception as e:  # noqa: BLE001 - orbax raises assorted errors for an unreadable item
            _fail("init_from", f"{c.init_from}: unreadable model_config ({type(e).__name__}: {e})")
    elif c.init_from_hf:
        if not os.path.isfile(os.path.join(c.init_from_hf, "config.json")):
            _fail("init_from_hf", f"{c.init_from_hf} has no config.json")
        cfg = LlamaConfig.from_hf_config(c.init_from_hf)
    else:
        if c.model not in PRESETS:
            _fail("model", unknown_name("preset", c.model, sorted(PRESETS)))
        cfg = get_preset(c.model)
    overrides = {k: v for k, v in c.model_overrides.to_dict().items() if v is not None}
    for key, names in (("architecture", list(model_config_lib.HF_CLASSES)),
                       ("rope_type", model_config_lib.ROPE_TYPES)):
        if key in overrides and overrides[key] not in names:
            _fail(f"model_overrides.{key}", unknown_name("value", overrides[key], names))
    if overrides:
        known = set(cfg.to_dict())
        for key in overrides:
            if key not in known:
                _fail(f"model_overrides.{key}", f"not a model field; fields: {sorted(known)}")
        try:
            cfg = cfg.replace(**overrides)
        except ConfigError as e:
            _fail("model_overrides", str(e))
    return cfg


def validate(c: ml_collections.ConfigDict, num_devices: int) -> LlamaConfig:
    """Checks every key that can be checked without compiling; returns the model config."""
    cfg = model_config(c)
    for key in ("seq_len", "batch_size", "grad_accum_steps", "checkpoint_every", "keep_checkpoints",
                "log_every"):
        _positive_int(c, key)
    _positive_int(c, "total_steps", allow=(-1,))
    if c.total_steps == -1 and not c.num_epochs > 0:
        _fail("num_epochs", f"must be > 0 when total_steps is -1, got {c.num_epochs!r}")
    if c.seq_len > cfg.max_position_embeddings:
        _fail("seq_len", f"{c.seq_len} exceeds the model's max_position_embeddings "
                         f"({cfg.max_position_embeddings})")
    if c.eval_every < 0:
        _fail("eval_every", f"must be >= 0, got {c.eval_every}")
    for key in ("dtype", "param_dtype", "export_dtype"):
        if _get(c, key) not in DTYPES:
            _fail(key, unknown_name("dtype", _get(c, key), DTYPES))
    if c.remat_policy not in REMAT_POLICIES:
        _fail("remat_policy", unknown_name("policy", c.remat_policy, REMAT_POLICIES))
    if c.attention not in BACKENDS:
        _fail("attention", unknown_name("backend", c.attention, BACKENDS))
    if c.data.template not in known_template_names():
        _fail("data.template", unknown_name("chat template", c.data.template, known_template_names()))
    if c.loss_chunk_size < 0:
        _fail("loss_chunk_size", f"must be >= 0, got {c.loss_chunk_size}")
    if c.distributed not in DISTRIBUTED_MODES:
        _fail("distributed", unknown_name("value", c.distributed, DISTRIBUTED_MODES))

    opt = c.optimizer
    if not opt.learning_rate > 0:
        _fail("optimizer.learning_rate", f"must be > 0, got {opt.learning_rate}")
    if not 0 <= opt.warmup_ratio < 1:
        _fail("optimizer.warmup_ratio", f"must be in [0, 1), got {opt.warmup_ratio}")
    for key in ("b1", "b2"):
        if not 0 <= opt[key] < 1:
            _fail(f"optimizer.{key}", f"must be in [0, 1), got {opt[key]}")
    for key in ("eps", "weight_decay", "grad_clip", "final_lr_ratio"):
        if opt[key] < 0:
            _fail(f"optimizer.{key}", f"must be >= 0, got {opt[key]}")

    try:
        data, fsdp, tensor = mesh_shape(c.mesh.data, c.mesh.fsdp, c.mesh.tensor, num_devices)
    except ValueError as e:
        raise ConfigError(f"config.{e}") from None
    batch_shards = data * fsdp
    if c.batch_size % c.grad_accum_steps:
        _fail("grad_accum_steps", f"{c.grad_accum_steps} does not divide batch_size {c.batch_size}")
    if (c.batch_size // c.grad_accum_steps) % batch_shards:
        _fail("batch_size", f"each micro-batch ({c.batch_size // c.grad_accum_steps} rows) must divide "
                            f"evenly over mesh.data*mesh.fsdp = {batch_shards} devices")
    if cfg.num_heads % tensor or cfg.num_kv_heads % tensor:
        _fail("mesh.tensor", f"{tensor} must divide num_heads ({cfg.num_heads}) and num_kv_heads "
                             f"({cfg.num_kv_heads})")
    if c.data.path != BUNDLED_DATA and not os.path.exists(c.data.path):
        _fail("data.path", f"{c.data.path} does not exist")
    if c.tokenizer and not os.path.exists(c.tokenizer):
        _fail("tokenizer", f"{c.tokenizer} does not exist")
    if lora_config.load(c.lora, cfg).enabled and c.init_from:
        _fail("init_from", "is for full fine-tuning; a LoRA run starts from init_from_hf (and "
                           "lora.init_adapter)")
    return cfg


# ------------------------------------------------------------------ the typed, validated config


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How the model computes: dtypes, scan over layers, remat policy, attention backend."""

    dtype: str = "bfloat16"  # compute
    param_dtype: str = "float32"  # parameters and optimizer state
    scan_layers: bool = True
    remat_policy: str = "nothing_saveable"
    attention: str = "auto"

    def model_options(self) -> dict[str, Any]:
        """Keyword arguments of `vicuna_jax.model.llama.Llama`."""
        return dict(dtype=jnp.dtype(self.dtype), param_dtype=jnp.dtype(self.param_dtype),
                    scan_layers=self.scan_layers, remat_policy=self.remat_policy,
                    attention_impl=self.attention)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    path: str = BUNDLED_DATA
    template: str = "auto"
    validation_fraction: float = 0.02
    packing: bool = True
    window: int = 2048


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int = 1
    fsdp: int = -1
    tensor: int = 1


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A validated training config (field meanings: `base_config`)."""

    model: LlamaConfig
    run: RunOptions = RunOptions()
    optimizer: OptimizerConfig = OptimizerConfig()
    data: DataConfig = DataConfig()
    mesh: MeshConfig = MeshConfig()
    lora: LoRAConfig = LoRAConfig()
    init_from_hf: str = ""
    init_from: str = ""
    tokenizer: str = ""
    seq_len: int = 2048
    batch_size: int = 128
    grad_accum_steps: int = 1
    total_steps: int = -1
    num_epochs: float = 3.0
    loss_chunk_size: int = 512
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 10
    eval_every: int = 500
    eval_batches: int = 0
    export_hf_at_end: bool = True
    export_dtype: str = "bfloat16"
    distributed: str = "auto"
    peak_flops_per_device: float = 0.0
    source: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)  # the ConfigDict given


def load(c: ml_collections.ConfigDict, num_devices: int) -> TrainConfig:
    """Validates `c` (see `validate`) and returns it as a frozen `TrainConfig`."""
    model = validate(c, num_devices)
    plain = c.to_dict()
    sub = {"run": RunOptions, "optimizer": OptimizerConfig, "data": DataConfig, "mesh": MeshConfig}
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"model", "source", "lora", *sub}
    values: dict[str, Any] = {k: plain[k] for k in fields}
    values["run"] = RunOptions(**{f.name: plain[f.name] for f in dataclasses.fields(RunOptions)})
    for name in ("optimizer", "data", "mesh"):
        values[name] = sub[name](**plain[name])
    return TrainConfig(model=model, lora=lora_config.load(c.lora, model), source=plain, **values)
