"""Training: `python -m alexnet_jax.train --config experiments/mnist.py --workdir runs`.

    python -m alexnet_jax.train --config experiments/mnist.py --workdir runs \
        [--data-dir DIR] [--config.FIELD=VALUE ...]

Re-running the same command resumes from the run's latest checkpoint. The loop here reads top
to bottom: hold and check the run directory (`rundir.py`), build the run (`run.py`), resume,
then train and evaluate epoch by epoch, writing the metrics after each and a checkpoint every
`checkpoint_every` epochs; a stop request saves what it would lose. The step itself is in
`step.py`, the command line in `cli.py`.
"""

import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from alexnet_jax import artifacts, compilation_cache, environment, rundir
from alexnet_jax.checkpoint import (
    CHECKPOINTS,
    Checkpoints,
    Trained,
    abstract_train_state,
    chosen_by,
)
from alexnet_jax.cli import add_process_arguments, command_parser, config_from_command_line
from alexnet_jax.config import derive, validate
from alexnet_jax.cost import FirstCallsTimer, cost_line
from alexnet_jax.data import Dataset, check_dataset, data_record
from alexnet_jax.distributed import initialize, is_primary, log
from alexnet_jax.errors import UserError, cli
from alexnet_jax.interrupt import StopRequests, stopped
from alexnet_jax.metric_log import MetricLog
from alexnet_jax.parallel import replicated
from alexnet_jax.run import (
    TIMING_FIELDS,
    EpochProgress,
    add_evaluation,
    build,
    run_epoch,
    say,
)


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    dataset: Dataset | None = None,
    devices=None,
) -> Trained:
    """Train `config` in <workdir>/<dataset>/, resuming from its latest readable checkpoint.

    `dataset` replaces the TFDS one (tests, synthetic data; `data.Dataset` says what it must
    hold); with several processes, each one keeps only its shard of its training images.
    Returns the final state with the metrics history (one row per epoch), as
    `checkpoint.load_trained` would restore it.
    """
    validate(config)  # before the run directory is touched (`run.build` checks for its own callers)
    run_dir = Path(workdir) / config.dataset
    # The run directory first: whatever is wrong there (another training in it, no write
    # access, no room, a run of other settings) is reported before any data is read.
    checkpoint_bytes = rundir.state_bytes(abstract_train_state(config, derive(config)))
    with rundir.hold(run_dir, checkpoint_bytes, config.image_size):
        checkpoints = Checkpoints(run_dir / CHECKPOINTS, keep=config.keep_checkpoints)
        try:
            rundir.check_settings(checkpoints, config)
            if dataset is not None:  # refused before anything is placed or written: `hold`
                check_dataset(dataset, config)  # removes the folders of a new run
            source = data_record(config, dataset)  # what its checkpoints record
            rundir.check_data(checkpoints, source)
            return train(config, run_dir, checkpoints, dataset, devices, source)
        finally:
            checkpoints.close()


def train(config, run_dir: Path, checkpoints: Checkpoints, dataset, devices, source) -> Trained:
    """Build the run, resume it, then train and evaluate epoch by epoch; each checkpoint records
    `source`, where the data came from (`data.data_record`)."""
    run = build(config, dataset, devices)
    state, history, progress = run.fresh_state(), [], None
    restored = rundir.resume(
        checkpoints, config, source, run.abstract_state(), run.mesh, report=log
    )
    if restored is not None:
        state = jax.device_put(restored.state, replicated(run.mesh))
        history = rundir.with_timings(restored.history, written_history(run_dir), TIMING_FIELDS)
        if restored.progress is None:
            log(f"resuming {run_dir} after epoch {len(history)}")
        else:
            progress = EpochProgress.from_json(restored.progress)
            if restored.progress["steps_per_epoch"] != run.steps_per_epoch:
                raise UserError(
                    f"{restored.path} stopped an epoch of {restored.progress['steps_per_epoch']} "
                    f"steps and this run's epochs have {run.steps_per_epoch}: resume it with "
                    "the data it was trained on"
                )
            log(
                f"resuming {run_dir} in epoch {progress.epoch + 1}, after step "
                f"{progress.steps_done} of {run.steps_per_epoch}"
            )
        written_on, running_on = restored.topology.get("num_devices"), run.mesh.devices.size
        if written_on is not None and written_on != running_on:  # the sums' order differs
            log(
                f"note: {restored.path} was written by a run on {written_on} device(s), and "
                f"this one has {running_on}: it goes on as that run would up to rounding, "
                "not bit for bit"
            )
    if is_primary():
        write(checkpoints, artifacts.write_config, run_dir, config)
        write(checkpoints, environment.record, run_dir, len(history))
    log(
        f"training {config.dataset} ({run.partitions.images_per_epoch} images per epoch, "
        f"{run.data.eval_name} {len(run.data.evaluation)}) on {run.mesh.devices.size} "
        f"{jax.default_backend()} device(s) in {jax.process_count()} process(es): batch "
        f"{config.batch_size}, {run.steps_per_epoch} steps/epoch, {config.image_size}x"
        f"{config.image_size}, {jnp.dtype(run.derived.dtype).name}"
    )

    result = None
    unsaved = False  # the last completed epoch has no checkpoint (checkpoint_every)
    # Each epoch's time runs from the end of the one before, so that the rows add up to the
    # whole loop (a stopped epoch's time before the stop included).
    mark = time.perf_counter() - (progress.train_seconds if progress else 0.0)
    # The first call after compilation is timed for the line that says what the run will take.
    epochs_left = config.num_epochs - len(history)
    timer = FirstCallsTimer(
        lambda seconds: say(
            cost_line(
                jax.default_backend(), config.image_size, seconds, run.steps_per_epoch, epochs_left
            )
        )
    )
    metric_log = MetricLog(run_dir, config, run.steps_per_epoch, int(state.step))
    with StopRequests() as stop, metric_log:
        try:
            for epoch in range(len(history), config.num_epochs):
                if stop.should_stop(synchronise=True):  # asked during an evaluation or a save
                    break
                progress = progress or EpochProgress(epoch)
                last = epoch + 1 == config.num_epochs
                saves = last or (epoch + 1) % config.checkpoint_every == 0
                # Every checkpointed epoch is evaluated: the best checkpoint is chosen by it.
                evaluate = saves or (epoch + 1) % config.eval_every == 0
                state, row, result = run_epoch(
                    run, state, epoch, stop, progress, metric_log.log_steps, timer, evaluate
                )
                if row is None:
                    break  # stopped within the epoch: `progress` says how far it went
                progress = None
                unsaved = not saves
                history.append(row)
                blocked = time.perf_counter()
                # The write of the last save has long finished; a failure of it shows here.
                checkpoints.wait()
                if not unsaved:
                    checkpoints.save(epoch + 1, state, config, history, source)
                if last:
                    checkpoints.wait()
                now = time.perf_counter()
                row["checkpoint_seconds"] = now - blocked
                row["epoch_seconds"] = now - mark
                row["other_seconds"] = row["epoch_seconds"] - sum(
                    row[key] for key in ("train_seconds", "eval_seconds", "checkpoint_seconds")
                )
                mark = now
                # With the epoch's whole time split, so after the checkpoint's save has started.
                # The confusion matrix's figure with each checkpoint only, as the curves: drawing
                # it took 0.2 to 0.4 s, a third of an epoch on an H100.
                figure = None if unsaved else result
                metric_log.log_epoch(row, figure, run.data.class_names)
                if is_primary():  # the curves with each checkpoint (artifacts.write_history)
                    write(checkpoints, artifacts.write_history, run_dir, history, not unsaved)
                say(epoch_line(row, config.num_epochs, unsaved))
            if stop.stopped and len(history) < config.num_epochs:
                between_epochs = progress is None or not progress.steps_done
                if unsaved and between_epochs and "test_accuracy" not in history[-1]:
                    # The completed epoch is saved below: a checkpoint carries its accuracy.
                    row = history[-1]
                    before = row["eval_seconds"]
                    add_evaluation(run, state, row)
                    row["epoch_seconds"] += row["eval_seconds"] - before  # the split adds up
                if is_primary() and unsaved:
                    write(checkpoints, artifacts.write_history, run_dir, history)
                raise stopped_and_saved(
                    stop, checkpoints, run, state, history, progress, unsaved, source
                )
            checkpoints.wait()
            best = checkpoints.best_epoch()
        finally:
            # Whatever ends the loop, the save in flight completes (or fails loudly) first.
            checkpoints.wait()

    if result is None:  # nothing left to train: the run was complete already
        epochs = f"{config.num_epochs} epoch{'s' if config.num_epochs != 1 else ''}"
        log(f"{run_dir} is complete ({epochs}); evaluating it again")
        result = run.evaluate(state)
    if is_primary():
        write(checkpoints, artifacts.write_history, run_dir, history)
        images, names = np.asarray(run.data.evaluation.images), run.data.class_names
        write(checkpoints, artifacts.write_evaluation, run_dir, images, result, names)
    log(f"{run.data.eval_name} accuracy {result.accuracy:.4f}; results in {run_dir}")
    if best:  # an epoch with metrics (an imported model's epoch 0 has none)
        log(f"best checkpoint: epoch {best}, {chosen_by(history[best - 1])}")
    epoch = len(history)
    path = checkpoints.directory / str(epoch)
    return Trained(config, state, epoch, path, history, run.derived, data=source)


def epoch_line(row: dict, num_epochs: int, unsaved: bool) -> str:
    """What the log says of a finished epoch."""
    evaluation = (
        f"{row['eval_split']} loss {row['test_loss']:.4f} acc {row['test_accuracy']:.4f} | "
        if "test_accuracy" in row
        else ""
    )
    times = f"{row['train_seconds']:.1f} s training ({row['train_images_per_second']:.0f} img/s)"
    if evaluation:
        times += f", {row['eval_seconds']:.1f} s evaluation"
    if not unsaved:
        times += f", {row['checkpoint_seconds']:.1f} s checkpoint"
    return (
        f"epoch {row['epoch']}/{num_epochs}: train loss {row['train_loss']:.4f} acc "
        f"{row['train_accuracy']:.4f} | {evaluation}{times}"
    )


def stopped_and_saved(stop, checkpoints, run, state, history, progress, unsaved, source):
    """Save what the stop would lose (the stopped epoch's steps, or a completed epoch not yet
    checkpointed); the error that ends the run says what was kept and how to go on."""
    checkpoints.wait()
    config = run.config
    if progress is not None and progress.steps_done:
        steps = f"step {progress.steps_done} of {run.steps_per_epoch}"
        path = checkpoints.save_partial(
            state, config, history, progress.to_json(run.steps_per_epoch), source
        )
        checkpoints.wait()
        return stopped(
            stop,
            progress.epoch,
            then=f"; saved its progress in {path}: re-run the same command to resume",
            where=f"during epoch {progress.epoch + 1}, after {steps}",
        )
    if unsaved:
        checkpoints.save(len(history), state, config, history, source)
        checkpoints.wait()
    return stopped(stop, len(history), kept_checkpoint(checkpoints), f"after epoch {len(history)}")


def write(checkpoints: Checkpoints, writer, run_dir: Path, *args) -> None:
    """Write the run's metrics or figures; a full disk ends the run with one line."""
    try:
        writer(run_dir, *args)
    except OSError as e:
        if jax.process_count() == 1:  # (the others would not wait with it)
            checkpoints.wait()  # a save that failed on the same disk says more
        raise UserError(
            f"cannot write to {run_dir} ({e.strerror}): free disk space (or fix the folder) and "
            "re-run the same command to resume"
        ) from e


def written_history(run_dir: Path) -> list[dict]:
    """metrics.jsonl as it is (only its timings are taken from it)."""
    try:
        return artifacts.read_history(run_dir)
    except (OSError, ValueError):
        return []


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
    parser.add_argument("--workdir", default="runs", help="runs go to WORKDIR/<dataset>/ (runs)")
    add_process_arguments(parser)
    args, rest = parser.parse_known_args(argv)
    config = config_from_command_line(args.config, rest, args.data_dir)
    validate(config)  # before waiting for other processes
    compilation_cache.enable()
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
