"""What a run records while it trains: step metrics in <run>/steps.jsonl, TensorBoard event files
in <run>/ itself, so that TensorBoard names each run by its folder (`make tensorboard
WORKDIR=runs` to watch them).

Every `log_every` steps the epoch driver (`run.drive`) hands over the steps it fetched; they
become one row: training loss and accuracy over those steps, the learning rate of the last one
(from the optax schedule, on the host), images/s since the previous row, the mean gradient norm
and the parameter norm after the last step. Each epoch adds its row (training and evaluation
loss and accuracy, seconds) and the confusion matrix as an image. Only process 0 writes.

A resumed run continues the same step axis: rows after the checkpoint's step, which a killed
run may have written, are dropped from steps.jsonl, and the new event file starts with a purge
marker (a SessionLog START event, as tensorboardX's `purge_step` writes) that makes TensorBoard
drop the older events from that step on. Events are written in the calling thread (tensorboardX's
record format and summaries, without its background writer, whose flush does not wait for the
events queued), so that an epoch's events are on disk before its checkpoint is written.
"""

import io
import json
import os
import time
from pathlib import Path

import numpy as np

from alexnet_jax import plots
from alexnet_jax.distributed import is_primary
from alexnet_jax.state import learning_rate_schedule

STEPS = "steps.jsonl"
EVENT_FILES = "events.out.tfevents.*"


class MetricLog:
    """The step and epoch records of one run, from `first_step` (the state's step) on."""

    def __init__(self, run_dir: Path, config, steps_per_epoch: int, first_step: int):
        self.schedule = learning_rate_schedule(config, steps_per_epoch)
        self.steps_per_epoch = steps_per_epoch
        self.enabled = is_primary()
        if not self.enabled:
            return
        self.steps_path = Path(run_dir) / STEPS
        _truncate_after(self.steps_path, first_step)
        self._steps_file = self.steps_path.open("a")
        # A fresh run purges from step 0, so that a run killed before its first checkpoint leaves
        # nothing behind; a resumed one from the first step it trains again.
        self.events = EventFile(Path(run_dir), purge_from=first_step + 1 if first_step else 0)
        if first_step == 0:
            self.events.text("config", _markdown_table(config.to_dict()), 0)
            self.events.flush()

    def log_steps(self, steps: list[tuple[int, dict]], seconds: float) -> None:
        """One row for the finite steps fetched together: [(1-based step, metrics), ...]."""
        if not self.enabled or not steps:
            return
        step, last = steps[-1]
        count = sum(int(m["count"]) for _, m in steps)
        row = {
            "step": step,
            "epoch": -(-step // self.steps_per_epoch),
            "steps": len(steps),
            "loss": sum(float(m["loss_sum"]) for _, m in steps) / count,
            "accuracy": sum(int(m["correct"]) for _, m in steps) / count,
            # The update of step n (1-based) is the optimiser's update number n - 1.
            "learning_rate": float(self.schedule(step - 1)),
            "images_per_second": count / seconds if seconds > 0 else None,
            "grad_norm": float(np.mean([float(m["grad_norm"]) for _, m in steps])),
            "param_norm": float(last["param_norm"]),
        }
        self._steps_file.write(json.dumps(row) + "\n")
        self._steps_file.flush()
        for key, value in row.items():
            if key not in ("step", "epoch", "steps") and value is not None:
                self.events.scalar(f"train/{key}", value, step)
        self.events.flush()

    def log_epoch(self, row: dict, result=None, class_names=None) -> None:
        """An epoch's row (as `run.run_epoch` returns it) and its confusion matrix."""
        if not self.enabled:
            return
        step, split = row["step"], row.get("eval_split", "test")
        scalars = {
            "train_loss": row["train_loss"],
            "train_accuracy": row["train_accuracy"],
            "skipped_steps": row["skipped_steps"],
            "train_seconds": row["train_seconds"],
            "eval_seconds": row["eval_seconds"],
            "train_images_per_second": row["train_images_per_second"],
        }
        if "test_accuracy" in row:  # (an epoch between evaluations has none: eval_every)
            scalars[f"{split}_loss"] = row["test_loss"]
            scalars[f"{split}_accuracy"] = row["test_accuracy"]
        for key in ("checkpoint_seconds", "other_seconds", "epoch_seconds"):
            if key in row:  # (set once the checkpoint's save has started: train.py)
                scalars[key] = row[key]
        for key, value in scalars.items():
            self.events.scalar(f"epoch/{key}", value, step)
        if result is not None:
            title = f"{split}, epoch {row['epoch']}"
            image = _image(plots.plot_confusion, result.confusion, class_names, title=title)
            self.events.image(f"epoch/{split}_confusion", image, step)
        self.events.flush()

    def close(self) -> None:
        if self.enabled:
            self._steps_file.close()
            self.events.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class EventFile:
    """A new TensorBoard event file in `logdir`, whose events from step `purge_from` on replace
    those of the files before it."""

    def __init__(self, logdir: Path, purge_from: int):
        # tensorboardX imports in about a second: only process 0 pays for it.
        from tensorboardX import summary
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog

        self._summary, self._event = summary, Event
        logdir.mkdir(parents=True, exist_ok=True)
        # The writer names its file by the second and the host; the nanoseconds keep a file
        # opened in the same second (a quick resume) apart, and sort after it.
        self._writer = EventsWriter(str(logdir / "events"), f".{time.time_ns()}.{os.getpid()}")
        start = SessionLog(status=SessionLog.START)
        self._writer.write_event(Event(wall_time=time.time(), step=purge_from, session_log=start))

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._add(self._summary.scalar(tag, value), step)

    def image(self, tag: str, rgb: np.ndarray, step: int) -> None:
        self._add(self._summary.image(tag, rgb, dataformats="HWC"), step)

    def text(self, tag: str, markdown: str, step: int) -> None:
        self._add(self._summary.text(tag, markdown), step)

    def _add(self, summary, step: int) -> None:
        self._writer.write_event(self._event(wall_time=time.time(), step=step, summary=summary))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def read_steps(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / STEPS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _truncate_after(path: Path, step: int) -> None:
    """Keep only the rows up to `step` (written beside and renamed: a crash leaves one or the
    other); a line cut short by a kill is dropped."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line + "\n")
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(kept))
    partial.replace(path)


def _image(plot, *args, **kwargs) -> np.ndarray:
    """A figure of `plots` as an RGB array."""
    from PIL import Image

    buffer = io.BytesIO()
    plot(*args, path=buffer, **kwargs)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))


def _markdown_table(values: dict) -> str:
    rows = [f"| {key} | {json.dumps(value)} |" for key, value in sorted(values.items())]
    return "\n".join(["| field | value |", "| --- | --- |", *rows])
