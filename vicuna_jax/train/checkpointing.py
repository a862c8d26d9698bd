"""Training checkpoints: an orbax CheckpointManager over `workdir/checkpoints/<step>/`.

Each step directory holds the items of a model checkpoint (`params`, `model_config`; see
`vicuna_jax.checkpoint`), so any step loads as a model, plus `opt_state`, `train_state` (the step counter)
and `data_state` (the loader's position), which make resuming exact.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from vicuna_jax.checkpoint import (
    CONFIG_ITEM,
    DATA_ITEM,
    OPT_ITEM,
    PARAMS_ITEM,
    TRAIN_ITEM,
    CheckpointError,
    _checkpointer,
    check_shapes,
    item_handlers,
    load_params,
    resolve_checkpoint_dir,
)
from vicuna_jax.cli import UserError
from vicuna_jax.fileio import atomic_write_json, atomic_write_text
from vicuna_jax.model.config import LlamaConfig
from vicuna_jax.train.step import TrainState

CHECKSUMS_FILE = "checksums.json"  # in each step directory: {relative path: [bytes, crc32]}
DAMAGED_DIR = "checkpoints-damaged"  # beside checkpoints/: steps that failed verification, kept for a look
# beside checkpoints/: {"sealed": [steps]}, the steps whose checksums.json was written. A step listed here
# without its checksums.json lost its seal (damage); one not listed was saved by a run killed between the end
# of the save and the sealing, or by an older version, and is judged by whether it restores.
SEALS_FILE = "checkpoint_seals.json"


class CheckpointSaveError(UserError):
    """A checkpoint could not be written (disk full, read-only, gone): the run stops rather than train on
    without being able to save. orbax's save threads wait forever after such a failure, so the CLI exits
    without joining them."""

    exit_now = True


class NoIntactCheckpointError(UserError):
    """Every checkpoint of the run failed verification."""


class CheckpointMismatchError(UserError):
    """An intact checkpoint does not fit this run's model or optimizer: refused, left where it is."""


def file_checksums(step_dir: str) -> dict[str, list[int]]:
    """Size and CRC-32 of every file under `step_dir` (except the checksum file itself)."""
    out: dict[str, list[int]] = {}
    for root, _, files in os.walk(step_dir):
        for name in sorted(files):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, step_dir)
            if rel == CHECKSUMS_FILE:
                continue
            crc, size = 0, 0
            with open(path, "rb") as f:
                while chunk := f.read(1 << 22):
                    crc, size = zlib.crc32(chunk, crc), size + len(chunk)
            out[rel] = [size, crc]
    return out


def verify_step_dir(step_dir: str, sealed: bool = False) -> str | None:
    """None when `step_dir` matches its checksums, else what is wrong (the first problem found). `sealed`:
    the step is known to have been sealed (`SEALS_FILE`), so a missing checksum file is damage too."""
    path = os.path.join(step_dir, CHECKSUMS_FILE)
    try:
        with open(path) as f:
            expected = json.load(f)
    except FileNotFoundError:
        if sealed:
            return (f"{CHECKSUMS_FILE} is missing, but the checkpoint was sealed after its save (see "
                    f"{SEALS_FILE}): its bytes can no longer be checked")
        return None  # sealed only after the save completed: a kill in between leaves none (restore decides)
    except (OSError, json.JSONDecodeError) as e:
        return f"{CHECKSUMS_FILE} is unreadable ({e})"
    if not isinstance(expected, dict):
        return f"{CHECKSUMS_FILE} is not a checksum table"
    actual = file_checksums(step_dir)
    for rel, entry in expected.items():
        if not (isinstance(entry, list) and len(entry) == 2):
            return f"{CHECKSUMS_FILE} is not a checksum table (entry {rel!r})"
        size, crc = entry
        if rel not in actual:
            return f"{rel} is missing"
        if actual[rel][0] != size:
            return f"{rel} has {actual[rel][0]} bytes, {size} were written"
        if actual[rel][1] != crc:
            return f"{rel} does not match its checksum (the bytes changed after the save)"
    return None


class TrainCheckpoints:
    """orbax CheckpointManager over `workdir/checkpoints/<step>/`, saving asynchronously.

    A step directory appears under its final name only once every item is written (orbax writes to a
    temporary directory and renames it), so a kill at any moment leaves the previous step as the latest
    complete one; temporary leftovers are cleaned up on the next start. Once a save has completed, process
    0 seals it with a checksum file; `restore_latest` verifies the newest checkpoint against it and falls
    back to the newest intact one, moving damaged ones aside (to `checkpoints-damaged/`) with a warning
    that says why. A save that fails stops the run (`CheckpointSaveError`) instead of training on.
    """

    def __init__(self, directory: str, keep: int, async_save: bool = True,
                 records: dict[str, Any] | None = None):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True,
                                               enable_async_checkpointing=async_save)
        self.directory = directory
        self.manager = ocp.CheckpointManager(directory, options=options, item_handlers=item_handlers())
        self.failed: BaseException | None = None
        self._unsealed: list[int] = []
        self.skipped: dict[int, str] = {}  # steps moved aside at restore, with the reason
        self.records = dict(records or {})  # JSON items written with every step (LoRA: `lora`)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    # ------------------------------------------------------------ saving

    def save(self, step: int, state: TrainState, data_state: dict[str, Any], cfg: LlamaConfig,
             force: bool = True) -> bool:
        self.check()
        try:
            saved = self.manager.save(step, force=force, args=ocp.args.Composite(**{
                PARAMS_ITEM: ocp.args.StandardSave(state.params),
                OPT_ITEM: ocp.args.StandardSave(state.opt_state),
                TRAIN_ITEM: ocp.args.StandardSave({"step": state.step}),
                DATA_ITEM: ocp.args.JsonSave(data_state),
                CONFIG_ITEM: ocp.args.JsonSave(cfg.to_dict()),
                **{name: ocp.args.JsonSave(value) for name, value in self.records.items()},
            }))
        except Exception as e:  # noqa: BLE001 - any failure to write is the same failure for the run
            # orbax reports an asynchronous save's failure when the next save waits for it.
            raise self._save_failed(self._unsealed[-1] if self._unsealed else step, e) from e
        if saved:
            self._unsealed.append(step)
        return saved

    def check(self) -> None:
        """Raises `CheckpointSaveError` if an asynchronous save has failed since the last call; seals a save
        that has finished. Cheap: called after every step."""
        if self.failed is not None:
            raise self._save_failed(None, self.failed)
        try:
            self.manager.check_for_errors()
            if self._unsealed and not self.manager.is_saving_in_progress():
                self._seal_finished()
        except Exception as e:  # noqa: BLE001
            raise self._save_failed(self._unsealed[-1] if self._unsealed else None, e) from e

    def wait(self) -> None:
        """Waits for the save in flight; raises `CheckpointSaveError` if it failed."""
        if self.failed is not None:
            return
        try:
            self.manager.wait_until_finished()
            self._seal_finished()
        except Exception as e:  # noqa: BLE001
            raise self._save_failed(None, e) from e

    def close(self) -> None:
        if self.failed is None:
            self.manager.close()

    def _save_failed(self, step: int | None, error: BaseException) -> CheckpointSaveError:
        self.failed = self.failed or error
        cause = error
        while cause.__cause__ is not None or cause.__context__ is not None:  # the OS error at the bottom
            cause = cause.__cause__ or cause.__context__
        which = f"step {step}" if step is not None else "a checkpoint"
        return CheckpointSaveError(
            f"could not save {which} to {self.directory}: {type(cause).__name__}: {cause}. The run stopped "
            f"rather than train on without checkpoints; the last complete checkpoint is step "
            f"{self._last_complete()}. Free the disk or fix its permissions, then rerun to resume.")

    def _last_complete(self) -> int | None:
        steps = [int(n) for n in os.listdir(self.directory) if n.isdigit()] if os.path.isdir(
            self.directory) else []
        return max(steps, default=None)

    def _seal_finished(self) -> None:
        """Writes the checksum file of every completed, not yet sealed save (process 0)."""
        done = [s for s in self._unsealed if os.path.isdir(self.step_dir(s))]
        self._unsealed = [s for s in self._unsealed if s not in done]
        if jax.process_index() != 0:
            return
        for step in done:
            atomic_write_json(os.path.join(self.step_dir(step), CHECKSUMS_FILE),
                              file_checksums(self.step_dir(step)))
        if done:
            self._write_seals(self._read_seals() | set(done))

    def _seals_path(self) -> str:
        return os.path.join(os.path.dirname(os.path.abspath(self.directory)), SEALS_FILE)

    def _read_seals(self) -> set[int]:
        try:
            with open(self._seals_path()) as f:
                steps = json.load(f).get("sealed", [])
            return {int(s) for s in steps}
        except FileNotFoundError:
            return set()
        except (OSError, ValueError, TypeError, AttributeError):
            return set()  # unreadable: every unsealed checkpoint is then judged by whether it restores

    def _write_seals(self, steps: set[int]) -> None:
        """Keeps the steps that still exist (orbax deletes old ones)."""
        present = {s for s in steps if os.path.isdir(self.step_dir(s))}
        atomic_write_json(self._seals_path(), {"sealed": sorted(present)})

    # ------------------------------------------------------------ restoring

    def restore(self, step: int, abstract_state: TrainState) -> tuple[TrainState, dict[str, Any]]:
        """(state, data_state) of `step`, placed per `abstract_state`'s shardings."""
        restored = self.manager.restore(step, args=ocp.args.Composite(**{
            PARAMS_ITEM: ocp.args.StandardRestore(abstract_state.params),
            OPT_ITEM: ocp.args.StandardRestore(abstract_state.opt_state),
            TRAIN_ITEM: ocp.args.StandardRestore({"step": abstract_state.step}),
            DATA_ITEM: ocp.args.JsonRestore(),
        }))
        state = TrainState(params=restored[PARAMS_ITEM], opt_state=restored[OPT_ITEM],
                           step=restored[TRAIN_ITEM]["step"])
        return state, restored[DATA_ITEM]

    def restore_latest(self, abstract_state: TrainState) -> tuple[int, TrainState, dict[str, Any]] | None:
        """The newest checkpoint that verifies and restores: (step, state, data_state), or None when there
        are no checkpoints. Damaged ones (their bytes fail their seal, or an unsealed one does not restore)
        are moved aside with a warning naming the step and the reason. An intact checkpoint that does not
        fit this run (other shapes or optimizer) is a `CheckpointMismatchError`, and nothing is moved."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        damaged = self._damaged_dir()
        if not steps and os.path.isdir(damaged) and os.listdir(damaged):
            raise NoIntactCheckpointError(
                f"every checkpoint of this run was moved to {damaged} as damaged (see DAMAGED.txt in each); "
                "restore a copy into checkpoints/, or move that directory away to start again from step 0, "
                "or use a new workdir")
        sealed = self._read_seals() if jax.process_index() == 0 else set()
        for step in steps:
            has_seal = step in sealed or os.path.isfile(os.path.join(self.step_dir(step), CHECKSUMS_FILE))
            is_main = jax.process_index() == 0
            reason = verify_step_dir(self.step_dir(step), step in sealed) if is_main else None
            reason = _agree_on(reason)
            if reason is None:
                self._check_fits(step, abstract_state)
                try:
                    state, data_state = self.restore(step, abstract_state)
                    _check_data_state(data_state)
                    return step, state, data_state
                except Exception as e:  # noqa: BLE001 - any unreadable item means: not this checkpoint
                    if _agree_on("sealed" if has_seal else None) is not None:
                        raise CheckpointMismatchError(self._mismatch(step, f"{type(e).__name__}: "
                                                                           f"{_first_line(e)}")) from None
                    reason = f"it does not restore: {type(e).__name__}: {_first_line(e)}"
            self._move_aside(step, reason)
        if steps:
            raise NoIntactCheckpointError(
                f"none of the checkpoints in {self.directory} is intact (steps "
                f"{', '.join(map(str, steps))}; see the warnings above); they were moved to "
                f"{self._damaged_dir()}. Restore a copy, or start afresh in a new workdir.")
        return None

    def _check_fits(self, step: int, abstract_state: TrainState) -> None:
        """Compares the stored parameter shapes with the run's before restoring (orbax's own failure would
        look like damage)."""
        try:
            check_shapes(self.step_dir(step), _checkpointer(), abstract_state.params)
        except CheckpointError as e:
            raise CheckpointMismatchError(self._mismatch(step, str(e))) from None
        except Exception:  # noqa: BLE001 - unreadable metadata: the restore below decides
            pass

    def _mismatch(self, step: int, why: str) -> str:
        return (f"checkpoint step {step} in {self.directory} does not fit this run ({why}); its files are "
                "intact and were left in place. It was saved with other settings: rerun with them to resume, "
                "or start a new run in a new workdir (config.init_from can start it from this checkpoint)")

    def _damaged_dir(self) -> str:
        return os.path.join(os.path.dirname(os.path.abspath(self.directory)), DAMAGED_DIR)

    def _move_aside(self, step: int, reason: str) -> None:
        logging.warning("checkpoint step %d in %s is damaged and was skipped: %s", step, self.directory,
                        reason)
        self.skipped[step] = reason
        if jax.process_index() == 0:
            self._write_seals(self._read_seals() - {step})
            os.makedirs(self._damaged_dir(), exist_ok=True)
            target = os.path.join(self._damaged_dir(), str(step))
            n = 1
            while os.path.exists(target):
                target, n = os.path.join(self._damaged_dir(), f"{step}.{n}"), n + 1
            shutil.move(self.step_dir(step), target)
            atomic_write_text(os.path.join(target, "DAMAGED.txt"), reason + "\n")
        from vicuna_jax.parallel import sync_processes

        sync_processes(f"checkpoint_skip_{step}")
        self.manager.reload()


def init_from_checkpoint(path: str, abstract_params: Any) -> Any:
    """The parameters of the checkpoint `path` (a step directory, or a workdir: its latest), placed per
    `abstract_params`, for `config.init_from`. Its seal is checked first; a damaged, LoRA or misfitting
    checkpoint is one error naming config.init_from."""
    try:
        step_dir = resolve_checkpoint_dir(path)
        damage = verify_step_dir(step_dir)
        if damage is not None:
            raise CheckpointError(f"{step_dir} is damaged: {damage}")
        return load_params(step_dir, abstract_params)[1]
    except CheckpointError as e:
        raise UserError(f"config.init_from: {e}") from None


def _check_data_state(data_state: Any) -> None:
    if not isinstance(data_state, dict) or not {"epoch", "batch_in_epoch"} <= set(data_state):
        raise ValueError(f"{DATA_ITEM} is not a loader position: {str(data_state)[:80]}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else ""


def _agree_on(reason: str | None) -> str | None:
    """Process 0's verdict, on every process."""
    if jax.process_count() == 1:
        return reason
    from jax.experimental import multihost_utils

    flag = multihost_utils.broadcast_one_to_all(np.asarray(reason is not None, np.int32))
    return (reason or "damaged (reported by process 0)") if int(flag) else None
