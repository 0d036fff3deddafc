"""`eval_every`: which epochs are evaluated, that evaluating less often trains the same, and that
every checkpoint still carries its accuracy (the best one is chosen by it)."""

import os
import signal

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from alexnet_jax import artifacts, train
from alexnet_jax.checkpoint import Checkpoints, load_trained
from alexnet_jax.interrupt import Interrupted

from conftest import tiny_config


def evaluated_epochs(history):
    return [row["epoch"] for row in history if "test_accuracy" in row]


def test_eval_every_evaluates_its_epochs_the_checkpointed_and_the_last_and_trains_the_same(
    tiny_dataset, cpu_devices, tmp_path
):
    # 5 epochs, evaluated every 2nd, saved every 3rd: 2 and 4 by eval_every, 3 as saved, 5 last.
    sparse = tiny_config(num_epochs=5, checkpoint_every=3, eval_every=2)
    every = tiny_config(num_epochs=5, checkpoint_every=3)
    devices = cpu_devices[:1]
    a = train.train_and_evaluate(sparse, tmp_path / "sparse", tiny_dataset, devices)
    b = train.train_and_evaluate(every, tmp_path / "every", tiny_dataset, devices)

    assert evaluated_epochs(a.history) == [2, 3, 4, 5]
    assert evaluated_epochs(b.history) == [1, 2, 3, 4, 5]
    assert a.history[0]["eval_seconds"] == 0.0 and "eval_split" not in a.history[0]
    # Evaluation reads the state and nothing else: the same training, bit for bit.
    states = jax.device_get((a.state, b.state))
    for x, y in zip(*map(jax.tree.leaves, states), strict=True):
        np.testing.assert_array_equal(x, y)
    for row_a, row_b in zip(a.history, b.history, strict=True):
        assert row_a["train_loss"] == row_b["train_loss"]
        if "test_accuracy" in row_a:
            assert (row_a["test_loss"], row_a["test_accuracy"]) == (
                row_b["test_loss"],
                row_b["test_accuracy"],
            )

    run = tmp_path / "sparse" / "mnist"
    assert evaluated_epochs(artifacts.read_history(run)) == [2, 3, 4, 5]
    assert (run / "mnist_loss.png").is_file()
    events = EventAccumulator(str(run)).Reload()
    assert [e.step // 4 for e in events.Scalars("epoch/test_accuracy")] == [2, 3, 4, 5]
    assert len(events.Scalars("epoch/train_loss")) == 5
    best = load_trained(run, best=True)
    assert "test_accuracy" in best.history[-1] and best.epoch in (3, 5)


def test_a_stop_after_an_epoch_without_evaluation_evaluates_it_before_saving_it(
    tiny_dataset, cpu_devices, tmp_path, monkeypatch
):
    # Epoch 1 is neither evaluated nor saved; a stop request while its metrics are written ends
    # the run before epoch 2, saving epoch 1, with its evaluation.
    config = tiny_config(num_epochs=3, checkpoint_every=3, eval_every=3)
    write_history = artifacts.write_history

    def stop_while_writing(run_dir, history, *figures):
        write_history(run_dir, history, *figures)
        if len(history) == 1 and "test_accuracy" not in history[0]:
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal, to the StopRequests handler

    with monkeypatch.context() as patch:
        patch.setattr(artifacts, "write_history", stop_while_writing)
        with pytest.raises(Interrupted, match="stopped by SIGTERM after epoch 1"):
            train.train_and_evaluate(config, tmp_path, tiny_dataset, cpu_devices[:1])

    run = tmp_path / "mnist"
    checkpoints = Checkpoints(run / "checkpoints", read_only=True)
    assert checkpoints.epochs() == [1] and checkpoints.best_epoch() == 1
    checkpoints.close()
    saved = load_trained(run)
    assert evaluated_epochs(saved.history) == [1]
    written = artifacts.read_history(run)
    assert evaluated_epochs(written) == [1]
    parts = ("train_seconds", "eval_seconds", "checkpoint_seconds", "other_seconds")
    assert sum(written[0][part] for part in parts) == pytest.approx(written[0]["epoch_seconds"])
    # Resumed, the run goes on to its end; epoch 2 is not evaluated, 3 (the last) is.
    resumed = train.train_and_evaluate(config, tmp_path, tiny_dataset, cpu_devices[:1])
    assert evaluated_epochs(resumed.history) == [1, 3]
