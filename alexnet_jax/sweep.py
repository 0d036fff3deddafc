"""Recipe variants on the validation split: `python -m alexnet_jax.sweep --config SWEEP --out DIR`.

    python -m alexnet_jax.sweep --config experiments/sweep_cifar10.py \
        --out experiments/results/sweep-cifar10 [--only NAME ...] [--data-dir DIR] \
        [--config.FIELD=VALUE ...]

A sweep file is an experiment whose `get_config()` is the base (it must hold out a validation
split: `validation_examples` > 0) and whose `get_variants()` returns {name: {field: value}},
each variant's changes to the base; `--config.FIELD` options change the base of them all. The
variants train back to back in this process on one device, through the trainer's own set-up and
epoch driver (`run.build`, `run.run_epoch`), from the training split read once: the test split
is never read, so every accuracy and best epoch here is the validation split's. Nothing is
saved but the table: after each variant, DIR/sweep.json (with each epoch's validation accuracy)
and DIR/sweep.md are rewritten, so that a call cut short keeps the variants it finished.
"""

import datetime
import json
import runpy
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np

from alexnet_jax import compilation_cache, outputs
from alexnet_jax.cli import command_parser, config_from_command_line
from alexnet_jax.config import validate
from alexnet_jax.data import Dataset, Split, load_training_data
from alexnet_jax.errors import UserError, cli
from alexnet_jax.interrupt import StopRequests, stopped
from alexnet_jax.run import build_placed, run_epoch

JSON, MARKDOWN = "sweep.json", "sweep.md"
# The fields that choose the images a variant reads: variants that share them share one read.
DATA_FIELDS = ("dataset", "data_dir", "download", "train_examples", "validation_examples")


def load_variants(path: str) -> dict[str, dict]:
    """`get_variants()` of a sweep file: {name: {field: value}}."""
    try:
        variants = runpy.run_path(str(path))["get_variants"]()
    except KeyError:
        raise UserError(f"sweep file {path} has no get_variants() function") from None
    except Exception as e:
        raise UserError(f"sweep file {path} failed to load: {type(e).__name__}: {e}") from e
    if not isinstance(variants, dict) or not variants:
        raise UserError(f"get_variants() of {path} must return a non-empty {{name: changes}} dict")
    return variants


def variant_config(base: ml_collections.ConfigDict, name: str, changes: dict):
    """The base with one variant's changes, checked: every variant is checked before any
    trains."""
    config = base.copy_and_resolve_references()
    for key, value in changes.items():
        if key not in config:
            raise UserError(f"variant {name!r}: unknown config field {key!r}")
        try:
            config[key] = value
        except (TypeError, ValueError) as e:
            raise UserError(f"variant {name!r}: {key}={value!r} does not fit ({e})") from e
    try:
        validate(config)
    except UserError as e:
        raise UserError(f"variant {name!r}: {e}") from e
    if not config.validation_examples:
        raise UserError(
            f"variant {name!r} has no validation split: a sweep tunes on held-out training "
            "images only, never the test split; set validation_examples (e.g. 5000)"
        )
    return config


def training_split_only(config) -> Dataset:
    """The training split from TFDS (`train_examples` of it and the held-out end), as a
    dataset without a test split: the sweep cannot evaluate on it by mistake."""
    data = load_training_data(config)
    train = Split(
        np.concatenate([data.train.images, data.evaluation.images]),
        np.concatenate([data.train.labels, data.evaluation.labels]),
    )
    return Dataset(config.dataset, train, None, data.class_names)


def run_variant(config, dataset: Dataset, devices, stop: StopRequests) -> dict:
    """Train one variant from scratch, evaluating the validation split after every epoch."""
    began = time.perf_counter()
    run, state = build_placed(config, dataset, devices)
    setup_seconds = time.perf_counter() - began

    began = time.perf_counter()
    run.compile_ahead(state)
    compile_seconds = time.perf_counter() - began

    began = time.perf_counter()
    history = []
    for epoch in range(config.num_epochs):
        state, row, _ = run_epoch(run, state, epoch, stop)
        if row is None:
            raise stopped(stop, epoch)
        if row["eval_split"] != "validation":  # a guard: variant_config asked for one
            raise RuntimeError(f"evaluated on {row['eval_split']}, not a validation split")
        history.append(row)
    train_seconds = time.perf_counter() - began

    accuracies = [row["test_accuracy"] for row in history]
    best = int(np.argmax(accuracies))
    return {
        "epochs": len(history),
        "validation_accuracy": accuracies[-1],
        "validation_loss": history[-1]["test_loss"],
        "best_validation_accuracy": accuracies[best],
        "best_epoch": best + 1,
        "train_loss": history[-1]["train_loss"],
        "setup_seconds": setup_seconds,
        "compile_seconds": compile_seconds,
        "train_seconds": train_seconds,  # the epochs, their evaluations included
        "wall_seconds": setup_seconds + compile_seconds + train_seconds,
        "validation_accuracy_per_epoch": accuracies,
    }


def run_sweep(
    base: ml_collections.ConfigDict,
    variants: dict[str, dict],
    out: str | Path,
    dataset: Dataset | None = None,
    devices=None,
    source: str = "",
) -> dict:
    """Train each variant in turn on one device (the first of `devices`, default all) and
    write the table after each; returns what sweep.json holds.

    `dataset` replaces the TFDS one (tests): only its training split is used.
    """
    configs = {name: variant_config(base, name, changes) for name, changes in variants.items()}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = (devices or jax.devices())[:1]
    table = {
        "sweep": source,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device[0].device_kind,
        "backend": jax.default_backend(),
        "jax_version": jax.__version__,
        "base": base.to_dict(),
        "variants": [],
    }
    reads = {}
    with StopRequests() as stop:
        for name, config in configs.items():
            if dataset is not None:  # its training split only, as below
                data = Dataset(dataset.name, dataset.train, None, dataset.class_names)
            else:
                key = tuple(config[field] for field in DATA_FIELDS)
                if key not in reads:
                    reads.clear()  # one copy of the images in memory at a time
                    began = time.perf_counter()
                    reads[key] = training_split_only(config)
                    table["read_seconds"] = table.get("read_seconds", 0) + (
                        time.perf_counter() - began
                    )
                data = reads[key]
            result = run_variant(config, data, device, stop)
            table["variants"].append({"name": name, "changes": variants[name], **result})
            write_table(out, table)
    return table


def write_table(out: Path, table: dict) -> None:
    """sweep.json and sweep.md, each replaced whole (never left half-written)."""
    for name, text in ((JSON, json.dumps(table, indent=2) + "\n"), (MARKDOWN, markdown(table))):
        partial = out / (name + ".partial")
        partial.write_text(text)
        partial.replace(out / name)


def markdown(table: dict) -> str:
    """The variants in the order they ran, validation accuracies in percent, the best in bold."""
    base = table["base"]
    rows = table["variants"]
    top = max((row["validation_accuracy"] for row in rows), default=None)
    lines = [
        f"# Sweep {table['sweep']}".rstrip(),
        "",
        f"{table['date']}, {table['device']} ({table['backend']}), jax {table['jax_version']}. "
        f"Base: {base['dataset']}, {base['num_epochs']} epochs, batch {base['batch_size']}, "
        f"{base['image_size']}x{base['image_size']}; validation split: the last "
        f"{base['validation_examples']} training images (the test split is not read).",
        "",
        "| variant | changes | epochs | validation accuracy | best (epoch) | validation loss "
        "| wall time (s) | compile (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        accuracy = f"{row['validation_accuracy']:.2%}"
        if row["validation_accuracy"] == top:
            accuracy = f"**{accuracy}**"
        changes = ", ".join(f"{k}={v}" for k, v in row["changes"].items()) or "(base)"
        lines.append(
            f"| {row['name']} | {changes} | {row['epochs']} | {accuracy} | "
            f"{row['best_validation_accuracy']:.2%} ({row['best_epoch']}) | "
            f"{row['validation_loss']:.4f} | {row['wall_seconds']:.1f} | "
            f"{row['compile_seconds']:.1f} |"
        )
    total = sum(row["wall_seconds"] for row in rows)
    lines += ["", f"{len(rows)} variant(s), {total:.0f} s in all."]
    return "\n".join(lines) + "\n"


@cli
def main(argv=None):
    parser = command_parser(__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for sweep.json and sweep.md")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these variants")
    args, rest = parser.parse_known_args(argv)
    base = config_from_command_line(args.config, rest, args.data_dir)
    outputs.check_folder(args.out, "--out")
    compilation_cache.enable()
    variants = load_variants(args.config)
    if args.only:
        unknown = [name for name in args.only if name not in variants]
        if unknown:
            raise UserError(f"--only {' '.join(unknown)}: the variants are {', '.join(variants)}")
        variants = {name: variants[name] for name in args.only}
    table = run_sweep(base, variants, args.out, source=args.config)
    print(markdown(table), end="")


if __name__ == "__main__":
    main()
