"""A stop between checkpoints loses nothing: the partial checkpoint of a stopped epoch, how the
commands treat it, and the bit-exact resume from it; each epoch's time split."""

import os
import signal

import jax
import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from alexnet_jax import artifacts, predict, train
from alexnet_jax.checkpoint import Checkpoints, load_trained
from alexnet_jax.interrupt import Interrupted
from alexnet_jax.parallel import make_mesh
from alexnet_jax.run import TIMING_FIELDS
from alexnet_jax.step import TrainCalls

from conftest import tiny_config

PARTS = ("train_seconds", "eval_seconds", "checkpoint_seconds", "other_seconds")


def without_timing(history):
    return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in history]


def assert_time_split(history):
    for row in history:
        assert TIMING_FIELDS <= row.keys(), row
        assert min(row[part] for part in PARTS) >= 0, row
        assert sum(row[part] for part in PARTS) == pytest.approx(row["epoch_seconds"], abs=1e-9)


def test_a_stop_between_checkpoints_saves_a_partial_checkpoint_that_resumes_bit_for_bit(
    tiny_dataset, cpu_devices, tmp_path, monkeypatch, capsys
):
    # All the randomness and the moving average, 4 steps an epoch in calls of 2, a checkpoint
    # every 2 epochs of 3: a SIGTERM during the 5th call (epoch 3's steps 1 and 2) stops after a
    # complete checkpoint of epoch 2 and the unsaved steps of epoch 3.
    config = tiny_config(
        num_epochs=3,
        dropout_rate=0.5,
        crop_padding=2,
        cutout=8,
        ema_decay=0.9,
        steps_per_dispatch=2,
        checkpoint_every=2,
    )
    devices = cpu_devices[:1]
    every_epoch = tiny_config(**{**config.to_dict(), "checkpoint_every": 1})
    straight = train.train_and_evaluate(every_epoch, tmp_path / "straight", tiny_dataset, devices)
    assert_time_split(straight.history)
    assert_time_split(artifacts.read_history(tmp_path / "straight" / "mnist"))

    dispatch, calls = TrainCalls.dispatch, [0]

    def signal_at_the_fifth_call(self, state, work):
        calls[0] += 1
        if calls[0] == 5:
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal, to the StopRequests handler
        return dispatch(self, state, work)

    run = tmp_path / "stopped" / "mnist"
    with monkeypatch.context() as patch:
        patch.setattr(TrainCalls, "dispatch", signal_at_the_fifth_call)
        with pytest.raises(
            Interrupted,
            match=r"stopped by SIGTERM during epoch 3, after step 2 of 4; saved its progress in "
            r".*/checkpoints/partial/10: re-run the same command to resume",
        ):
            train.train_and_evaluate(config, run.parent, tiny_dataset, devices)
    checkpoints = Checkpoints(run / "checkpoints", read_only=True)
    assert (checkpoints.epochs(), checkpoints.partial_steps()) == ([2], [10])
    checkpoints.close()

    # The newest checkpoint is the partial one, and says so; --best picks a complete epoch.
    mesh = make_mesh(devices)
    newest = load_trained(run, mesh=mesh)
    assert (newest.epoch, newest.progress["steps_done"], int(newest.state.step)) == (3, 2, 10)
    assert [row["epoch"] for row in newest.history] == [1, 2]
    best = load_trained(run, best=True, mesh=mesh)
    assert (best.epoch, best.progress) == (2, None)
    image = tmp_path / "digit.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(image)
    capsys.readouterr()
    assert predict.main(["--ckpt", str(run), str(image)]) == 0
    assert "mnist, epoch 3, partial: 2 of its 4 steps" in capsys.readouterr().out

    # Resumed: the epoch goes on at its step 2, with the calls of an uninterrupted epoch.
    resumed = train.train_and_evaluate(config, run.parent, tiny_dataset, devices)
    assert f"resuming {run} in epoch 3, after step 2 of 4" in capsys.readouterr().out
    leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(resumed.state))
    for (path, a), b in zip(leaves, jax.tree.leaves(jax.device_get(straight.state)), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    assert without_timing(resumed.history) == without_timing(straight.history)
    written = artifacts.read_history(run)
    assert without_timing(written) == without_timing(straight.history)
    assert_time_split(written)
    # The complete checkpoint of the last epoch replaced the partial one.
    checkpoints = Checkpoints(run / "checkpoints", read_only=True)
    assert (checkpoints.epochs(), checkpoints.partial_steps()) == ([2, 3], [])
    checkpoints.close()
    # The confusion matrix is drawn for TensorBoard with each checkpoint (epochs 2 and 3 here).
    assert confusion_steps(run) == [8, 12]
    assert confusion_steps(tmp_path / "straight" / "mnist") == [4, 8, 12]


def confusion_steps(run_dir) -> list[int]:
    accumulator = EventAccumulator(str(run_dir), size_guidance={"images": 0}).Reload()
    return [event.step for event in accumulator.Images("epoch/test_confusion")]
