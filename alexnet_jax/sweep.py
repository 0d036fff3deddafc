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

A DIR that holds a sweep of the same sweep file and base is added to: the variants run again
replace their rows, the others are kept, and the table says which rows came from earlier calls.
A sweep of another file or base there, or a sweep.json that cannot be read, is refused before
anything trains, as is a second sweep into DIR while one runs there (`locks.hold_output`).
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
from alexnet_jax.config import RESUMABLE_CHANGES, default_config, importable, validate
from alexnet_jax.data import Dataset, Split, load_training_data
from alexnet_jax.errors import UserError, cli
from alexnet_jax.interrupt import StopRequests, stopped
from alexnet_jax.locks import hold_output
from alexnet_jax.run import build_placed, run_epoch

JSON, MARKDOWN = "sweep.json", "sweep.md"
# The fields that choose the images a variant reads: variants that share them share one read.
DATA_FIELDS = ("dataset", "data_dir", "download", "train_examples", "validation_examples")
# When and where a row ran: rows kept from earlier calls may differ from this call's.
RUN_FIELDS = ("date", "device", "backend", "jax_version")
# What the table shows of each row.
ROW_FIELDS = (
    "name",
    "changes",
    "epochs",
    "validation_accuracy",
    "best_validation_accuracy",
    "best_epoch",
    "validation_loss",
    "wall_seconds",
    "compile_seconds",
)


def load_variants(path: str) -> dict[str, dict]:
    """`get_variants()` of a sweep file: {name: {field: value}}."""
    try:
        with importable(Path(path).parent):  # as load_config reads the same file's base
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
    write the table after each, added to the sweep already in `out` if any (its rows of the
    variants run again replaced, the others kept); returns what sweep.json holds.

    `dataset` replaces the TFDS one (tests): only its training split is used.
    """
    configs = {name: variant_config(base, name, changes) for name, changes in variants.items()}
    out = Path(out)
    # Held until the last row is written: the earlier sweep read here is the one added to.
    with hold_output(out, "sweep", "--out"):
        earlier = earlier_sweep(out, base, source)  # before anything trains
        out.mkdir(parents=True, exist_ok=True)
        device = (devices or jax.devices())[:1]
        ran = {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "device": device[0].device_kind,
            "backend": jax.default_backend(),
            "jax_version": jax.__version__,
        }
        table = {"sweep": source, **ran, "base": base.to_dict(), "variants": []}
        # By name, in the order first run: a variant run again takes its earlier row's place.
        rows = {row["name"]: row for row in earlier["variants"]} if earlier else {}
        if earlier:  # what this call ran, and which of those replaced an earlier row
            table["added"] = {"ran": [], "replaced": []}
            table["variants"] = list(rows.values())
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
                if earlier:
                    table["added"]["ran"].append(name)
                    if name in rows:
                        table["added"]["replaced"].append(name)
                rows[name] = {"name": name, "changes": variants[name], **result, **ran}
                table["variants"] = list(rows.values())
                write_table(out, table)
    return table


def earlier_sweep(out: Path, base: ml_collections.ConfigDict, source: str) -> dict | None:
    """The sweep already in `out` that this call adds to (its rows carry where they ran), or
    None; one of another sweep file or base, or one that cannot be read, is refused."""
    path = out / JSON
    if not path.exists():
        if (out / MARKDOWN).exists():  # its sweep.json deleted: the table would be lost
            raise UserError(
                f"{out / MARKDOWN} has no {JSON} beside it to add this sweep to: move it away "
                "or pass another --out (nothing was trained)"
            )
        return None
    try:
        table = json.loads(path.read_text())
        check_table(table)
    except (OSError, UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        why = getattr(e, "strerror", None) or str(e).splitlines()[0]
        raise UserError(
            f"{path} cannot be read ({why}), so this sweep cannot be added to it: move it away "
            "or pass another --out (nothing was trained)"
        ) from e
    differences = base_differences(table["base"], base.to_dict())
    if not same_file(table["sweep"], source):
        differences.insert(0, f"sweep file: {table['sweep']!r} -> {source!r}")
    if differences:
        raise UserError(
            f"{out} holds a sweep of another base ({'; '.join(differences)}), which this one "
            "cannot be added to: pass another --out (nothing was trained)"
        )
    for row in table["variants"]:  # rows written before they carried where they ran
        for field in RUN_FIELDS:
            row.setdefault(field, table.get(field, "?"))
    return table


def check_table(table) -> None:
    """A ValueError unless `table` is a sweep.json whose rows the table can show."""
    if not isinstance(table, dict):
        raise ValueError("not a JSON object")
    for key, kind in (("sweep", str), ("base", dict), ("variants", list)):
        if not isinstance(table.get(key), kind):
            raise ValueError(f"no {kind.__name__} {key!r}")
    for row in table["variants"]:
        missing = [field for field in ROW_FIELDS if not isinstance(row, dict) or field not in row]
        if missing:
            raise ValueError(f"a variant without {', '.join(missing)}")


def base_differences(earlier: dict, now: dict) -> list[str]:
    """`field: earlier -> now` for each field that differs, up to those that do not change
    what a run computes (the ones a run may resume with changed: where the data is read from,
    logging, checkpointing)."""
    now = json.loads(json.dumps(now))  # as sweep.json holds it (tuples as lists)
    # A field added to the config since the earlier call ran it at its default, as a resumed
    # checkpoint reads it (`Checkpoints.read_config`).
    defaults = json.loads(json.dumps(default_config().to_dict()))
    earlier = {**{key: defaults[key] for key in now if key in defaults}, **earlier}
    absent = "(not set)"
    return [
        f"{key}: {earlier.get(key, absent)!r} -> {now.get(key, absent)!r}"
        for key in [*now, *(key for key in earlier if key not in now)]
        if key not in RESUMABLE_CHANGES and earlier.get(key, absent) != now.get(key, absent)
    ]


def same_file(earlier: str, source: str) -> bool:
    """Whether two sweep files, as each call named them, are one (a path relative to the
    current folder and its absolute path are)."""
    return earlier == source or Path(earlier).resolve() == Path(source).resolve()


def write_table(out: Path, table: dict) -> None:
    """sweep.json and sweep.md, each replaced whole (never left half-written)."""
    for name, text in ((JSON, json.dumps(table, indent=2) + "\n"), (MARKDOWN, markdown(table))):
        outputs.replace_whole(out / name, text)


def markdown(table: dict) -> str:
    """The variants in the order they were first run, validation accuracies in percent, the
    best in bold; which rows an earlier call ran, when the call added to a sweep."""
    base = table["base"]
    rows = table["variants"]
    top = max((row["validation_accuracy"] for row in rows), default=None)
    lines = [
        f"# Sweep {table['sweep']}".rstrip(),
        "",
        f"{where_ran(table)}. "
        f"Base: {base['dataset']}, {base['num_epochs']} epochs, batch {base['batch_size']}, "
        f"{base['image_size']}x{base['image_size']}; validation split: the last "
        f"{base['validation_examples']} training images (the test split is not read).",
        "",
    ]
    if "added" in table:
        lines += [added(table), ""]
    lines += [
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


def where_ran(ran: dict) -> str:
    return f"{ran['date']}, {ran['device']} ({ran['backend']}), jax {ran['jax_version']}"


def added(table: dict) -> str:
    """What a call that added to a sweep ran, and the rows it kept, with where they ran."""
    ran, replaced = table["added"]["ran"], table["added"]["replaced"]
    by_call = {}
    for row in table["variants"]:
        if row["name"] not in ran:
            by_call.setdefault(where_ran(row), []).append(row["name"])
    kept = "; ".join(f"{', '.join(names)} ({call})" for call, names in by_call.items())
    now = [name + (" (replacing its earlier row)" if name in replaced else "") for name in ran]
    return (
        f"Added to the sweep already in this folder: this call ran {', '.join(now) or 'nothing'}; "
        f"kept from earlier calls: {kept or 'nothing'}."
    )


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
