"""Step metrics, TensorBoard events and environment.json of a run, read back as a user would."""

import dataclasses
import json
import math
import subprocess

import jax
import numpy as np
import optax
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from alexnet_jax import checkpoint, environment, metric_log
from alexnet_jax.interrupt import StopRequests
from alexnet_jax.parallel import make_mesh
from alexnet_jax.run import drive

from conftest import tiny_config

STEP_SCALARS = {
    "train/loss",
    "train/accuracy",
    "train/learning_rate",
    "train/images_per_second",
    "train/grad_norm",
    "train/param_norm",
}
EPOCH_SCALARS = {
    "epoch/train_loss",
    "epoch/train_accuracy",
    "epoch/test_loss",
    "epoch/test_accuracy",
    "epoch/train_seconds",
    "epoch/eval_seconds",
    "epoch/epoch_seconds",
}


def events(run_dir) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    return accumulator.Reload()


def steps_of(accumulator, tag) -> list[int]:
    return [event.step for event in accumulator.Scalars(tag)]


def test_a_run_records_its_steps_and_epochs(tiny_run, cpu_devices):
    # The tiny run: one epoch of 4 steps, a row every 2 steps, read by TensorBoard's own reader.
    accumulator = events(tiny_run)
    tags = accumulator.Tags()
    assert STEP_SCALARS | EPOCH_SCALARS <= set(tags["scalars"])
    assert tags["images"] == ["epoch/test_confusion"]
    assert "config/text_summary" in tags["tensors"]
    for tag in STEP_SCALARS:
        assert steps_of(accumulator, tag) == [2, 4], tag
    assert steps_of(accumulator, "epoch/test_accuracy") == [4]
    assert [e.step for e in accumulator.Images("epoch/test_confusion")] == [4]
    trained = checkpoint.load_trained(tiny_run, mesh=make_mesh(cpu_devices[:1]))
    (row,) = trained.history
    assert accumulator.Scalars("epoch/test_accuracy")[0].value == pytest.approx(
        row["test_accuracy"], rel=1e-6
    )
    assert accumulator.Scalars("epoch/train_loss")[0].value == pytest.approx(
        row["train_loss"], rel=1e-6
    )

    rows = metric_log.read_steps(tiny_run)
    assert [(r["step"], r["epoch"], r["steps"]) for r in rows] == [(2, 1, 2), (4, 1, 2)]
    np.testing.assert_allclose(
        [e.value for e in accumulator.Scalars("train/loss")], [r["loss"] for r in rows], rtol=1e-6
    )
    # The mean of the epoch's two rows is the epoch's training loss (equal halves of it).
    assert np.mean([r["loss"] for r in rows]) == pytest.approx(row["train_loss"], rel=1e-5)
    # The update of step n uses optax's count n - 1: a cosine decay from 0.01 over 4 steps.
    np.testing.assert_allclose(
        [r["learning_rate"] for r in rows],
        [0.005 * (1 + math.cos(math.pi * (step - 1) / 4)) for step in (2, 4)],
        rtol=1e-6,
    )
    assert all(r["grad_norm"] > 0 and r["images_per_second"] > 0 for r in rows)
    # The parameter norm is that of the parameters after the row's last step.
    norm = float(optax.global_norm(trained.state.params))
    assert rows[-1]["param_norm"] == pytest.approx(norm, rel=1e-5)
    assert rows[0]["param_norm"] != pytest.approx(norm, rel=1e-7)


def fake_steps(first: int, last: int, loss: float) -> list[tuple[int, dict]]:
    metrics = {
        "loss_sum": loss * 16,
        "correct": 8,
        "count": 16,
        "grad_norm": 1.0,
        "param_norm": 2.0,
    }
    return [(step, metrics) for step in range(first, last + 1)]


def test_a_resumed_log_drops_what_a_killed_run_wrote_past_its_checkpoint(tmp_path):
    # A killed run wrote steps 1..6 (a row every 2) and epoch 1's row at step 4, and began a
    # row it never finished; its checkpoint is of epoch 1 (step 4). The resumed run logs
    # steps 5..8 again with other values.
    config = tiny_config(num_epochs=2)
    with metric_log.MetricLog(tmp_path, config, 4, 0) as killed:
        for first in (1, 3, 5):
            killed.log_steps(fake_steps(first, first + 1, loss=1.0), 1.0)
    with (tmp_path / metric_log.STEPS).open("a") as file:
        file.write('{"step": 8, "lo')
    with metric_log.MetricLog(tmp_path, config, 4, 4) as resumed:
        for first in (5, 7):
            resumed.log_steps(fake_steps(first, first + 1, loss=2.0), 1.0)

    accumulator = events(tmp_path)
    losses = [(e.step, e.value) for e in accumulator.Scalars("train/loss")]
    assert losses == [(2, 1.0), (4, 1.0), (6, 2.0), (8, 2.0)]
    rows = metric_log.read_steps(tmp_path)
    assert [(r["step"], r["loss"]) for r in rows] == losses
    assert len(list(tmp_path.glob(metric_log.EVENT_FILES))) == 2
    assert accumulator.Tags()["tensors"] == ["config/text_summary"]  # once, from the fresh start


def test_only_process_zero_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(metric_log, "is_primary", lambda: False)
    with metric_log.MetricLog(tmp_path, tiny_config(), 4, 0) as log:
        log.log_steps(fake_steps(1, 2, loss=1.0), 1.0)
    assert list(tmp_path.iterdir()) == []


def test_the_driver_hands_over_the_finite_steps_it_fetched():
    # Steps 11..20 (after 10 done) in calls of 3, 3, 3 and 1, fetched every 6 steps or more;
    # step 15 is non-finite and skipped.
    config = tiny_config(nonfinite="skip", log_every=6, num_epochs=2)

    @dataclasses.dataclass
    class State:  # whose one parameter is the number of the last step taken
        step: int = 10
        params: dict = dataclasses.field(default_factory=lambda: {"w": np.float32(10)})

    def dispatch(state, work):
        first, count = work
        steps = np.arange(first, first + count) + 11
        ones = np.ones(count)
        metrics = {"loss_sum": ones, "correct": ones, "count": ones * 16, "grad_norm": ones}
        new = State(int(steps[-1]), {"w": np.float32(steps[-1])})
        return new, {**metrics, "nonfinite": (steps == 15).astype(np.int32)}

    handed = []

    def log(steps, seconds):
        handed.append(([s for s, _ in steps], seconds, float(steps[-1][1]["param_norm"])))

    work = [(0, 3), (3, 3), (6, 3), (9, 1)]
    drive(State(), iter(work), 10, dispatch, 1, config, StopRequests(), on_log=log)
    assert [steps for steps, _, _ in handed] == [[11, 12, 13, 14, 16], [17, 18, 19, 20]]
    assert all(seconds > 0 for _, seconds, _ in handed)
    # The last step of each row has the norm of the parameters after the last call fetched.
    assert [norm for _, _, norm in handed] == [16, 20]


def test_the_best_checkpoint_says_which_split_chose_it(tiny_run):
    trained = checkpoint.load_trained(tiny_run, best=True)
    assert trained.history[-1]["eval_split"] == "test"
    said = checkpoint.describe(trained, best=True)
    assert said.startswith(f"epoch 1 of {tiny_run / 'checkpoints'}, the best by test accuracy")
    assert '"best" is chosen on the test split' in said
    assert checkpoint.describe(trained) == f"epoch 1 of {tiny_run / 'checkpoints'}"
    validation = {"eval_split": "validation", "test_accuracy": 0.5}
    assert checkpoint.chosen_by(validation) == "the best by validation accuracy (50.00%)"


def test_the_environment_names_this_checkout_and_the_versions(tiny_run, tmp_path):
    recorded = json.loads((tiny_run / environment.ENVIRONMENT).read_text())
    assert recorded["started_after_epoch"] == 0 and recorded["earlier"] == []
    assert recorded["packages"]["jax"] == jax.__version__ and recorded["process_count"] == 1

    found = environment.environment()
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        assert found["git_commit"] is None
    else:
        assert found["git_commit"] == head.stdout.strip()
    assert set(found["packages"]) >= {"jax", "jaxlib", "flax", "optax", "orbax-checkpoint"}
    assert found["packages"]["numpy"] == np.__version__
    assert found["command"].startswith("python ")
    # A second start keeps the first under "earlier".
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    environment.record(run_dir, 0)
    again = environment.record(run_dir, 3)
    assert again["started_after_epoch"] == 3
    assert [e["started_after_epoch"] for e in again["earlier"]] == [0]
    assert environment.read(run_dir) == again
