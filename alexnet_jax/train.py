"""Training: the data-parallel step and the epoch loop.

    python -m alexnet_jax.train --config experiments/mnist.py --workdir runs \
        [--data-dir DIR] [--config.FIELD=VALUE ...]

Re-running the same command resumes from the run's latest checkpoint.
"""

import functools
import shutil
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec
from tqdm.auto import tqdm

from alexnet_jax import artifacts, preprocess
from alexnet_jax.checkpoint import Checkpoints
from alexnet_jax.config import (
    RESUMABLE_CHANGES,
    command_parser,
    config_from_command_line,
    validate,
)
from alexnet_jax.data import Dataset, load_training_data, spec, training_data_from
from alexnet_jax.distributed import initialize, is_primary, log
from alexnet_jax.errors import UserError, cli
from alexnet_jax.eval import DeviceSplit, evaluate, make_evaluator
from alexnet_jax.interrupt import Interrupted, StopRequests
from alexnet_jax.parallel import DATA_AXIS, check_divisible, make_mesh, replicated
from alexnet_jax.pipeline import TrainPartitions, device_batch
from alexnet_jax.state import TrainState, compute_dtype, create_train_state, update_ema


def cross_entropy(logits, labels, num_classes: int, label_smoothing: float = 0.0):
    """Mean softmax cross-entropy against (optionally smoothed) one-hot labels."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets).mean()


def train_step(
    state: TrainState,
    batch,
    rng,
    *,
    image_size: int,
    mean,
    std,
    dtype,
    crop_padding: int,
    flip: bool,
    cutout: int,
    label_smoothing: float,
    ema_decay: float = 0.0,
):
    """One SGD step on this device's slice of the global batch; gradients are averaged over all.

    Runs under `shard_map` over DATA_AXIS: `batch` ({'image': uint8, 'label': int}) is the
    local slice, `state` and `rng` are the same on every device. BatchNorm averages its batch
    statistics over DATA_AXIS too, so the step equals one on the whole batch on one device.
    Returns the new state and metrics summed over the global batch.
    """
    local = batch["label"].shape[0]
    device = jax.lax.axis_index(DATA_AXIS)
    augment_rng, dropout_rng = jax.random.split(rng)
    keys = preprocess.example_keys(augment_rng, device * local, local)
    # Cutout fills with the dataset's mean colour: zero once normalised.
    fill = jnp.round(jnp.asarray(mean) * 255).astype(jnp.uint8)
    images = preprocess.augment(batch["image"], keys, crop_padding, flip, cutout, fill)
    x = preprocess.to_model_input(images, image_size, mean, std, dtype)
    num_classes = state.params["dense_2"]["bias"].shape[0]

    def loss_fn(params):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            x,
            train=True,
            rngs={"dropout": jax.random.fold_in(dropout_rng, device)},
            mutable=["batch_stats"],
        )
        loss = cross_entropy(logits, batch["label"], num_classes, label_smoothing)
        return loss, (logits, updates["batch_stats"])

    # Marking the replicated parameters as device-varying makes each device differentiate its own
    # loss (without it, shard_map would sum the gradients over devices); pmean then averages them.
    params = jax.lax.pcast(state.params, DATA_AXIS, to="varying")
    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    grads = jax.lax.pmean(grads, DATA_AXIS)
    # A step whose loss, gradients or BatchNorm statistics are not finite leaves the state as
    # it was (but for the step count), so neither a skipped step nor the state kept when
    # stopping holds NaNs. The check comes before the update, so that XLA fuses the choice of
    # old or new parameters and optimiser state into the update itself; checking the new
    # parameters as well cost a fifth of the step on a CPU at 67x67 (README: Speed). Finite
    # gradients give finite parameters unless an update overflows float32. (The statistics
    # are a few thousand numbers; checking them keeps their rounding that of a single step
    # when several steps run in one call.)
    finite = all_finite((jax.lax.pmean(loss, DATA_AXIS), grads, batch_stats))
    updated = update_ema(state.apply_gradients(grads=grads, batch_stats=batch_stats), ema_decay)
    state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
    state = state.replace(step=updated.step)
    metrics = jax.lax.psum(
        {
            "loss_sum": loss * local,
            "correct": jnp.sum(jnp.argmax(logits, -1) == batch["label"]),
            "count": jnp.asarray(local, jnp.int32),
        },
        DATA_AXIS,
    )
    return state, {**metrics, "nonfinite": jnp.logical_not(finite).astype(jnp.int32)}


def all_finite(tree) -> jax.Array:
    """Whether every element of every floating-point leaf is finite."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def step_body(config: ml_collections.ConfigDict):
    """`train_step` with the config's options bound: (state, batch, rng) -> (state, metrics)."""
    dataset = spec(config.dataset)
    return functools.partial(
        train_step,
        image_size=config.image_size,
        mean=dataset.mean,
        std=dataset.std,
        dtype=compute_dtype(config),
        crop_padding=config.crop_padding,
        flip=config.flip,
        cutout=config.cutout,
        label_smoothing=config.label_smoothing,
        ema_decay=config.ema_decay,
    )


def make_train_step(config: ml_collections.ConfigDict, mesh: Mesh):
    """`train_step` compiled and data-parallel over `mesh`: (state, global batch, rng) -> ..."""
    sharded = jax.shard_map(
        step_body(config),
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(DATA_AXIS), PartitionSpec()),
        out_specs=(PartitionSpec(), PartitionSpec()),
    )
    # The old state's buffers are reused for the new one.
    return jax.jit(sharded, donate_argnums=0)


def make_train_steps(config: ml_collections.ConfigDict, mesh: Mesh, partitions: TrainPartitions):
    """Several train steps in one call: (state, orders, first, count) -> (state, metrics).

    Runs steps `first` .. `first + count - 1` of the epoch whose `orders` are given: each device
    gathers its slice of every batch from its training partition, and each step draws its
    randomness from the carried state by `step_rng`, so the result is that of `count` calls of
    `make_train_step`'s function, bit for bit (tested). Metrics are stacked, one row per step.

    The scan is unrolled: the program is `count` steps in a row, with no loop on the device.
    (XLA:CPU ran the step inside a loop 6x slower, and with other rounding.) Compilation grows
    with `count`, and `count` is static: one program per distinct count (the configured one,
    and the remainder at the end of an epoch when it does not divide the steps per epoch).
    """
    body = step_body(config)
    size = partitions.device_batch

    def per_device(state, images, labels, orders, first, *, count):
        def one(state, i):
            batch = device_batch(images, labels, orders, first + i, size=size)
            return body(state, batch, step_rng(state.rng, state.step))

        return jax.lax.scan(one, state, jnp.arange(count, dtype=jnp.int32), unroll=True)

    @functools.cache
    def compiled(count: int):
        sharded = jax.shard_map(
            functools.partial(per_device, count=count),
            mesh=mesh,
            in_specs=(PartitionSpec(),) + (PartitionSpec(DATA_AXIS),) * 3 + (PartitionSpec(),),
            out_specs=(PartitionSpec(), PartitionSpec()),
        )
        return jax.jit(sharded, donate_argnums=0)

    def arguments(state, orders, first):
        return state, partitions.images, partitions.labels, orders, jnp.asarray(first, jnp.int32)

    def run(state, orders, first: int, count: int):
        return compiled(count)(*arguments(state, orders, first))

    # For ahead-of-time compilation (the benchmark): the program of `count` steps, lowered.
    run.lower = lambda state, orders, count: compiled(count).lower(*arguments(state, orders, 0))
    return run


class TrainCalls:
    """The calls to the devices that train an epoch: one step each, or `steps_per_dispatch`.

    `epoch(orders)` yields what `step(state, work) -> (state, metrics)` takes, call by call:
    a batch gathered by its own call for single steps (`make_train_step`), else the range of
    steps that one `make_train_steps` call runs (the last call of an epoch runs what is left).
    """

    def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh, partitions: TrainPartitions):
        self.per_call = config.steps_per_dispatch
        self.partitions = partitions
        if self.per_call == 1:
            self.single = make_train_step(config, mesh)
        else:
            self.several = make_train_steps(config, mesh, partitions)

    def epoch(self, orders):
        steps = self.partitions.steps_per_epoch
        if self.per_call == 1:
            return (self.partitions.batch(orders, i) for i in range(steps))
        return (
            (orders, first, min(self.per_call, steps - first))
            for first in range(0, steps, self.per_call)
        )

    def step(self, state, work):
        if self.per_call == 1:
            return self.single(state, work, step_rng(state.rng, state.step))
        return self.several(state, *work)

    def lower(self, state, orders) -> list:
        """Every distinct program an epoch runs, lowered (`.compile()` fills jit's cache)."""
        if self.per_call == 1:
            batch = self.partitions.batch(orders, 0)
            return [self.single.lower(state, batch, step_rng(state.rng, state.step))]
        counts = sorted({count for _, _, count in self.epoch(orders)})
        return [self.several.lower(state, orders, count) for count in counts]


def dispatch_steps(metrics) -> int:
    """How many steps a call's metrics hold: 1 for one step, the stacked length for several."""
    shape = np.shape(metrics["nonfinite"])
    return shape[0] if shape else 1


def per_step(metrics_list):
    """The metrics of single steps and of stacked dispatches, as one dict per step, in order."""
    for metrics in metrics_list:
        if np.ndim(metrics["nonfinite"]) == 0:
            yield metrics
        else:
            for i in range(len(metrics["nonfinite"])):
                yield {key: value[i] for key, value in metrics.items()}


def step_rng(rng, step):
    """The randomness of global step `step`."""
    return jax.random.fold_in(jax.random.split(rng)[1], step)


def check_resumable(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict, where):
    """A run resumes only with the settings it was started with (up to harmless ones)."""
    changed = [
        f"{key}: {saved[key]!r} -> {config[key]!r}"
        for key in config.keys()
        if key not in RESUMABLE_CHANGES and saved.get(key) != config[key]
    ]
    if changed:
        raise UserError(
            f"{where} holds a run with other settings ({'; '.join(changed)}): "
            "use another --workdir, or the run's own settings to resume it"
        )


def check_topology(saved: dict, where) -> None:
    """A run resumes with as many processes as it was written by (their data shards differ)."""
    processes = jax.process_count()
    if saved.get("num_processes") != processes:
        raise UserError(
            f"{where} was written by {saved.get('num_processes')} process(es) and this run has "
            f"{processes}: resume it with --num-processes {saved.get('num_processes')}, or start "
            "afresh in another --workdir"
        )


def prepare_run_dir(run_dir: Path, checkpoint_bytes: int) -> None:
    """Fail now, not after an epoch, if the run directory cannot be written or is full."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{jax.process_index()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to the run directory {run_dir}: {e.strerror}") from e
    free = shutil.disk_usage(run_dir).free
    needed = int(checkpoint_bytes * 1.2) + (16 << 20)  # a checkpoint, its metadata and plots
    if free < needed:
        raise UserError(
            f"only {free >> 20} MiB free in {run_dir}, and a checkpoint needs about "
            f"{needed >> 20} MiB: free disk space or use another --workdir"
        )


def state_bytes(state: TrainState) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(state) if hasattr(x, "nbytes"))


class NonFiniteLoss(UserError):
    """The loss or the gradients became NaN or infinite."""


def say(message: str) -> None:
    """A line between progress bars, from process 0 only."""
    if is_primary():
        tqdm.write(message)


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    dataset: Dataset | None = None,
    devices=None,
) -> list[dict]:
    """Train `config` in <workdir>/<dataset>/, resuming from its latest readable checkpoint.

    `dataset` replaces the TFDS one (tests, synthetic data); with several processes, each one
    keeps only its shard of its training images. Returns the metrics history, one row per epoch.
    """
    validate(config)
    run_dir = Path(workdir) / config.dataset
    mesh = make_mesh(devices)
    check_divisible(config.batch_size, mesh)
    check_divisible(config.eval_batch_size, mesh, "eval_batch_size")
    process, processes = jax.process_index(), jax.process_count()
    if dataset is None:
        data = load_training_data(config, process, processes)
    else:
        data = training_data_from(dataset, config, process, processes)
    partitions = TrainPartitions(data, mesh, config.batch_size)
    steps_per_epoch = partitions.steps_per_epoch
    state = create_train_state(config, steps_per_epoch, data.num_classes)
    prepare_run_dir(run_dir, state_bytes(state))

    checkpoints = Checkpoints(run_dir / "checkpoints", keep=config.keep_checkpoints)

    def check(epoch):
        where = checkpoints.directory / str(epoch)
        check_resumable(checkpoints.read_config(epoch), config, where)
        check_topology(checkpoints.read_topology(epoch), where)

    history: list[dict] = []
    restored = checkpoints.restore_latest_readable(state, mesh, check=check, report=log)
    if restored is not None:
        latest, state, history = restored
        log(f"resuming {run_dir} after epoch {latest}")
    state = jax.device_put(state, replicated(mesh))
    if is_primary():
        artifacts.write_config(run_dir, config)

    log(
        f"training {config.dataset} ({partitions.images_per_epoch} images per epoch, "
        f"{data.eval_name} {len(data.evaluation)}) on {mesh.devices.size} "
        f"{jax.default_backend()} device(s) in {processes} process(es): batch "
        f"{config.batch_size}, {steps_per_epoch} steps/epoch, {config.image_size}x"
        f"{config.image_size}, {jnp.dtype(compute_dtype(config)).name}"
    )
    eval_split = DeviceSplit(data.evaluation, config.eval_batch_size, mesh)
    eval_fn = make_evaluator(config, mesh)
    calls = TrainCalls(config, mesh, partitions)

    result = None
    with StopRequests() as stop:
        try:
            for epoch in range(len(history), config.num_epochs):
                start = time.perf_counter()
                orders = partitions.epoch_orders(state.rng, epoch)
                state, totals = run_epoch(
                    state, calls.epoch(orders), steps_per_epoch, calls.step, epoch, config, stop
                )
                if stop.stopped:
                    raise interrupted(stop, epoch, checkpoints)
                train_time = time.perf_counter() - start
                result = evaluate(state, eval_split, eval_fn, data.num_classes)
                row = {
                    "epoch": epoch + 1,
                    "step": int(state.step),
                    "train_loss": float(totals["loss_sum"] / totals["count"]),
                    "train_accuracy": float(totals["correct"] / totals["count"]),
                    "test_loss": result.loss,
                    "test_accuracy": result.accuracy,
                    "eval_split": data.eval_name,
                    "skipped_steps": totals["skipped"],
                    "train_seconds": round(train_time, 3),
                    "epoch_seconds": round(time.perf_counter() - start, 3),
                    "train_images_per_second": round(float(totals["count"]) / train_time, 1),
                }
                history.append(row)
                checkpoints.save(epoch + 1, state, config, history)
                if is_primary():
                    artifacts.write_history(run_dir, history)
                say(
                    f"epoch {row['epoch']}/{config.num_epochs}: train loss "
                    f"{row['train_loss']:.4f} acc {row['train_accuracy']:.4f} | {data.eval_name} "
                    f"loss {row['test_loss']:.4f} acc {row['test_accuracy']:.4f} | "
                    f"{row['epoch_seconds']:.1f} s ({row['train_images_per_second']:.0f} img/s)"
                )
        finally:
            # Whatever ends the loop, the save in flight completes (or fails loudly) first.
            checkpoints.wait()
            checkpoints.close()

    if result is None:  # nothing left to train: the run was complete already
        log(f"{run_dir} is complete ({config.num_epochs} epochs); evaluating it again")
        result = evaluate(state, eval_split, eval_fn, data.num_classes)
    if is_primary():
        artifacts.write_history(run_dir, history)
        artifacts.write_evaluation(
            run_dir, np.asarray(data.evaluation.images), result, data.class_names
        )
    log(f"{data.eval_name} accuracy {result.accuracy:.4f}; results in {run_dir}")
    return history


def run_epoch(state, batches, steps: int, step_fn, epoch: int, config, stop: StopRequests):
    """Train one epoch; returns the state and the summed metrics of its finite steps.

    `step_fn(state, batch)` runs one step, or several (then `batch` says which and the
    metrics are stacked). Stops early (without error) when a stop was requested; raises
    NonFiniteLoss at the first non-finite step unless the config skips them.
    """
    totals = {"loss_sum": 0.0, "correct": 0, "count": 0, "skipped": 0}
    first_step = int(state.step)
    bar = tqdm(
        total=steps,
        desc=f"epoch {epoch + 1}/{config.num_epochs}",
        unit="step",
        leave=False,
        dynamic_ncols=True,
        disable=not is_primary(),
    )
    pending, pending_steps = [], 0
    interval_start = time.perf_counter()

    def drain():
        nonlocal pending, pending_steps, interval_start
        # Fetching the metrics waits for the device; doing it every few steps keeps the
        # device busy in between.
        images = 0
        for offset, metrics in enumerate(per_step(jax.device_get(pending))):
            step = first_step + bar.n + offset + 1
            if metrics["nonfinite"]:
                if config.nonfinite == "stop":
                    raise NonFiniteLoss(
                        f"the loss or gradients became non-finite at step {step} (epoch "
                        f"{epoch + 1}); the run stopped without saving it, so the last "
                        "checkpoint is intact: lower learning_rate, or set "
                        "--config.nonfinite=skip to skip such steps"
                    )
                totals["skipped"] += 1
                say(f"warning: skipped step {step}: non-finite loss or gradients")
                continue
            for key in ("loss_sum", "correct", "count"):
                totals[key] += metrics[key]
            images += int(metrics["count"])
        bar.update(pending_steps)
        pending, pending_steps = [], 0
        now = time.perf_counter()
        if images:
            bar.set_postfix(
                loss=f"{totals['loss_sum'] / totals['count']:.4f}",
                acc=f"{totals['correct'] / totals['count']:.4f}",
                img_s=f"{images / (now - interval_start):.0f}",
            )
        interval_start = now

    for batch in batches:
        state, metrics = step_fn(state, batch)
        pending.append(metrics)
        pending_steps += dispatch_steps(metrics)
        synchronise = pending_steps >= config.log_every
        if synchronise:
            drain()
        if stop.should_stop(synchronise):
            break
    drain()
    bar.close()
    stop.should_stop(synchronise=True)  # the epoch's end: every process decides here too
    if not stop.stopped and totals["count"] == 0:
        raise NonFiniteLoss(
            f"every step of epoch {epoch + 1} was non-finite and skipped: lower learning_rate"
        )
    return state, totals


def interrupted(stop: StopRequests, epoch: int, checkpoints: Checkpoints) -> Interrupted:
    checkpoints.wait()
    latest = checkpoints.latest_epoch()
    saved = (
        f"the checkpoint of epoch {latest} is complete: re-run the same command to resume"
        if latest
        else "no epoch was completed, so nothing was saved: re-run the same command to start"
    )
    return Interrupted(
        f"stopped by {stop.name} during epoch {epoch + 1}; {saved}", stop.exit_signal
    )


@cli
def main(argv=None, dataset: Dataset | None = None):
    """The command line; `dataset` stands in for the TFDS one (the tests' training processes)."""
    parser = command_parser(__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs", help="runs go to WORKDIR/<dataset>/")
    group = parser.add_argument_group("several processes (see README: Scaling out)")
    group.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0")
    group.add_argument("--num-processes", type=int, metavar="N")
    group.add_argument("--process-id", type=int, metavar="I", help="0 .. N-1")
    group.add_argument(
        "--distributed",
        action="store_true",
        help="take the above from the cluster (SLURM, Open MPI, Kubernetes, Cloud TPU)",
    )
    group.add_argument(
        "--coordinator-timeout",
        type=int,
        default=300,
        metavar="SECONDS",
        help="how long to wait for all processes to join (default 300)",
    )
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
