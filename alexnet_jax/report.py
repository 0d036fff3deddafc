"""A report page per run: `python -m alexnet_jax.report --workdir runs [--data-dir DIR]`.

Writes <run>/report.html for the run given, or for every run under a workdir: the config, the
final metrics, the loss and accuracy curves and, from an evaluation of the test split by the
run's checkpoint, the confusion matrix, per-class accuracy, sample predictions and misclassified
examples. The page is self-contained: the figures are PNG data URIs, and there is no script and
no link to anything outside it. A run below a workdir that cannot be reported (no checkpoint yet)
is skipped with a line saying why; the others are reported, and the exit status says so.
"""

import argparse
import base64
import datetime
import html
import io
import json
import sys
from pathlib import Path

import numpy as np

from alexnet_jax import artifacts, checkpoint, environment, outputs, plots
from alexnet_jax.data import Dataset, data_record, describe_data, load_test_split
from alexnet_jax.errors import UserError, cli
from alexnet_jax.evaluation import DeviceSplit, EvalResult, evaluate, make_evaluator
from alexnet_jax.parallel import make_mesh

REPORT = "report.html"
EXAMPLES_SHOWN = 32

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #eee; }
.note { color: #666; font-size: 0.9em; }
"""


def find_runs(path: str | Path) -> list[Path]:
    """The run directories at `path`: itself if it is one, else every run below it."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path} is not a directory: pass a run dir or a workdir holding runs")
    if (path / checkpoint.CHECKPOINTS).is_dir():
        return [path]
    runs = sorted(p.parent for p in path.rglob(checkpoint.CHECKPOINTS) if p.is_dir())
    if not runs:
        raise UserError(f"{path} holds no run (a folder with {checkpoint.CHECKPOINTS}/ in it)")
    return runs


def write_report(
    run_dir: Path,
    dataset: Dataset | None = None,
    data_dir: str | None = None,
    best: bool = False,
    devices=None,
    out: Path | None = None,
) -> Path:
    """Evaluate the run's checkpoint on the test split and write its report page.

    `dataset` replaces the run's dataset as the config names it (tests pass synthetic data);
    the page goes to `out`, by default <run>/report.html.
    """
    path = out or run_dir / REPORT
    check_writable(path)  # before the evaluation, which is what takes time
    mesh = make_mesh(devices)
    trained = checkpoint.load_trained(run_dir, best, mesh)
    config = trained.config
    print(f"{config.dataset}, {checkpoint.describe(trained, best)}")  # which checkpoint, as eval
    shown_config = config.to_dict()  # as trained, before --data-dir
    if data_dir:
        config.data_dir = data_dir
    note = None
    if dataset is None:
        tfds = describe_data(data_record(config))
        note = checkpoint.in_memory_note(
            trained,
            f"the report evaluates it on {tfds}'s test split instead; its final metrics are "
            "those of its training, on that Dataset",
        )
        test, class_names = load_test_split(config.dataset, config.data_dir, config.download)
    else:
        test, class_names = dataset.test, dataset.class_names
    split = DeviceSplit(test, config.eval_batch_size, mesh)
    evaluator = make_evaluator(config, trained.derived, mesh)
    result = evaluate(trained.state, split, evaluator, trained.derived.num_classes)
    history = artifacts.read_history(run_dir) or trained.history
    if history and not best and history[-1]["epoch"] > trained.epoch:
        # A training in progress, or one killed after epochs that were not yet checkpointed.
        ahead = (
            f"the run's metrics above reach epoch {history[-1]['epoch']}, past this checkpoint "
            f"of epoch {trained.epoch}, whose evaluation this is"
        )
        note = f"{note}; {ahead}" if note else ahead[0].upper() + ahead[1:]

    page = render_html(
        title=f"{config.dataset}: {run_dir}",
        config=shown_config,
        history=history,
        result=result,
        images=np.asarray(test.images),
        class_names=class_names,
        source=checkpoint.describe(trained, best),
        env=environment.read(run_dir),
        note=note.removeprefix("note: ") if note else None,
    )
    outputs.write_text(path, page)  # a failed write keeps the earlier report whole
    if note:
        print(note, file=sys.stderr, flush=True)
    return path


def check_writable(path: Path) -> None:
    """Refuse a report page that could not be written, in one line."""
    if path.is_dir():
        raise UserError(f"{path} is a folder, where the report goes: move it away and run again")
    outputs.check_file(str(path), "the report", fix=f"make {path.parent} writable")


def render_html(
    title: str,
    config: dict,
    history: list[dict],
    result: EvalResult,
    images: np.ndarray,
    class_names,
    source: str,
    env: dict | None = None,
    note: str | None = None,
) -> str:
    """The page: metrics, figures as data URIs, the config and the environment (of
    environment.json) the run was trained in, as one HTML string."""
    name = title.split(":")[0]
    wrong = np.flatnonzero(result.predictions != result.labels)
    shown = slice(0, EXAMPLES_SHOWN)
    figures = {
        "curves": _png(plots.plot_curves, history, title=name) if history else None,
        "confusion": _png(plots.plot_confusion, result.confusion, class_names, title=name),
        "samples": _png(
            plots.plot_samples,
            images[shown],
            result.labels[shown],
            result.predictions[shown],
            class_names,
        ),
        "misclassified": _png(
            plots.plot_samples,
            images[wrong[shown]],
            result.labels[wrong[shown]],
            result.predictions[wrong[shown]],
            class_names,
            title="misclassified: true / predicted",
        )
        if len(wrong)
        else None,
    }
    count = len(result.labels)
    evaluation_rows = [
        ("checkpoint", source),
        ("test images", f"{count}"),
        ("test loss", f"{result.loss:.4f}"),
        ("top-1 accuracy", f"{result.accuracy:.2%}"),
        ("misclassified", f"{len(wrong)}"),
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="note">Written {datetime.datetime.now():%Y-%m-%d %H:%M} by '
        "<code>python -m alexnet_jax.report</code>.</p>",
        "<h2>Final metrics</h2>",
        _metrics_table(history),
        "<h2>Evaluation of the test split</h2>",
        f'<p class="note">{_e(note)}</p>' if note else "",
        _table("evaluation", evaluation_rows),
        "<h2>Loss and accuracy</h2>",
        _img(figures["curves"], "loss and accuracy curves") or "<p>No metrics recorded.</p>",
        "<h2>Confusion matrix</h2>",
        _img(figures["confusion"], "confusion matrix"),
        "<h2>Per-class accuracy</h2>",
        _table(
            "per-class",
            [(n, f"{a:.2%}") for n, a in zip(class_names, result.per_class_accuracy, strict=True)],
            header=("class", "accuracy"),
        ),
        f"<h2>Sample predictions</h2><p class='note'>The first {EXAMPLES_SHOWN} test images; "
        "mistakes in red.</p>",
        _img(figures["samples"], "sample predictions"),
        "<h2>Misclassified examples</h2>",
        f"<p class='note'>The first {min(len(wrong), EXAMPLES_SHOWN)} of {len(wrong)} "
        "misclassified test images.</p>",
        _img(figures["misclassified"], "misclassified examples") or "<p>None.</p>",
        "<h2>Config</h2>",
        _table("config", [(k, json.dumps(v)) for k, v in sorted(config.items())]),
        "<h2>Environment</h2>",
        _table("environment", _environment_rows(env))
        if env
        else "<p>Not recorded (no environment.json in the run directory).</p>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _metrics_table(history: list[dict]) -> str:
    if not history:
        return "<p>No metrics recorded.</p>"
    last = history[-1]
    rows = [
        ("epochs", f"{last['epoch']}"),
        ("train loss", f"{last['train_loss']:.4f}"),
        ("train accuracy", f"{last['train_accuracy']:.2%}"),
    ]
    # The evaluated epochs (eval_every); a checkpoint's own epoch always is.
    tested = [row for row in history if "test_accuracy" in row]
    if tested:
        split = tested[-1].get("eval_split", "test")
        best = max(tested, key=lambda row: row["test_accuracy"])
        rows += [
            (f"{split} loss", f"{tested[-1]['test_loss']:.4f}"),
            (f"{split} accuracy", f"{tested[-1]['test_accuracy']:.2%}"),
            (f"best {split} accuracy", f"{best['test_accuracy']:.2%} (epoch {best['epoch']})"),
        ]
    rows += [
        ("seconds per epoch (last)", f"{last.get('epoch_seconds', float('nan')):.1f}"),
        ("training images/s (last)", f"{last.get('train_images_per_second', float('nan')):.0f}"),
    ]
    return _table("metrics", rows)


def _environment_rows(env: dict) -> list[tuple[str, str]]:
    """The latest start's environment; a run resumed elsewhere says how many starts it had."""
    commit = env.get("git_commit") or "none (not run from a git checkout)"
    if env.get("git_dirty"):
        commit += " with uncommitted changes"
    rows = [
        ("recorded", env.get("date")),
        ("alexnet_jax", env.get("alexnet_jax")),
        ("git commit", commit),
        ("python", env.get("python")),
        *((name, version or "not installed") for name, version in env.get("packages", {}).items()),
        ("devices", f"{env.get('device_count')} x {env.get('device_kind')} ({env.get('backend')})"),
        ("processes", env.get("process_count")),
        ("host", f"{env.get('processor')}, {env.get('host_cpus')} CPUs, {env.get('platform')}"),
        ("XLA_FLAGS", env.get("xla_flags") or "none"),
        ("command", env.get("command")),
    ]
    earlier = env.get("earlier") or []
    if earlier:
        rows.append(
            ("starts", f"{len(earlier) + 1}; this one after epoch {env.get('started_after_epoch')}")
        )
    return rows


def _table(table_id: str, rows, header=None) -> str:
    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join(
        f"<tr><th>{_e(key)}</th><td class='number'>{_e(value)}</td></tr>" for key, value in rows
    )
    return f'<table id="{table_id}">{head}{body}</table>'


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return ""
    data = base64.b64encode(png).decode("ascii")
    return f'<p><img alt="{_e(alt)}" src="data:image/png;base64,{data}"></p>'


def _png(plot, *args, **kwargs) -> bytes:
    buffer = io.BytesIO()
    plot(*args, path=buffer, **kwargs)
    return buffer.getvalue()


def _e(text) -> str:
    return html.escape(str(text))


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir", required=True, help="a run dir (<workdir>/<dataset>) or a workdir of runs"
    )
    parser.add_argument("--data-dir", help="TFDS data dir (default: the one each run used)")
    parser.add_argument(
        "--best",
        action="store_true",
        help="the epoch of the best validation accuracy (test accuracy when the run held out "
        "no validation split) instead of the latest",
    )
    args = parser.parse_args(argv)
    runs = find_runs(args.workdir)
    skipped = []
    for run_dir in runs:
        try:
            path = write_report(run_dir, data_dir=args.data_dir, best=args.best)
        except UserError as e:
            if len(runs) == 1:
                raise
            # One run that cannot be reported (a training before its first checkpoint, say)
            # must not cost the others their reports.
            print(f"skipped {run_dir}: {e}", file=sys.stderr, flush=True)
            skipped.append(run_dir)
            continue
        print(f"wrote {path}", flush=True)
    if skipped:
        raise UserError(
            f"{len(skipped)} of {len(runs)} runs not reported "
            f"({', '.join(map(str, skipped))}): see the lines above"
        )


if __name__ == "__main__":
    main()
