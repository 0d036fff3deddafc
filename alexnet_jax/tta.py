"""Time to accuracy: `python -m alexnet_jax.tta --config experiments/cifar10.py [--target 0.9]`.

Trains from scratch with an experiment's config, evaluating the test split after every epoch,
until the test accuracy reaches the target (default: CIFAR-10 0.90, MNIST 0.995) or the
config's epochs run out. Prints the wall-clock seconds split into data loading (reading the
dataset and placing it and the fresh state on the devices), compilation (ahead of time, of the
training and evaluation programs) and training (the epochs, their evaluations included), and
writes them as JSON. Nothing is saved: no checkpoints, plots or run directory. The learning
rate schedule is the config's, over its `num_epochs` (`--config.num_epochs=N` shortens it).
Exit status 0 when the target was reached, 1 when it was not.
"""

import sys
import time

import jax
import ml_collections

from alexnet_jax import bench
from alexnet_jax.config import command_parser, config_from_command_line, validate
from alexnet_jax.data import Dataset, load_training_data, training_data_from
from alexnet_jax.errors import UserError, cli
from alexnet_jax.eval import DeviceSplit, evaluate, make_evaluator
from alexnet_jax.interrupt import Interrupted, StopRequests
from alexnet_jax.parallel import check_divisible, make_mesh, replicated
from alexnet_jax.pipeline import TrainPartitions
from alexnet_jax.state import create_train_state
from alexnet_jax.train import TrainCalls, run_epoch

TARGETS = {"cifar10": 0.90, "mnist": 0.995}


def time_to_accuracy(
    config: ml_collections.ConfigDict,
    target: float,
    dataset: Dataset | None = None,
    devices=None,
    start: float | None = None,
) -> dict:
    """Train `config` until the test accuracy reaches `target`; the timings and the history.

    `dataset` replaces the TFDS one (tests); `start` is the `time.perf_counter()` the wall
    clock counts from (default: now).
    """
    start = time.perf_counter() if start is None else start
    validate(config)
    mesh = make_mesh(devices)
    check_divisible(config.batch_size, mesh)
    check_divisible(config.eval_batch_size, mesh, "eval_batch_size")

    began = time.perf_counter()
    if dataset is None:
        data = load_training_data(config)
    else:
        data = training_data_from(dataset, config)
    partitions = TrainPartitions(data, mesh, config.batch_size)
    split = DeviceSplit(data.evaluation, config.eval_batch_size, mesh)
    state = create_train_state(config, partitions.steps_per_epoch, data.num_classes)
    state = jax.device_put(state, replicated(mesh))
    jax.block_until_ready((partitions.images, split.batches, state))
    data_seconds = time.perf_counter() - began

    began = time.perf_counter()
    calls = TrainCalls(config, mesh, partitions)
    evaluator = make_evaluator(config, mesh)
    for lowered in calls.lower(state, partitions.epoch_orders(state.rng, 0)):
        lowered.compile()
    evaluator.lower(state, split.batches).compile()
    compile_seconds = time.perf_counter() - began

    history, reached = [], False
    with StopRequests() as stop:
        for epoch in range(config.num_epochs):
            began = time.perf_counter()
            orders = partitions.epoch_orders(state.rng, epoch)
            state, totals = run_epoch(
                state,
                calls.epoch(orders),
                partitions.steps_per_epoch,
                calls.step,
                epoch,
                config,
                stop,
            )
            if stop.signum:
                raise Interrupted(f"stopped by {stop.name} during epoch {epoch + 1}", stop.signum)
            jax.block_until_ready(state)
            trained = time.perf_counter()
            result = evaluate(state, split, evaluator, data.num_classes)
            history.append(
                {
                    "epoch": epoch + 1,
                    "train_loss": round(float(totals["loss_sum"] / totals["count"]), 4),
                    "test_accuracy": result.accuracy,
                    "train_seconds": trained - began,
                    "eval_seconds": time.perf_counter() - trained,
                    "wall_seconds": time.perf_counter() - start,
                }
            )
            print(
                f"epoch {epoch + 1}: {data.eval_name} accuracy {result.accuracy:.4f} at "
                f"{history[-1]['wall_seconds']:.1f} s",
                flush=True,
            )
            if result.accuracy >= target:
                reached = True
                break

    training_seconds = sum(row["train_seconds"] + row["eval_seconds"] for row in history)
    return {
        "dataset": config.dataset,
        "target": target,
        "reached": reached,
        "epochs": len(history),
        "max_epochs": config.num_epochs,
        "test_accuracy": history[-1]["test_accuracy"],
        "eval_split": data.eval_name,
        # Unrounded: the parts, each rounded, could add up to more than the rounded whole.
        "wall_seconds": time.perf_counter() - start,
        "data_seconds": data_seconds,
        "compile_seconds": compile_seconds,
        "training_seconds": training_seconds,
        "images_per_epoch": partitions.images_per_epoch,
        "devices": mesh.devices.size,
        "history": history,
        "config": config.to_dict(),
    }


@cli
def main(argv=None):
    start = time.perf_counter()
    parser = command_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--target", type=float, help="test accuracy to reach (CIFAR-10 0.90, MNIST 0.995)"
    )
    parser.add_argument("--out", help="write the result as JSON to this file")
    args, rest = parser.parse_known_args(argv)
    config = config_from_command_line(args.config, rest, args.data_dir)
    target = TARGETS.get(config.dataset) if args.target is None else args.target
    if not 0 < target <= 1:
        raise UserError(f"--target {target} must be a test accuracy in (0, 1]")

    result = time_to_accuracy(config, target, start=start)
    document = {**bench.environment(), **result}
    verdict = "reached" if result["reached"] else "did not reach"
    print(
        f"{config.dataset}: {verdict} {target:.2%} ({result['eval_split']} accuracy "
        f"{result['test_accuracy']:.2%}) after {result['epochs']} epoch(s) in "
        f"{result['wall_seconds']:.1f} s wall: data {result['data_seconds']:.1f} s, compile "
        f"{result['compile_seconds']:.1f} s, training {result['training_seconds']:.1f} s "
        f"on {result['devices']} x {document['device_kind']}"
    )
    if args.out:
        bench.write_json(document, args.out)
    return 0 if result["reached"] else 1


if __name__ == "__main__":
    sys.exit(main())
