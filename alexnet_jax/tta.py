"""Time to accuracy: `python -m alexnet_jax.tta --config experiments/cifar10.py [--target 0.9]`.

Trains from scratch with an experiment's config, evaluating the test split after every epoch,
until the test accuracy reaches the target (default: CIFAR-10 0.90, MNIST 0.995) or the
config's epochs run out. Prints the wall-clock seconds split into data loading (JAX's start on
the devices, reading the dataset and placing it, and the fresh state on the devices, each also
apart), compilation (ahead of time, of the training and evaluation programs) and training (the
epochs, their evaluations included), with how many programs came from the persistent
compilation cache (a machine's later runs of a config load what its first one compiled;
`JAX_COMPILATION_CACHE_DIR=` turns the cache off), and writes them as JSON. Nothing is saved:
no checkpoints, plots or run directory. The learning rate schedule is the config's, over its
`num_epochs` (`--config.num_epochs=N` shortens it).
Exit status 0 when the target was reached, 1 when it was not.
"""

import sys
import time

import ml_collections

from alexnet_jax import bench, compilation_cache, outputs
from alexnet_jax.cli import command_parser, config_from_command_line
from alexnet_jax.data import Dataset
from alexnet_jax.errors import UserError, cli
from alexnet_jax.interrupt import StopRequests, stopped
from alexnet_jax.run import build_placed, run_epoch

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

    with compilation_cache.CacheUse() as cache:
        began = time.perf_counter()
        data_parts = {}
        run, state = build_placed(config, dataset, devices, data_parts)
        data_seconds = time.perf_counter() - began

        began = time.perf_counter()
        run.compile_ahead(state)
        compile_seconds = time.perf_counter() - began

    history, reached = [], False
    with StopRequests() as stop:
        for epoch in range(config.num_epochs):
            state, row, _ = run_epoch(run, state, epoch, stop)
            if row is None:
                raise stopped(stop, epoch)
            history.append({**row, "wall_seconds": time.perf_counter() - start})
            print(
                f"epoch {epoch + 1}: {row['eval_split']} accuracy {row['test_accuracy']:.4f} at "
                f"{history[-1]['wall_seconds']:.1f} s",
                flush=True,
            )
            if row["test_accuracy"] >= target:
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
        "eval_split": run.data.eval_name,
        # Unrounded: the parts, each rounded, could add up to more than the rounded whole.
        "wall_seconds": time.perf_counter() - start,
        "data_seconds": data_seconds,
        # Its parts: JAX's start on the devices, the dataset read and placed, the fresh state.
        "data_parts_seconds": data_parts,
        "compile_seconds": compile_seconds,
        # Whether compile_seconds compiled or read executables kept by an earlier run.
        "compilation_cache": cache.summary(),
        "training_seconds": training_seconds,
        "images_per_epoch": run.partitions.images_per_epoch,
        "devices": run.mesh.devices.size,
        "history": history,
        "config": config.to_dict(),
    }


def cache_note(result: dict) -> str:
    """What the compilation cache did, for the closing line."""
    cache = result["compilation_cache"]
    if not cache["folder"]:
        return " (no compilation cache)"
    return (
        f" ({cache['programs_loaded']} program(s) loaded from the compilation cache, "
        f"{cache['programs_compiled']} compiled)"
    )


def data_parts_note(result: dict) -> str:
    """The data seconds' parts, for the closing line."""
    parts = result["data_parts_seconds"]
    return (
        f"backend {parts['backend']:.1f} s, dataset {parts['data']:.1f} s, "
        f"state {parts['state']:.1f} s"
    )


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
    outputs.check_file(args.out, "--out")
    compilation_cache.enable()
    target = TARGETS.get(config.dataset) if args.target is None else args.target
    if not 0 < target <= 1:
        raise UserError(f"--target {target} must be a test accuracy in (0, 1]")

    result = time_to_accuracy(config, target, start=start)
    document = {**bench.environment(), **result}
    verdict = "reached" if result["reached"] else "did not reach"
    print(
        f"{config.dataset}: {verdict} {target:.2%} ({result['eval_split']} accuracy "
        f"{result['test_accuracy']:.2%}) after {result['epochs']} epoch(s) in "
        f"{result['wall_seconds']:.1f} s wall: data {result['data_seconds']:.1f} s "
        f"({data_parts_note(result)}), compile "
        f"{result['compile_seconds']:.1f} s, training {result['training_seconds']:.1f} s "
        f"on {result['devices']} x {document['device_kind']}{cache_note(result)}"
    )
    outputs.write_json(document, args.out)
    return 0 if result["reached"] else 1


if __name__ == "__main__":
    sys.exit(main())
