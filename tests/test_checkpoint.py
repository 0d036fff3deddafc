import dataclasses
import shutil
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest

from alexnet_jax import train
from alexnet_jax.checkpoint import (
    QUARANTINE,
    Checkpoints,
    CorruptCheckpoint,
    in_memory_note,
    load_trained,
    locate,
)
from alexnet_jax.data import data_record, synthetic_dataset, training_data_from
from alexnet_jax.errors import UserError
from alexnet_jax.locks import RUN_LOCK, Lock
from alexnet_jax.parallel import make_mesh

from conftest import ODD_SHAPE, new_state, tiny_config, train_until_interrupted


def save_two_epochs(directory, config, state):
    """Complete checkpoints of epochs 1 and 2 of `state` in `directory`."""
    checkpoints = Checkpoints(directory)
    for epoch in (1, 2):
        checkpoints.save(epoch, state, config, [row(e, 0.5) for e in range(1, epoch + 1)])
    checkpoints.wait()
    checkpoints.close()


def row(epoch, accuracy):
    return {"epoch": epoch, "test_accuracy": accuracy}


def perturbed_state(config):
    """A state whose every array differs from a fresh one, so a restore cannot pass by luck."""
    state = new_state(config)
    noise = lambda x: x + 0.5 if np.issubdtype(x.dtype, np.floating) else x + 3  # noqa: E731
    return state.replace(
        params=jax.tree.map(noise, state.params),
        batch_stats=jax.tree.map(noise, state.batch_stats),
        opt_state=jax.tree.map(noise, state.opt_state),
        step=state.step + 11,
    )


def test_save_then_restore_gives_identical_arrays(saved_run):
    tmp_path, config, saved = saved_run
    fresh = new_state(config)
    restored, history = Checkpoints(tmp_path, read_only=True).restore(1, fresh, make_mesh())
    assert history == [row(1, 0.5)]
    saved_leaves = jax.tree.leaves(jax.device_get(saved))
    restored_leaves = jax.tree.leaves(jax.device_get(restored))
    assert len(saved_leaves) == len(restored_leaves)
    for a, b in zip(saved_leaves, restored_leaves, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert Checkpoints(tmp_path, read_only=True).read_config(1) == config


def test_reading_a_run_says_nothing_of_its_own(saved_run, capfd):
    # Orbax warns of every read-only opening ("... read_only=True, setting ...", "Given
    # directory is read only"): the commands that read a run keep that off the terminal.
    tmp_path, _, _ = saved_run
    capfd.readouterr()
    Checkpoints(tmp_path, read_only=True).read_config(1)
    out, err = capfd.readouterr()
    assert "read only" not in err and "read_only" not in err, err


def test_saving_without_an_evaluation_says_nothing_of_orbax(tmp_path, caplog):
    # As the Keras import saves its checkpoint 0: Orbax warned that no metric ranks it.
    config = tiny_config()
    checkpoints = Checkpoints(tmp_path)
    with caplog.at_level("WARNING"):
        checkpoints.save(0, new_state(config), config, [])
        checkpoints.wait()
    checkpoints.close()
    assert not [r for r in caplog.records if "tracked_metric" in r.getMessage()], caplog.text


def test_keeps_the_last_n_and_the_best(tmp_path):
    config = tiny_config()
    state = new_state(config)
    checkpoints = Checkpoints(tmp_path, keep=2)
    history = []
    for epoch, accuracy in enumerate([0.3, 0.9, 0.5, 0.6, 0.7], start=1):
        history.append(row(epoch, accuracy))
        checkpoints.save(epoch, state, config, history)
    checkpoints.wait()
    assert checkpoints.epochs() == [2, 4, 5]
    assert checkpoints.best_epoch() == 2 and checkpoints.latest_epoch() == 5


def test_locate_accepts_run_checkpoints_and_epoch_dirs(tmp_path):
    config = tiny_config()
    run = tmp_path / "mnist"
    checkpoints = Checkpoints(run / "checkpoints")
    checkpoints.save(1, new_state(config), config, [row(1, 0.1)])
    checkpoints.wait()
    ckpts = (run / "checkpoints").absolute()
    assert locate(run) == (run / "checkpoints", None)
    assert locate(run / "checkpoints") == (run / "checkpoints", None)
    assert locate(run / "checkpoints" / "1") == (run / "checkpoints", 1)
    assert locate(tmp_path) == (run / "checkpoints", None)
    assert ckpts.is_dir()


@pytest.mark.parametrize("kind", ["missing", "empty", "file"])
def test_locate_rejects_what_is_not_a_checkpoint(tmp_path, kind):
    path = tmp_path / "x"
    if kind == "empty":
        path.mkdir()
    elif kind == "file":
        path.write_text("hello")
    with pytest.raises(UserError, match="does not exist|is not a checkpoint"):
        locate(path)


@pytest.fixture
def saved_run(tmp_path):
    """A checkpoint of epoch 1 in tmp_path, with the state that went into it."""
    config = tiny_config()
    state = perturbed_state(config)
    checkpoints = Checkpoints(tmp_path)
    checkpoints.save(1, state, config, [row(1, 0.5)])
    checkpoints.wait()
    return tmp_path, config, state


# The record of a run on `synthetic_dataset("mnist", 64, 32)` (tests/conftest.py's tiny_run).
SYNTHETIC_MNIST_RECORD = {
    "source": "in-memory",
    "name": "mnist",
    "class_names": [f"class {i}" for i in range(10)],
    "train_images": 64,
    "test_images": 32,
    "image_shape": [28, 28, 1],
}


def test_a_checkpoint_records_where_its_data_came_from(saved_run):
    directory, config, state = saved_run  # epoch 1, saved without a record, as before it
    memory = data_record(config, synthetic_dataset("mnist", 64, 32))
    assert memory == SYNTHETIC_MNIST_RECORD
    checkpoints = Checkpoints(directory)
    checkpoints.save(2, state, config, [row(1, 0.5), row(2, 0.5)], memory)
    progress = {"epoch": 3, "steps_done": 1, "steps_per_epoch": 4, "totals": {}}
    partial = checkpoints.save_partial(state, config, [row(1, 0.5), row(2, 0.5)], progress, memory)
    checkpoints.wait()
    assert checkpoints.read_data(2) == memory
    assert checkpoints.read_data(int(partial.name), partial=True) == memory
    # A checkpoint from before the record is of a TFDS run (its version not recorded).
    assert checkpoints.read_data(1) == {"source": "tfds", "name": "mnist"}
    # The record is under the checkpoint's integrity record, as the config is.
    (directory / "2" / "data" / "metadata").write_text('{"source": "tfds", "name": "mnist"}')
    with pytest.raises(CorruptCheckpoint, match=r"/2 is unreadable: its data differs from what"):
        checkpoints.read_data(2)
    shutil.rmtree(partial / "data")
    with pytest.raises(CorruptCheckpoint, match=r"is unreadable: its data record is missing"):
        checkpoints.read_data(int(partial.name), partial=True)


def test_a_run_records_the_data_it_was_trained_on(tiny_run):
    # tests/conftest.py trains it on 64 + 32 synthetic images of a Dataset named "mnist".
    assert load_trained(tiny_run).data == SYNTHETIC_MNIST_RECORD


def test_a_model_trained_on_a_dataset_is_named_by_its_classes_and_noted(tiny_run):
    trained = load_trained(tiny_run)
    assert trained.in_memory and trained.class_names == tuple(f"class {i}" for i in range(10))
    assert in_memory_note(trained, "what instead") == (
        f"note: {tiny_run}/checkpoints/1 was trained on the in-memory Dataset 'mnist': what instead"
    )
    for tfds in ({"source": "tfds", "name": "mnist"}, None):  # recorded, or a Trained made by hand
        on_tfds = dataclasses.replace(trained, data=tfds)
        assert not on_tfds.in_memory and in_memory_note(on_tfds, "what instead") is None
        assert on_tfds.class_names == tuple(str(i) for i in range(10))  # TFDS's MNIST's


def test_a_model_takes_images_of_the_shape_it_was_trained_on(odd_shaped_run):
    trained = load_trained(odd_shaped_run)
    assert trained.data["image_shape"] == list(ODD_SHAPE) and trained.source_shape == ODD_SHAPE
    # A record from before the shape was recorded, a TFDS run, a Trained made by hand: TFDS's.
    older = {k: v for k, v in trained.data.items() if k != "image_shape"}
    for data in (older, {"source": "tfds", "name": "mnist"}, None):
        assert dataclasses.replace(trained, data=data).source_shape == (28, 28, 1)


def test_a_run_on_tfds_records_its_name_and_version(
    tiny_dataset, cpu_devices, tmp_path, monkeypatch
):
    def read_from_tfds(config, *shard):  # stands in for TFDS's MNIST, which is slow to train on
        return training_data_from(tiny_dataset, config, *shard)

    monkeypatch.setattr("alexnet_jax.run.load_training_data", read_from_tfds)
    trained = train.train_and_evaluate(tiny_config(num_epochs=1), tmp_path, None, cpu_devices[:1])
    recorded = {"source": "tfds", "name": "mnist", "version": "3.0.1"}
    assert trained.data == load_trained(tmp_path / "mnist").data == recorded


def test_best_with_a_named_checkpoint_is_refused(tmp_path):
    # It took the named epoch and called it "the best".
    config, run = tiny_config(), tmp_path / "mnist"
    checkpoints = Checkpoints(run / "checkpoints")
    checkpoints.save(1, new_state(config), config, [row(1, 0.5)])
    checkpoints.wait()
    (run / "checkpoints" / "partial" / "5").mkdir(parents=True)  # what a stop names
    for named in ("checkpoints/1", "checkpoints/partial/5", "checkpoints/partial"):
        with pytest.raises(UserError) as error:
            load_trained(run / named, best=True)
        assert str(error.value) == (
            f"--best picks a run's best checkpoint, and --ckpt names one ({run / named}): pass "
            f"--ckpt {run} with --best, or leave --best out"
        )
    assert load_trained(run / "checkpoints" / "1").epoch == 1  # without --best it is read


def largest_file(folder):
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def restore(directory, config):
    return Checkpoints(directory, read_only=True).restore(1, new_state(config), make_mesh())


@pytest.mark.parametrize("damage", ["missing", "not JSON"])
def test_a_damaged_save_record_is_one_warning_and_the_checkpoint_still_reads(
    saved_run, damage, capfd, caplog
):
    # Orbax logged an ERROR with the whole file for each listing of the checkpoints.
    directory, config, saved = saved_run
    record = directory / "1" / "_CHECKPOINT_METADATA"
    if damage == "missing":
        record.unlink()
    else:
        record.write_text("garbage{" * 1000)
    capfd.readouterr()
    with caplog.at_level("INFO"):
        restored, _ = restore(directory, config)
        restore(directory, config)  # a second reading of the run says nothing more
    err = capfd.readouterr().err
    assert not [r for r in caplog.records if "Metadata file" in r.getMessage()], caplog.text
    said = "is missing" if damage == "missing" else "is damaged (not JSON)"
    assert err.count(f"warning: {record} {said}; it only records when") == 1, err
    assert "garbage" not in err and len(err.splitlines()) == 1, err
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_flipped_bit_in_the_arrays_is_refused(saved_run):
    directory, config, _ = saved_run
    data = largest_file(directory / "1" / "state")
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    data.write_bytes(bytes(blob))
    with pytest.raises(
        CorruptCheckpoint, match=r"checkpoint .*/1 is unreadable: its arrays differ"
    ):
        restore(directory, config)


def test_a_truncated_array_file_is_refused(saved_run):
    directory, config, _ = saved_run
    data = largest_file(directory / "1" / "state")
    with open(data, "r+b") as f:
        f.truncate(data.stat().st_size // 3)
    with pytest.raises(CorruptCheckpoint, match=r"checkpoint .*/1 is unreadable"):
        restore(directory, config)


def test_an_unreadable_checkpoint_ends_a_command_with_one_line_naming_the_others(tmp_path):
    # A truncated array file fails Orbax's restore while TensorStore's other reads are in flight:
    # their callbacks, and the coroutines left unfinished, printed hundreds of traceback lines
    # after the error (2026-12-07).
    config = tiny_config()
    save_two_epochs(tmp_path / "checkpoints", config, perturbed_state(config))
    data = largest_file(tmp_path / "checkpoints" / "2" / "state")
    with open(data, "r+b") as f:
        f.truncate(data.stat().st_size // 3)
    load = (
        "import sys; from alexnet_jax.checkpoint import load_trained; "
        "from alexnet_jax.errors import cli; cli(lambda: load_trained(sys.argv[1]))()"
    )
    for _ in range(3):  # the leftovers' timing varies: most runs printed some
        done = subprocess.run(
            [sys.executable, "-c", load, str(tmp_path)], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 2, done.stderr[-2000:]
        (line,) = done.stderr.splitlines()
    assert line.startswith(f"error: checkpoint {tmp_path / 'checkpoints' / '2'} is unreadable: ")
    assert "TensorStore details" not in line
    assert line.endswith(
        f"pass another of the run's checkpoints (epochs 1), for example --ckpt "
        f"{tmp_path / 'checkpoints' / '1'}"
    )


def test_a_damaged_config_is_refused(saved_run):
    directory, _, _ = saved_run
    (directory / "1" / "config" / "metadata").write_text('{"dataset": ')
    with pytest.raises(CorruptCheckpoint, match=r"checkpoint .*/1 is unreadable"):
        Checkpoints(directory, read_only=True).read_config(1)


def test_restoring_never_unpickles(saved_run, monkeypatch):
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint restore tried to unpickle")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(np, "load", refuse)
    directory, config, saved = saved_run
    restored, _ = restore(directory, config)
    np.testing.assert_array_equal(
        restored.params["dense_2"]["bias"], saved.params["dense_2"]["bias"]
    )


def test_resume_falls_back_to_the_last_readable_checkpoint(
    tiny_dataset, cpu_devices, tmp_path, monkeypatch, capsys
):
    config = tiny_config(num_epochs=3)
    train_until_interrupted(config, tmp_path, tiny_dataset, cpu_devices[:1], 2, monkeypatch)

    run = tmp_path / "mnist"
    data = largest_file(run / "checkpoints" / "2" / "state")
    blob = bytearray(data.read_bytes())
    blob[1000] ^= 0xFF
    data.write_bytes(bytes(blob))

    history = train.train_and_evaluate(config, tmp_path, tiny_dataset, cpu_devices[:1]).history
    printed = capsys.readouterr().out
    assert "checkpoints/2 is unreadable" in printed and "trying the one before" in printed
    assert "resuming" in printed and "after epoch 1" in printed
    assert [r["epoch"] for r in history] == [1, 2, 3]
    # The bad checkpoint is kept aside, not deleted.
    assert [p.name.split("-")[0] for p in (run / QUARANTINE).iterdir()] == ["2"]


def test_a_checkpoint_of_another_dataset_is_refused_and_left_alone(tiny_dataset, tmp_path):
    cifar = tiny_config(dataset="cifar10", num_epochs=1)
    checkpoints = Checkpoints(tmp_path / "mnist" / "checkpoints")
    checkpoints.save(1, new_state(cifar), cifar, [row(1, 0.5)])
    checkpoints.wait()
    with pytest.raises(UserError, match=r"other settings \(dataset: 'cifar10' -> 'mnist'"):
        train.train_and_evaluate(tiny_config(num_epochs=1), tmp_path, tiny_dataset)
    assert (tmp_path / "mnist" / "checkpoints" / "1").is_dir()
    assert not (tmp_path / "mnist" / QUARANTINE).exists()


@pytest.mark.parametrize("held", [True, False])
def test_a_checkpoint_that_the_running_training_removes_as_it_is_read_is_picked_again(
    tmp_path, held
):
    # Orbax removes an old checkpoint file by file (keep_checkpoints): for a moment its folder is
    # there and unreadable, and eval, report, predict and export called it damaged.
    config, run = tiny_config(), tmp_path / "mnist"
    save_two_epochs(run / "checkpoints", config, new_state(config))
    training = Lock(run / RUN_LOCK)
    if held:
        assert training.acquire() is None  # another open file: as another process holds it
    removing = run / "checkpoints" / "2"
    shutil.rmtree(removing / "state")  # half removed; the rest goes a moment later
    if not held:  # no training holds the run: nothing removes checkpoints, so it is damaged
        with pytest.raises(CorruptCheckpoint, match=r"checkpoints/2 is unreadable"):
            load_trained(run)
        return
    later = threading.Timer(0.3, shutil.rmtree, (removing,))
    later.start()
    try:
        assert load_trained(run).epoch == 1
    finally:
        later.join()
        training.release()
