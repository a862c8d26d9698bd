"""Training checkpoints: an orbax CheckpointManager over `workdir/checkpoints/<step>/`.

Each step directory holds the items of a model checkpoint (`params`, `model_config`; see
`vicuna_jax.checkpoint`), so any step loads as a model, plus `opt_state`, `train_state` (the step counter)
and `data_state` (the loader's position), which make resuming exact.
"""

from __future__ import annotations

from typing import Any

import orbax.checkpoint as ocp

from vicuna_jax.checkpoint import (
    CONFIG_ITEM,
    DATA_ITEM,
    OPT_ITEM,
    PARAMS_ITEM,
    TRAIN_ITEM,
    item_handlers,
)
from vicuna_jax.model.config import LlamaConfig
from vicuna_jax.train.step import TrainState


class TrainCheckpoints:
    """orbax CheckpointManager over `workdir/checkpoints/<step>/`, saving asynchronously.

    A step directory appears under its final name only once every item is written (orbax writes to a
    temporary directory and renames it), so a kill at any moment leaves the previous step as the latest
    complete one; temporary leftovers are cleaned up on the next start.
    """

    def __init__(self, directory: str, keep: int, async_save: bool = True):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True,
                                               enable_async_checkpointing=async_save)
        self.directory = directory
        self.manager = ocp.CheckpointManager(directory, options=options, item_handlers=item_handlers())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState, data_state: dict[str, Any], cfg: LlamaConfig,
             force: bool = True) -> bool:
        return self.manager.save(step, force=force, args=ocp.args.Composite(**{
            PARAMS_ITEM: ocp.args.StandardSave(state.params),
            OPT_ITEM: ocp.args.StandardSave(state.opt_state),
            TRAIN_ITEM: ocp.args.StandardSave({"step": state.step}),
            DATA_ITEM: ocp.args.JsonSave(data_state),
            CONFIG_ITEM: ocp.args.JsonSave(cfg.to_dict()),
        }))

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

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
