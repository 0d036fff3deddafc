"""What a run leaves in its directory besides checkpoints: history, config and figures."""

import json
from pathlib import Path

import numpy as np

from alexnet_jax import outputs, plots

HISTORY = "metrics.jsonl"
CONFIG = "config.json"
SAMPLES_SHOWN = 32


def write_history(run_dir: Path, history: list[dict], curves: bool = True) -> None:
    """metrics.jsonl (one row per epoch) and, with `curves`, the loss/accuracy curves, rewritten
    whole. (Drawing the curves takes about 0.3 s on a CPU: more than a third of an epoch at the
    speed aimed at on a GPU, so training draws them with each checkpoint only.)"""
    outputs.replace_whole(run_dir / HISTORY, "".join(json.dumps(row) + "\n" for row in history))
    if curves:
        name = run_dir.name
        plots.plot_curves(history, run_dir / f"{name}_loss.png", name)


def read_history(run_dir: Path) -> list[dict]:
    path = run_dir / HISTORY
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_config(run_dir: Path, config) -> None:
    outputs.replace_whole(run_dir / CONFIG, config.to_json(indent=2) + "\n")


def write_evaluation(run_dir: Path, images: np.ndarray, result, class_names) -> None:
    """The sample grid (true / predicted) and the confusion matrix of a final evaluation."""
    name = run_dir.name
    shown = slice(0, SAMPLES_SHOWN)
    plots.plot_samples(
        images[shown],
        result.labels[shown],
        result.predictions[shown],
        class_names,
        run_dir / f"{name}.png",
    )
    plots.plot_confusion(result.confusion, class_names, run_dir / f"{name}_confusion.png", name)
