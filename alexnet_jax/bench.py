"""Training and evaluation speed per configuration: `python -m alexnet_jax.bench`.

    python -m alexnet_jax.bench [--configs s2d-bf16-k1,conv11-bf16-k1] [--batch-size 256,512]
        [--image-size 224] [--devices 1,2] [--out bench.json] [--profile N [--profile-dir DIR]]
        [--config.FIELD=VALUE ...]

Measures the training path of `make train-cifar10` (the experiment's config, augmentation and
resize inside the step, the epoch driver `run.train_epoch` with its metric fetches, built by
`run.build` as training builds it) and evaluation on synthetic
uint8 images of the dataset's shape placed on the devices, so no dataset is needed. Compilation
is timed on its own (ahead of time; the jitted calls then reuse the programs); throughput comes
from whole epochs after a warm-up epoch, each ended by waiting for the devices. Prints a table
and writes the figures with the device, versions and date as JSON. `--profile N` then traces N
more training steps per configuration with `jax.profiler` (see `profiling.py`), outside the
timings.

A configuration is named `<stem>-<dtype>-k<steps per dispatch>`: stem `conv11` or `s2d` (the
space-to-depth first convolution), dtype `f32` or `bf16`, e.g. `s2d-bf16-k8`.
"""

import argparse
import itertools
import re
import statistics
import sys
import time
from pathlib import Path

import jax
import ml_collections

from alexnet_jax import outputs, profiling
from alexnet_jax.cli import command_parser, overrides_from
from alexnet_jax.config import apply_overrides, load_config
from alexnet_jax.data import synthetic_dataset
from alexnet_jax.environment import environment
from alexnet_jax.errors import UserError, cli
from alexnet_jax.interrupt import StopRequests
from alexnet_jax.run import build_placed, drive, train_epoch

STEM_NAMES = {"conv11": "conv11", "s2d": "space_to_depth"}
DTYPE_NAMES = {"f32": "float32", "bf16": "bfloat16"}

# Small enough for CI on a CPU (seconds); the accelerator defaults are the experiment's sizes.
DEFAULTS = {
    "cpu": dict(
        configs="conv11-f32-k1,s2d-f32-k1,s2d-f32-k4",
        image_size=67,
        batch_size="32",
        steps=4,
        epochs=2,
        eval_batch_size=64,
        eval_batches=2,
    ),
    "accelerator": dict(
        configs="conv11-f32-k1,conv11-bf16-k1,s2d-bf16-k1,s2d-bf16-k8",
        image_size=224,
        batch_size="512",
        steps=48,
        epochs=3,
        eval_batch_size=1000,
        eval_batches=10,
    ),
}


def configuration(name: str) -> dict:
    """Config overrides of a configuration name such as `s2d-bf16-k8`."""
    match = re.fullmatch(r"([a-z0-9]+)-([a-z0-9]+)-k(\d+)", name)
    if not match or match[1] not in STEM_NAMES or match[2] not in DTYPE_NAMES or int(match[3]) < 1:
        raise UserError(
            f"configuration {name!r} is not <stem>-<dtype>-k<steps>: stem one of "
            f"{', '.join(STEM_NAMES)}, dtype one of {', '.join(DTYPE_NAMES)}, e.g. s2d-bf16-k8"
        )
    return dict(
        stem=STEM_NAMES[match[1]],
        compute_dtype=DTYPE_NAMES[match[2]],
        steps_per_dispatch=int(match[3]),
    )


def program_bytes(compiled) -> int | None:
    """Device memory XLA plans for one call: arguments, outputs not aliased, temporaries."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # a backend without the analysis
        return None
    if stats is None:
        return None
    return (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        - stats.alias_size_in_bytes
        + stats.temp_size_in_bytes
    )


def peak_bytes(devices) -> int | None:
    """The allocator's peak since the process started (None where the backend has no stats)."""
    peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in devices]
    return max(peaks) if all(p is not None for p in peaks) else None


def measure(
    config: ml_collections.ConfigDict,
    devices,
    *,
    steps: int,
    epochs: int,
    eval_batches: int,
    warmup_epochs: int = 1,
    profile_steps: int = 0,
    profile_dir=None,
    before_epoch=None,
) -> dict:
    """Train `steps` steps per epoch for warm-up + `epochs` epochs and evaluate as many times;
    then, with `profile_steps`, trace that many more training steps into `profile_dir`.
    `before_epoch()`, if given, runs before each training epoch, outside its timing (a peer's
    epoch, so that the two are timed in turn under the same load).

    The training images are `batch_size * steps` synthetic ones, so every epoch is the same
    size; `config` decides everything else (stem, dtype, steps per dispatch, augmentation).
    """
    dataset = synthetic_dataset(
        config.dataset,
        train_size=config.batch_size * steps,
        test_size=config.eval_batch_size * eval_batches,
    )
    start = time.perf_counter()
    run, state = build_placed(config, dataset, devices)
    setup_seconds = time.perf_counter() - start

    training, evaluation = run.lower(state)
    start = time.perf_counter()
    train_programs = [lowered.compile() for lowered in training]
    train_compile = time.perf_counter() - start
    start = time.perf_counter()
    eval_program = evaluation.compile()
    eval_compile = time.perf_counter() - start

    stop = StopRequests()  # never entered: nothing stops a benchmark but the process's end
    train_seconds = []
    for epoch in range(warmup_epochs + epochs):
        if before_epoch is not None:
            before_epoch()
        start = time.perf_counter()
        state, totals = train_epoch(run, state, epoch, stop)
        jax.block_until_ready(state)
        train_seconds.append(time.perf_counter() - start)
    eval_seconds = []
    for _ in range(warmup_epochs + epochs):
        start = time.perf_counter()
        result = run.evaluate(state)
        eval_seconds.append(time.perf_counter() - start)

    profile = {}
    if profile_steps:
        profile = {
            "profile": profile_training(run, state, len(train_seconds), profile_steps, profile_dir)
        }

    images = run.partitions.images_per_epoch
    train_rate = images / statistics.median(train_seconds[warmup_epochs:])
    eval_rate = run.evaluation.size / statistics.median(eval_seconds[warmup_epochs:])
    planned = [program_bytes(p) for p in train_programs]
    return {
        "devices": len(devices),
        "batch_size": config.batch_size,
        "image_size": config.image_size,
        "stem": config.stem,
        "compute_dtype": str(jax.numpy.dtype(run.derived.dtype)),
        "steps_per_dispatch": config.steps_per_dispatch,
        "steps_per_epoch": run.steps_per_epoch,
        "train": {
            "images_per_second": round(train_rate, 1),
            "images_per_second_per_device": round(train_rate / len(devices), 1),
            "step_ms": round(1000 * config.batch_size / train_rate, 3),
            "compile_seconds": round(train_compile, 3),
            "programs": len(train_programs),
            "epoch_seconds": [round(s, 4) for s in train_seconds],
            "images_per_epoch": images,
            "final_loss": round(float(totals["loss_sum"] / totals["count"]), 4),
        },
        "eval": {
            "images_per_second": round(eval_rate, 1),
            "compile_seconds": round(eval_compile, 3),
            "seconds": [round(s, 4) for s in eval_seconds],
            "images": run.evaluation.size,
            "flip": bool(config.eval_flip),
            "accuracy": result.accuracy,
        },
        "memory": {
            "train_program_bytes": max(planned) if None not in planned else None,
            "eval_program_bytes": program_bytes(eval_program),
            "peak_bytes_in_use": peak_bytes(devices),
        },
        "setup_seconds": round(setup_seconds, 3),
        **profile,
    }


def profile_training(run, state, epoch: int, steps: int, directory) -> dict:
    """Trace the first `steps` steps of epoch `epoch` (0-based; whole calls, at most the epoch),
    compiled and warm, with `jax.profiler` into `directory` (process 0 only)."""
    orders = run.partitions.epoch_orders(state.rng, epoch)
    calls = list(itertools.islice(run.calls.epoch(orders), -(-steps // run.calls.per_call)))
    traced = sum(count for _, _, count in calls)
    dispatch = profiling.step_annotated(run.calls.dispatch, epoch * run.steps_per_epoch)
    with profiling.trace(directory) as folder:
        state, _ = drive(state, calls, traced, dispatch, epoch, run.config, StopRequests())
        jax.block_until_ready(state)
    files = profiling.trace_files(folder) if folder else []
    return {
        "steps": traced,
        "dir": str(directory),
        "files": [str(f.relative_to(directory)) for f in files],
    }


def mib(n) -> str:
    return "n/a" if n is None else f"{n / 2**20:.0f}"


def format_table(results: list[dict]) -> str:
    header = (
        f"{'configuration':<16}{'dev':>4}{'batch':>7}{'size':>6}{'train img/s':>13}"
        f"{'per dev':>10}{'compile s':>11}{'eval img/s':>12}{'XLA MiB':>9}{'peak MiB':>10}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        t, e, m = r["train"], r["eval"], r["memory"]
        lines.append(
            f"{r['name']:<16}{r['devices']:>4}{r['batch_size']:>7}{r['image_size']:>6}"
            f"{t['images_per_second']:>13,.0f}{t['images_per_second_per_device']:>10,.0f}"
            f"{t['compile_seconds']:>11.1f}{e['images_per_second']:>12,.0f}"
            f"{mib(m['train_program_bytes']):>9}{mib(m['peak_bytes_in_use']):>10}"
        )
    return "\n".join(lines)


def int_list(text: str, option: str) -> list[int]:
    """The integers of `option`'s comma-separated `text`, each at least 1."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError as e:
        raise UserError(f"{option} {text!r} is not a comma-separated list of integers") from e
    if any(v < 1 for v in values):
        raise UserError(f"{option}={text}: every value must be at least 1")
    return values


# The integer options and their least values; None (not given) takes the default of DEFAULTS.
LEAST = {
    "image_size": 1,
    "steps": 1,
    "epochs": 1,
    "eval_batch_size": 1,
    "eval_batches": 1,
    "profile": 0,
}


def check_arguments(args) -> None:
    """Refuse option values that no measurement could use, before anything runs: each in one
    line, as eval refuses --batch-size below 1."""
    for key, low in LEAST.items():
        value = getattr(args, key)
        if value is not None and value < low:
            raise UserError(f"--{key.replace('_', '-')}={value} must be at least {low}")
    if args.batch_size is not None:
        int_list(args.batch_size, "--batch-size")
    if args.devices:  # empty: all of them, as in run_all
        int_list(args.devices, "--devices")
    if args.profile:
        outputs.check_folder(args.profile_dir, "--profile-dir")


def base_config(
    path: str, image_size: int, eval_batch_size: int, overrides
) -> ml_collections.ConfigDict:
    config = load_config(path)
    config.image_size = image_size
    config.eval_batch_size = eval_batch_size
    apply_overrides(config, overrides)
    return config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(config="experiments/cifar10.py")
    parser.add_argument("--configs", help="comma-separated configurations, e.g. s2d-bf16-k8")
    parser.add_argument("--image-size", type=int, help="model input side (CPU 67, else 224)")
    parser.add_argument("--batch-size", help="global batch, or several: 256,512,1024")
    parser.add_argument("--devices", help="device counts to run on, e.g. 1,2 (default: all)")
    parser.add_argument("--steps", type=int, help="training steps per timed epoch")
    parser.add_argument("--epochs", type=int, help="timed epochs (after one warm-up epoch)")
    parser.add_argument("--eval-batch-size", type=int)
    parser.add_argument("--eval-batches", type=int, help="evaluation batches per timing")
    parser.add_argument("--out", help="write the results as JSON to this file")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="after the timings, trace N training steps with jax.profiler (0: off)",
    )
    parser.add_argument(
        "--profile-dir",
        default="runs/profile",
        help="where the traces go, a folder per measurement (default runs/profile)",
    )


def defaults(args) -> argparse.Namespace:
    """The arguments left unset, filled with the CPU or accelerator defaults."""
    kind = "cpu" if jax.default_backend() == "cpu" else "accelerator"
    filled = vars(args).copy()
    for key, value in DEFAULTS[kind].items():
        if filled.get(key) is None:
            filled[key] = value
    return argparse.Namespace(**filled)


# Fields the bench sets itself, per measurement, and the option that sets them.
OWN_FIELDS = {
    "batch_size": "--batch-size",
    "image_size": "--image-size",
    "eval_batch_size": "--eval-batch-size",
    "stem": "--configs",
    "compute_dtype": "--configs",
    "steps_per_dispatch": "--configs",
}


def run_all(args) -> dict:
    """Measure every (device count, batch size, configuration); returns the JSON document,
    also written to `args.out` (when given) after each measurement, so that a bench stopped
    part way (a time limit on the GPU machine) keeps what it measured."""
    for override in args.overrides:
        field = override.partition("=")[0]
        if field in OWN_FIELDS:
            raise UserError(
                f"--config.{field} is set by the bench for each measurement: use "
                f"{OWN_FIELDS[field]} instead"
            )
    args = defaults(args)
    names = args.configs.split(",")
    overrides = {name: configuration(name) for name in names}
    available = jax.devices()
    counts = int_list(args.devices, "--devices") if args.devices else [len(available)]
    if max(counts) > len(available):
        raise UserError(f"--devices {args.devices}: only {len(available)} devices here")
    results = []
    document = {**environment(), "dataset": load_config(args.config).dataset, "results": results}
    for count in counts:
        for batch_size in int_list(str(args.batch_size), "--batch-size"):
            for name in names:
                config = base_config(
                    args.config, args.image_size, args.eval_batch_size, args.overrides
                )
                config.batch_size = batch_size
                config.update(overrides[name])
                result = measure(
                    config,
                    available[:count],
                    steps=args.steps,
                    epochs=args.epochs,
                    eval_batches=args.eval_batches,
                    profile_steps=args.profile,
                    profile_dir=Path(args.profile_dir) / f"{name}-b{batch_size}-d{count}",
                )
                results.append({"name": name, **result})
                print(format_table(results[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
                outputs.write_json(document, args.out, quiet=True)
    return document


@cli
def main(argv=None):
    parser = command_parser(__doc__.splitlines()[0], config_required=False, data_dir=False)
    add_arguments(parser)
    args, rest = parser.parse_known_args(argv)
    args.overrides = overrides_from(rest)
    check_arguments(args)
    outputs.check_file(args.out, "--out")
    document = run_all(args)
    env = {k: document[k] for k in ("device_kind", "device_count", "jax", "date")}
    print(
        f"{document['dataset']} on {env['device_count']} x {env['device_kind']}, jax "
        f"{env['jax']}, {env['date']}"
    )
    print(format_table(document["results"]))
    for result in document["results"]:
        if "profile" in result:
            profile = result["profile"]
            print(f"traced {profile['steps']} training steps of {result['name']}: {profile['dir']}")
    outputs.write_json(document, args.out)


if __name__ == "__main__":
    main()
