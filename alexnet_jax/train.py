"""Training: `python -m alexnet_jax.train --config experiments/mnist.py --workdir runs`.

    python -m alexnet_jax.train --config experiments/mnist.py --workdir runs \
        [--data-dir DIR] [--config.FIELD=VALUE ...]

Re-running the same command resumes from the run's latest checkpoint. The loop here reads top
to bottom: check the run directory, build the run (`run.py`), resume, then train and evaluate
epoch by epoch, saving a checkpoint and the metrics after each. The step itself is in
`step.py`, the command line in `cli.py`.
"""

import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from alexnet_jax import artifacts, environment, rundir
from alexnet_jax.checkpoint import Checkpoints, Trained, abstract_train_state, chosen_by
from alexnet_jax.cli import add_process_arguments, command_parser, config_from_command_line
from alexnet_jax.config import derive, validate
from alexnet_jax.data import Dataset
from alexnet_jax.distributed import initialize, is_primary, log
from alexnet_jax.errors import cli
from alexnet_jax.interrupt import StopRequests, stopped
from alexnet_jax.metric_log import MetricLog
from alexnet_jax.parallel import replicated
from alexnet_jax.run import build, run_epoch, say


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    dataset: Dataset | None = None,
    devices=None,
) -> Trained:
    """Train `config` in <workdir>/<dataset>/, resuming from its latest readable checkpoint.

    `dataset` replaces the TFDS one (tests, synthetic data); with several processes, each one
    keeps only its shard of its training images. Returns the final state with the metrics
    history (one row per epoch), as `checkpoint.load_trained` would restore it.
    """
    # The run directory first: a problem there is reported before any data is read.
    validate(config)
    run_dir = Path(workdir) / config.dataset
    rundir.prepare(run_dir, rundir.state_bytes(abstract_train_state(config, derive(config))))

    run = build(config, dataset, devices)
    checkpoints = Checkpoints(run_dir / "checkpoints", keep=config.keep_checkpoints)
    state, history = run.fresh_state(), []
    restored = rundir.resume(checkpoints, config, run.abstract_state(), run.mesh, report=log)
    if restored is not None:
        latest, state, history = restored
        state = jax.device_put(state, replicated(run.mesh))
        log(f"resuming {run_dir} after epoch {latest}")
    if is_primary():
        artifacts.write_config(run_dir, config)
        environment.record(run_dir, len(history))
    log(
        f"training {config.dataset} ({run.partitions.images_per_epoch} images per epoch, "
        f"{run.data.eval_name} {len(run.data.evaluation)}) on {run.mesh.devices.size} "
        f"{jax.default_backend()} device(s) in {jax.process_count()} process(es): batch "
        f"{config.batch_size}, {run.steps_per_epoch} steps/epoch, {config.image_size}x"
        f"{config.image_size}, {jnp.dtype(run.derived.dtype).name}"
    )

    result = None
    metric_log = MetricLog(run_dir, config, run.steps_per_epoch, int(state.step))
    with StopRequests() as stop, metric_log:
        try:
            for epoch in range(len(history), config.num_epochs):
                start = time.perf_counter()
                state, row, result = run_epoch(run, state, epoch, stop, metric_log.log_steps)
                if row is None:
                    raise stopped(stop, epoch, then=kept_checkpoint(checkpoints))
                row["epoch_seconds"] = time.perf_counter() - start
                history.append(row)
                # Before the checkpoint: a run that has one has its events on disk.
                metric_log.log_epoch(row, result, run.data.class_names)
                checkpoints.save(epoch + 1, state, config, history)
                if is_primary():
                    artifacts.write_history(run_dir, history)
                say(
                    f"epoch {row['epoch']}/{config.num_epochs}: train loss "
                    f"{row['train_loss']:.4f} acc {row['train_accuracy']:.4f} | "
                    f"{row['eval_split']} loss {row['test_loss']:.4f} acc "
                    f"{row['test_accuracy']:.4f} | {row['train_seconds']:.1f} s training "
                    f"({row['train_images_per_second']:.0f} img/s), "
                    f"{row['eval_seconds']:.1f} s evaluation"
                )
            checkpoints.wait()
            best = checkpoints.best_epoch()
        finally:
            # Whatever ends the loop, the save in flight completes (or fails loudly) first.
            checkpoints.wait()
            checkpoints.close()

    if result is None:  # nothing left to train: the run was complete already
        log(f"{run_dir} is complete ({config.num_epochs} epochs); evaluating it again")
        result = run.evaluate(state)
    if is_primary():
        artifacts.write_history(run_dir, history)
        artifacts.write_evaluation(
            run_dir, np.asarray(run.data.evaluation.images), result, run.data.class_names
        )
    log(f"{run.data.eval_name} accuracy {result.accuracy:.4f}; results in {run_dir}")
    if best:  # an epoch with metrics (an imported model's epoch 0 has none)
        log(f"best checkpoint: epoch {best}, {chosen_by(history[best - 1])}")
    epoch = len(history)
    return Trained(config, state, epoch, checkpoints.directory / str(epoch), history, run.derived)


def kept_checkpoint(checkpoints: Checkpoints) -> str:
    """What a stopped run kept, and how to go on."""
    checkpoints.wait()
    latest = checkpoints.latest_epoch()
    if latest:
        return f"; the checkpoint of epoch {latest} is complete: re-run the same command to resume"
    return "; no epoch was completed, so nothing was saved: re-run the same command to start"


@cli
def main(argv=None, dataset: Dataset | None = None):
    """The command line; `dataset` stands in for the TFDS one (the tests' training processes)."""
    parser = command_parser(__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs", help="runs go to WORKDIR/<dataset>/")
    add_process_arguments(parser)
    args, rest = parser.parse_known_args(argv)
    config = config_from_command_line(args.config, rest, args.data_dir)
    validate(config)  # before waiting for other processes
    initialize(
        args.coordinator,
        args.num_processes,
        args.process_id,
        auto=args.distributed,
        timeout_seconds=args.coordinator_timeout,
    )
    train_and_evaluate(config, args.workdir, dataset)


if __name__ == "__main__":
    sys.exit(main())
