"""Training: the data-parallel step and the epoch loop.

    python -m alexnet_jax.train --config experiments/mnist.py --workdir runs \
        [--data-dir DIR] [--config.FIELD=VALUE ...]

Re-running the same command resumes from the run's latest checkpoint.
"""

import argparse
import functools
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
from alexnet_jax.config import RESUMABLE_CHANGES, apply_overrides, load_config, validate
from alexnet_jax.data import Dataset, Split, load_dataset, spec
from alexnet_jax.errors import UserError, cli
from alexnet_jax.eval import DeviceSplit, evaluate, make_evaluator
from alexnet_jax.parallel import DATA_AXIS, batch_sharded, check_divisible, make_mesh, replicated
from alexnet_jax.state import TrainState, compute_dtype, create_train_state


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
    label_smoothing: float,
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
    images = preprocess.augment(batch["image"], keys, crop_padding, flip)
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
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    metrics = {
        "loss_sum": loss * local,
        "correct": jnp.sum(jnp.argmax(logits, -1) == batch["label"]),
        "count": jnp.asarray(local, jnp.int32),
    }
    return state, jax.lax.psum(metrics, DATA_AXIS)


def make_train_step(config: ml_collections.ConfigDict, mesh: Mesh):
    """`train_step` compiled and data-parallel over `mesh`: (state, global batch, rng) -> ..."""
    dataset = spec(config.dataset)
    body = functools.partial(
        train_step,
        image_size=config.image_size,
        mean=dataset.mean,
        std=dataset.std,
        dtype=compute_dtype(config),
        crop_padding=config.crop_padding,
        flip=config.flip,
        label_smoothing=config.label_smoothing,
    )
    sharded = jax.shard_map(
        body,
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(DATA_AXIS), PartitionSpec()),
        out_specs=(PartitionSpec(), PartitionSpec()),
    )
    # The old state's buffers are reused for the new one.
    return jax.jit(sharded, donate_argnums=0)


def epoch_order(rng, epoch: int, size: int):
    """The shuffled order of the training examples in `epoch`, a pure function of the run's rng."""
    return jax.random.permutation(jax.random.fold_in(jax.random.split(rng)[0], epoch), size)


def step_rng(rng, step):
    """The randomness of global step `step`."""
    return jax.random.fold_in(jax.random.split(rng)[1], step)


def _take(images, labels, order, start, *, size):
    indices = jax.lax.dynamic_slice_in_dim(order, start, size)
    return {"image": images[indices], "label": labels[indices]}


def split_for_training(dataset: Dataset, config) -> tuple[Split, Split, str]:
    """(train split, evaluation split, its name) as the config carves them."""
    train = dataset.train
    if config.validation_examples:
        if config.validation_examples >= len(train):
            raise UserError(
                f"validation_examples={config.validation_examples} leaves no training images "
                f"out of {len(train)}"
            )
        cut = len(train) - config.validation_examples
        held_out = Split(train.images[cut:], train.labels[cut:])
        train = Split(train.images[:cut], train.labels[:cut])
        evaluation, name = held_out, "validation"
    else:
        evaluation, name = dataset.test, "test"
    if config.train_examples:
        train = Split(train.images[: config.train_examples], train.labels[: config.train_examples])
    return train, evaluation, name


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


def prepare_run_dir(run_dir: Path) -> None:
    """Create the run directory and fail now, not after an epoch, if it cannot be written."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to the run directory {run_dir}: {e.strerror}") from e


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    dataset: Dataset | None = None,
    devices=None,
) -> list[dict]:
    """Train `config` in <workdir>/<dataset>/, resuming from its latest checkpoint.

    Returns the metrics history, one row per epoch.
    """
    validate(config)
    run_dir = Path(workdir) / config.dataset
    mesh = make_mesh(devices)
    check_divisible(config.batch_size, mesh)
    check_divisible(config.eval_batch_size, mesh, "eval_batch_size")
    prepare_run_dir(run_dir)
    if dataset is None:
        dataset = load_dataset(config.dataset, config.data_dir, download=config.download)
    train, evaluation, eval_name = split_for_training(dataset, config)
    steps_per_epoch = len(train) // config.batch_size
    if steps_per_epoch == 0:
        raise UserError(
            f"batch_size={config.batch_size} is larger than the {len(train)} training images"
        )

    checkpoints = Checkpoints(run_dir / "checkpoints", keep=config.keep_checkpoints)
    state = create_train_state(config, steps_per_epoch, dataset.num_classes)
    history: list[dict] = []
    latest = checkpoints.latest_epoch()
    if latest is not None:
        check_resumable(checkpoints.read_config(latest), config, checkpoints.directory)
        state, history = checkpoints.restore(latest, state, mesh)
        print(f"resuming {run_dir} after epoch {latest}")
    state = jax.device_put(state, replicated(mesh))
    artifacts.write_config(run_dir, config)

    devices_text = f"{mesh.devices.size} {jax.default_backend()} device(s)"
    print(
        f"training {config.dataset} ({len(train)} images, {eval_name} {len(evaluation)}) on "
        f"{devices_text}: batch {config.batch_size}, {steps_per_epoch} steps/epoch, "
        f"{config.image_size}x{config.image_size}, {jnp.dtype(compute_dtype(config)).name}"
    )
    train_images = jax.device_put(train.images, replicated(mesh))
    train_labels = jax.device_put(train.labels, replicated(mesh))
    eval_split = DeviceSplit(evaluation, config.eval_batch_size, mesh)
    step_fn = make_train_step(config, mesh)
    eval_fn = make_evaluator(config, mesh)
    take = jax.jit(
        functools.partial(_take, size=config.batch_size), out_shardings=batch_sharded(mesh)
    )

    result = None
    for epoch in range(len(history), config.num_epochs):
        start = time.perf_counter()
        order = epoch_order(state.rng, epoch, len(train))
        totals = {"loss_sum": 0.0, "correct": 0, "count": 0}
        pending = []
        bar = tqdm(
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{config.num_epochs}",
            unit="step",
            leave=False,
            dynamic_ncols=True,
        )
        interval_start, interval_images = time.perf_counter(), 0
        for i in range(steps_per_epoch):
            batch = take(train_images, train_labels, order, i * config.batch_size)
            state, metrics = step_fn(state, batch, step_rng(state.rng, state.step))
            pending.append(metrics)
            if len(pending) == config.log_every or i == steps_per_epoch - 1:
                # Fetching the metrics waits for the device; doing it every few steps keeps
                # the device busy in between.
                for fetched in jax.device_get(pending):
                    for key in totals:
                        totals[key] += fetched[key]
                interval_images += sum(int(m["count"]) for m in jax.device_get(pending))
                bar.update(len(pending))
                pending = []
                now = time.perf_counter()
                bar.set_postfix(
                    loss=f"{totals['loss_sum'] / totals['count']:.4f}",
                    acc=f"{totals['correct'] / totals['count']:.4f}",
                    img_s=f"{interval_images / (now - interval_start):.0f}",
                )
                interval_start, interval_images = now, 0
        bar.close()
        train_time = time.perf_counter() - start
        result = evaluate(state, eval_split, eval_fn, dataset.num_classes)
        row = {
            "epoch": epoch + 1,
            "step": int(state.step),
            "train_loss": float(totals["loss_sum"] / totals["count"]),
            "train_accuracy": float(totals["correct"] / totals["count"]),
            "test_loss": result.loss,
            "test_accuracy": result.accuracy,
            "eval_split": eval_name,
            "train_seconds": round(train_time, 3),
            "epoch_seconds": round(time.perf_counter() - start, 3),
            "train_images_per_second": round(totals["count"] / train_time, 1),
        }
        history.append(row)
        checkpoints.save(epoch + 1, state, config, history)
        artifacts.write_history(run_dir, history)
        tqdm.write(
            f"epoch {row['epoch']}/{config.num_epochs}: train loss {row['train_loss']:.4f} "
            f"acc {row['train_accuracy']:.4f} | {eval_name} loss {row['test_loss']:.4f} "
            f"acc {row['test_accuracy']:.4f} | {row['epoch_seconds']:.1f} s "
            f"({row['train_images_per_second']:.0f} img/s)"
        )
    checkpoints.wait()
    checkpoints.close()

    if result is None:  # nothing left to train: the run was complete already
        print(f"{run_dir} is complete ({config.num_epochs} epochs); evaluating it again")
        artifacts.write_history(run_dir, history)
        result = evaluate(state, eval_split, eval_fn, dataset.num_classes)
    artifacts.write_evaluation(run_dir, np.asarray(evaluation.images), result, dataset.class_names)
    print(f"{eval_name} accuracy {result.accuracy:.4f}; results in {run_dir}")
    return history


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Any config field can be set with --config.FIELD=VALUE.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--config", required=True, help="experiment file, e.g. experiments/mnist.py"
    )
    parser.add_argument("--workdir", default="runs", help="runs go to WORKDIR/<dataset>/")
    parser.add_argument("--data-dir", help="TFDS data dir (default: $TFDS_DATA_DIR or TFDS's own)")
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for arg in rest:
        if not arg.startswith("--config."):
            raise UserError(f"unknown option {arg}: see --help")
        overrides.append(arg.removeprefix("--config."))
    config = load_config(args.config)
    apply_overrides(config, overrides)
    if args.data_dir:
        config.data_dir = args.data_dir
    train_and_evaluate(config, args.workdir)


if __name__ == "__main__":
    sys.exit(main())
