"""Repeat an experiment over seeds and summarise it:

    python -m alexnet_jax.seeds --config experiments/cifar10.py --seeds 0 1 2 \
        --workdir runs/seeds --results experiments/results/cifar10 [--config.FIELD=VALUE ...]

Each seed trains in <workdir>/seed<k>/<dataset>/ (resumable like any run) and is then evaluated
on the test split: single view, with flip averaging, and with the config's own test-time views
(`eval_flip`, `eval_shift`) when they are neither. With --results, each run's evidence
(config, metrics history, curves, both evaluations as JSON) is copied there with a summary:
mean and standard deviation over the seeds, epochs and wall time, as JSON and as a Markdown
table, each file whole; the folder is held while the seeds run, so that a second seeds command
with the same --results is refused. Tune with `validation_examples` (the held-out end of the
training split); the test split is only evaluated here, for the figures you report.
"""

import contextlib
import json
import re
import statistics
from pathlib import Path

from alexnet_jax import artifacts, checkpoint, compilation_cache, outputs, rundir
from alexnet_jax.cli import command_parser, config_from_command_line
from alexnet_jax.config import derive, validate
from alexnet_jax.data import Dataset, check_dataset, data_record, load_dataset
from alexnet_jax.errors import UserError, cli
from alexnet_jax.evaluation import DeviceSplit, evaluate, make_evaluator, result_json, views
from alexnet_jax.locks import hold_output
from alexnet_jax.parallel import make_mesh
from alexnet_jax.train import train_and_evaluate

EVIDENCE = (artifacts.HISTORY, artifacts.CONFIG, "{dataset}_loss.png", "{dataset}_confusion.png")


def view_sets(config) -> dict[str, tuple[bool, int]]:
    """The evaluations of each seed, (eval_flip, eval_shift) by name: `single` and `flip`, and
    `views`, the config's own, when they are neither."""
    sets = {"single": (False, 0), "flip": (True, 0)}
    own = (bool(config.eval_flip), config.eval_shift)
    if own not in sets.values():
        sets["views"] = own
    return sets


# What each evaluation is called in the results: file name and summary key.
FILES = {"single": "eval.json", "flip": "eval_flip.json", "views": "eval_views.json"}
KEYS = {"single": "test_accuracy", "flip": "test_accuracy_flip", "views": "test_accuracy_views"}
SUMMARY = "summary.json"
SEED_FOLDER = re.compile(r"seed(0|[1-9][0-9]*)")  # seed<k>/, as run_seeds names them


def seeded_config(config, seed: int):
    seeded = config.copy_and_resolve_references()
    seeded.seed = seed
    return seeded


def check_results(results: Path, seeds) -> None:
    """Refuse a --results folder that holds the evidence of seeds not in `seeds`: its summary
    would be replaced by one that does not cover the seed folders left beside it."""
    found = {int(m[1]) for p in results.glob("seed*") if (m := SEED_FOLDER.fullmatch(p.name))}
    if (results / SUMMARY).exists():
        try:
            found.update(int(seed) for seed in json.loads((results / SUMMARY).read_text())["seeds"])
        except (OSError, ValueError, TypeError, KeyError) as e:
            why = getattr(e, "strerror", None) or str(e).splitlines()[0]
            raise UserError(
                f"{results / SUMMARY} cannot be read ({why}): move it away or pass another "
                "--results (nothing was trained)"
            ) from e
    others = sorted(found - set(seeds))
    if others:
        raise UserError(
            f"--results {results} holds the results of seed(s) {' '.join(map(str, others))}, "
            f"which --seeds {' '.join(map(str, seeds))} leaves out, and its summary would not "
            "cover them: include them in --seeds or pass another --results (nothing was trained)"
        )


def run_seeds(config, seeds, workdir, results=None, dataset: Dataset | None = None) -> dict:
    """Train and evaluate `config` once per seed; returns (and writes) the summary."""
    validate(config)
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {' '.join(map(str, seeds))} repeats a seed")
    # Every seed's config and run directory, and the results folder, are checked before the
    # first seed trains: a refusal of the last seed would come hours later otherwise.
    for seed in seeds:
        validate(seeded_config(config, seed))
    # The workdir and the results folder are held until the summary is written: what the
    # checks below find stays true (a second seeds command into the workdir is refused now, not
    # when it reaches a seed's lock after reading the data), and no other seeds command mixes
    # its files in.
    with contextlib.ExitStack() as held:
        held.enter_context(hold_output(workdir, "seeds run", "--workdir"))
        if results:
            held.enter_context(hold_output(results, "seeds run", "--results"))
            check_results(Path(results), seeds)
        for seed in seeds:
            rundir.check_ahead(run_dir_of(workdir, seed, config), seeded_config(config, seed))
        if dataset is not None:
            check_dataset(dataset, config)
        for seed in seeds:  # a seed's run already trained was trained on this data
            rundir.check_data_ahead(run_dir_of(workdir, seed, config), data_record(config, dataset))
        return train_seeds(config, seeds, workdir, results, dataset)


def train_seeds(config, seeds, workdir, results, dataset: Dataset | None) -> dict:
    """Train and evaluate each seed, its evidence copied into `results`; the summary."""
    source = dataset or load_dataset(config.dataset, config.data_dir, config.download)
    mesh = make_mesh()
    derived = derive(config)
    # The test split placed once, and one evaluator per set of views, compiled once for all seeds.
    split = DeviceSplit(source.test, config.eval_batch_size, mesh)
    evaluators = {}
    for name, (flip, shift) in view_sets(config).items():
        viewed = config.copy_and_resolve_references()
        viewed.eval_flip, viewed.eval_shift = flip, shift
        evaluators[name] = make_evaluator(viewed, derived, mesh)
    runs = []
    for seed in seeds:
        run_dir = run_dir_of(workdir, seed, config)
        history = train_and_evaluate(seeded_config(config, seed), run_dir.parent, dataset).history
        trained = checkpoint.load_trained(run_dir, mesh=mesh)
        evaluations = {}
        for name, (flip, shift) in view_sets(config).items():
            result = evaluate(trained.state, split, evaluators[name], derived.num_classes)
            evaluations[name] = result
            if results:
                payload = result_json(
                    result,
                    source.class_names,
                    dataset=config.dataset,
                    checkpoint=str(trained.path),
                    epoch=trained.epoch,
                    eval_flip=flip,
                    eval_shift=shift,
                    views=views(flip, shift),
                    seed=seed,
                )
                target = Path(results) / f"seed{seed}"
                # Each file whole (written beside and renamed): a failed write keeps the last.
                outputs.write_json(payload, str(target / FILES[name]), quiet=True)
                for pattern in EVIDENCE:
                    evidence = run_dir / pattern.format(dataset=config.dataset)
                    if evidence.exists():
                        outputs.copy_file(evidence, target / evidence.name)
        runs.append(
            {
                "seed": seed,
                "epochs": len(history),
                "wall_seconds": round(sum(row["epoch_seconds"] for row in history), 1),
                **{KEYS[name]: result.accuracy for name, result in evaluations.items()},
            }
        )
    summary = summarize(config, runs)
    if results:
        outputs.write_json(summary, str(Path(results) / SUMMARY), quiet=True)
        outputs.write_text(Path(results) / "summary.md", markdown(summary) + "\n")
    return summary


def run_dir_of(workdir, seed: int, config) -> Path:
    return Path(workdir) / f"seed{seed}" / config.dataset


def summarize(config, runs: list[dict]) -> dict:
    def spread(key):
        values = [run[key] for run in runs]
        return {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        }

    sets = view_sets(config)
    return {
        "dataset": config.dataset,
        "seeds": [run["seed"] for run in runs],
        "runs": runs,
        **{KEYS[name]: spread(KEYS[name]) for name in sets},
        # The test-time views of each evaluation (shifts in source pixels, then the mirror).
        "views": {KEYS[name]: views(flip, shift) for name, (flip, shift) in sets.items()},
        "epochs": runs[0]["epochs"] if runs else 0,
        "wall_seconds": spread("wall_seconds"),
    }


def markdown(summary: dict) -> str:
    """One row per seed and a mean ± std row, accuracies in percent."""
    own_views = len(summary["views"].get("test_accuracy_views", []))
    columns = {
        "test_accuracy": "test accuracy",
        "test_accuracy_flip": "with flip TTA",
        "test_accuracy_views": f"with the config's {own_views} views",
    }
    shown = [key for key in columns if key in summary]
    lines = [
        "| seed | epochs | wall time (s) | " + " | ".join(columns[key] for key in shown) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in shown) + " |",
    ]
    for run in summary["runs"]:
        accuracies = " | ".join(f"{run[key]:.2%}" for key in shown)
        lines.append(
            f"| {run['seed']} | {run['epochs']} | {run['wall_seconds']:.0f} | {accuracies} |"
        )
    spreads = " | ".join(f"{summary[key]['mean']:.2%} ± {summary[key]['std']:.2%}" for key in shown)
    lines.append(
        f"| mean ± std | {summary['epochs']} | {summary['wall_seconds']['mean']:.0f} | {spreads} |"
    )
    return "\n".join(lines)


@cli
def main(argv=None):
    parser = command_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="the seeds to run (0 1 2)"
    )
    parser.add_argument(
        "--workdir", default="runs/seeds", help="each seed's run goes to WORKDIR/seed<k>/<dataset>/"
    )
    parser.add_argument("--results", help="copy the evidence and the summary here")
    args, rest = parser.parse_known_args(argv)
    config = config_from_command_line(args.config, rest, args.data_dir)
    if args.results:
        outputs.check_folder(args.results, "--results")
    compilation_cache.enable()
    summary = run_seeds(config, args.seeds, args.workdir, args.results)
    print(markdown(summary))


if __name__ == "__main__":
    main()
