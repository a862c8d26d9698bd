"""`python -m vicuna_jax.train --config=configs/<name>.py --workdir=DIR [--config.key=value ...]`."""

from __future__ import annotations

from vicuna_jax.cli import UserError, run


def main(argv: list[str]) -> None:
    import jax
    from absl import flags

    from vicuna_jax import parallel
    from vicuna_jax.train import config as config_lib
    from vicuna_jax.train.loop import train
    from vicuna_jax.train.summary import finish

    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    parallel.maybe_initialize_distributed(f.config.distributed)
    cfg = config_lib.load(f.config, jax.device_count())  # validated once, here at the edge
    summary = train(cfg, f.workdir)
    if jax.process_index() == 0:  # run_summary.json, loss.png, and what to do next
        print(finish(f.workdir, summary), flush=True)


def _define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py).", lock_config=True)
    flags.DEFINE_string("workdir", None, "Checkpoints, metrics, exports; rerun with it to resume.")
    flags.mark_flags_as_required(["config", "workdir"])


if __name__ == "__main__":
    from vicuna_jax.train.config import HELP

    run(main, _define_flags, config_help=HELP)
