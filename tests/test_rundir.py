"""The run directory: one training at a time, its problems refused before the data is read, a
disk that fills during a save, and commands reading a run in progress.

Real processes (tests/train_subprocess.py), signals and, as root, a real small filesystem.
"""

import asyncio
import contextlib
import gc
import os
import re
import signal
import socket
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

from alexnet_jax import artifacts, checkpoint, export, predict, report, rundir, train
from alexnet_jax import eval as eval_command
from alexnet_jax.checkpoint import Checkpoints
from alexnet_jax.data import synthetic_dataset
from alexnet_jax.errors import UserError
from alexnet_jax.locks import Lock
from alexnet_jax.parallel import make_mesh
from alexnet_jax.run import TIMING_FIELDS
from alexnet_jax.rundir import LIBRARY_LOG, LOCK, check_resumable, with_timings

from conftest import new_state, tiny_config, tmpfs
from train_subprocess import EXPERIMENT, start

TIMEOUT = 400  # seconds for any training process (a loaded 2-core machine is slow)


class Unread:
    """A dataset that fails the test when anything reads it."""

    def __getattr__(self, name):
        raise AssertionError(f"the data was read ({name}) before the run directory was checked")


def finish(process) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return process.returncode, out, err


def wait_for(condition, process, what: str):
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the training ended before {what}: {process.communicate()[1][-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.parametrize(
    "problem",
    [
        "unwritable",
        "held",
        "no room",
        "larger than the disk",
        "other settings",
        "checkpoints is a file",
        "a run as workdir",
        "inside a run",
    ],
)
def test_run_directory_problems_are_refused_before_the_data_is_read(problem, tmp_path):
    workdir, config = tmp_path, tiny_config(num_epochs=1)
    run = workdir / "mnist"
    expected = {
        "unwritable": "cannot write to the run directory",
        "held": rf"is in use by another training \(pid {os.getpid()} on host ",
        "no room": r"only \d+ MiB free in .*, and a checkpoint of the model at image_size 67 "
        r"needs about \d+ MiB: free disk space or use another --workdir",
        "larger than the disk": r"needs about \d+ MiB: that is more than the whole disk "
        r"\(\d+ MiB\): use a smaller image_size",
        "other settings": r"other settings \(learning_rate: 0.5 -> 0.01\)",
        "checkpoints is a file": "cannot open the checkpoints",
        "a run as workdir": r"--workdir .*/mnist is a run's folder \(it holds checkpoints/\), .*"
        r"pass --workdir \S+ to resume that run",
        "inside a run": r"--workdir .*/mnist/checkpoints lies inside the run .*/mnist: pass a "
        "folder outside it",
    }[problem]
    holder = Lock(run / LOCK)
    with contextlib.ExitStack() as cleanup:
        if problem == "unwritable":
            workdir = tmp_path / "file"
            workdir.write_text("a file where the workdir should be")
        elif problem == "held":
            run.mkdir()
            assert holder.acquire() is None  # another open file: refused as another process is
            cleanup.callback(holder.release)
        elif problem == "no room":
            # A real filesystem with room for the tiny state's checkpoint (165 MiB of arrays),
            # but not that much free.
            workdir = cleanup.enter_context(tmpfs(tmp_path / "small", 300))
            with open(workdir / "filler", "wb") as filler:
                filler.write(bytes(200 << 20))
        elif problem == "larger than the disk":
            workdir = cleanup.enter_context(tmpfs(tmp_path / "small", 100))
        elif problem == "other settings":
            other = tiny_config(num_epochs=1, learning_rate=0.5)
            saved = Checkpoints(run / "checkpoints")
            saved.save(1, new_state(other), other, [{"epoch": 1, "test_accuracy": 0.5}])
            saved.wait()
            saved.close()
        elif problem == "a run as workdir":  # runs/mnist passed where runs was meant
            (run / "checkpoints").mkdir(parents=True)
            workdir = run
        elif problem == "inside a run":  # its checkpoints/ passed as a workdir
            (run / "checkpoints").mkdir(parents=True)
            (run / "config.json").write_text("{}")
            workdir = run / "checkpoints"
        else:
            run.mkdir()
            (run / "checkpoints").write_text("not a folder")
        with pytest.raises(UserError, match=expected):
            train.train_and_evaluate(config, workdir, Unread())
        if problem in ("no room", "larger than the disk"):
            assert not (workdir / "mnist").exists()  # the refused new run left no folder
    if problem == "held":  # released: the next training may have it
        assert Lock(run / LOCK).acquire() is None
    if problem in ("a run as workdir", "inside a run"):
        assert not (workdir / "mnist").exists()  # nothing made inside the run


class Missing:
    """A dataset that is not there: reading it fails as a missing TFDS copy does."""

    def __getattr__(self, name):
        raise UserError("mnist:3.0.1 is not prepared")


def test_a_new_run_that_fails_before_writing_anything_leaves_no_folders_behind(tmp_path):
    config = tiny_config(num_epochs=1)
    with pytest.raises(UserError, match="is not prepared"):
        train.train_and_evaluate(config, tmp_path / "new" / "runs", Missing())
    assert list(tmp_path.iterdir()) == []  # neither runs/mnist, its lock, nor new/runs

    # A folder that was there before stays, and so does one with something else in it.
    (tmp_path / "runs" / "mnist").mkdir(parents=True)
    with pytest.raises(UserError, match="is not prepared"):
        train.train_and_evaluate(config, tmp_path / "runs", Missing())
    assert os.listdir(tmp_path / "runs" / "mnist") == ["checkpoints"]


def test_a_finished_run_leaves_no_lock_file(tiny_run):
    assert tiny_run.is_dir() and not (tiny_run / LOCK).exists()


def test_a_disk_that_fills_during_a_save_ends_the_run_with_one_line_naming_that_save(tmp_path):
    # Room for one checkpoint of the tiny run (about 155 MiB once trained) but not two: the
    # write of epoch 2's fails in Orbax's threads while epoch 3 trains.
    with tmpfs(tmp_path / "disk", 250) as disk:
        code, out, err = finish(start(disk, 3))
        run = disk / "mnist"
        assert code == 2, err
        errors = [line for line in re.split(r"[\r\n]+", err) if "error" in line.lower()]
        assert len(errors) == 1, err
        assert re.search(
            r"error: saving the checkpoint of epoch 2 in .* failed \(.*No space left on device.*"
            r"\); epoch 1's checkpoint is intact: free disk space .* re-run the same command",
            errors[0],
        ), errors[0]
        assert "Traceback" not in err and "Traceback" not in out
        # Orbax's tracebacks went to the run's library log; its temporary folder was removed.
        assert "No space left on device" in (run / LIBRARY_LOG).read_text()
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["1"]
        restored = Checkpoints(run / "checkpoints", read_only=True)
        restored.restore(1, new_state(tiny_config()), make_mesh())
        restored.close()


def test_write_errors_nobody_read_go_to_the_library_log_not_the_terminal(tmp_path, capfd):
    # What a save that fails in several of Orbax's asyncio writes leaves: futures whose errors
    # were never read, which asyncio would log with a traceback when they are collected (in
    # that test's runs, at exit on the terminal, one run in three).
    loop = asyncio.new_event_loop()
    failed = [loop.create_future() for _ in range(3)]
    for i, future in enumerate(failed):
        future.set_exception(OSError(28, f"No space left on device (write {i})"))
    loop.close()
    with rundir.library_log(tmp_path / LIBRARY_LOG):
        pass
    text = (tmp_path / LIBRARY_LOG).read_text()
    assert [f"write {i}" in text for i in range(3)] == [True] * 3, text
    del failed, future
    gc.collect()  # collected now: asyncio would log each one here had it not been read
    captured = capfd.readouterr()
    assert "never retrieved" not in captured.err + captured.out, captured.err


def test_reading_the_failed_writes_reads_no_attribute_of_other_objects(tmp_path):
    # As TFDS's lazy proxies of its dataset builders, which import a module (and logged a
    # deprecation warning) when any attribute, `__class__` included, is read.
    touched = []

    class Lazy:
        def __getattribute__(self, name):
            touched.append(name)
            return object.__getattribute__(self, name)

    lazy = Lazy()
    with rundir.library_log(tmp_path / LIBRARY_LOG):
        pass
    assert touched == [] and lazy is not None


def test_a_running_training_holds_its_directory_is_readable_and_stops_promptly(
    tmp_path, cpu_devices, monkeypatch, capsys
):
    workdir = tmp_path / "runs"
    run = workdir / "mnist"
    steps = 24  # per epoch: 384 images in batches of 16
    # Metrics fetched once an epoch, so that the calls in flight are bounded by the driver alone.
    process = start(workdir, 20, args=["--config.log_every=1000"], train_size=16 * steps)
    try:
        wait_for(lambda: (run / "checkpoints" / "1").is_dir(), process, "the first checkpoint")

        # A second training in the same directory: refused at once, naming the holder.
        with pytest.raises(SystemExit) as exit_info:
            train.main(["--config", str(EXPERIMENT), "--workdir", str(workdir)], dataset=Unread())
        assert exit_info.value.code == 2
        message = capsys.readouterr().err
        assert f"in use by another training (pid {process.pid} on host {socket.gethostname()}" in (
            message
        ), message

        # The commands that use a trained model read its latest complete checkpoint.
        trained = checkpoint.load_trained(run, mesh=make_mesh(cpu_devices[:1]))
        assert trained.progress is None and trained.epoch >= 1
        image = tmp_path / "digit.png"
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(image)
        assert predict.main(["--ckpt", str(run), str(image)]) == 0
        tiny = synthetic_dataset("mnist", train_size=64, test_size=32)
        test_split = (tiny.test, tiny.class_names)
        monkeypatch.setattr(eval_command, "load_test_split", lambda *args, **kwargs: test_split)
        eval_command.main(["--ckpt", str(run)])
        report.write_report(run, dataset=tiny, devices=cpu_devices[:1], out=tmp_path / "r.html")
        export.main(["--ckpt", str(run), "--out", str(tmp_path / "export"), "--platforms", "cpu"])
        printed = capsys.readouterr().out
        assert len(re.findall(r"mnist, epoch \d+ of ", printed)) == 4, printed  # four commands
        assert (tmp_path / "r.html").stat().st_size > 0

        # A stop a few steps into an epoch: the calls already dispatched are at most two, so it
        # takes effect after a few steps, not at the end of the epoch.
        done = max(len(artifacts.read_history(run)), 1)
        wait_for(lambda: len(artifacts.read_history(run)) > done, process, "an epoch's start")
        step_seconds = artifacts.read_history(run)[-1]["train_seconds"] / steps
        time.sleep(3 * step_seconds)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code, _, err = finish(process)
        took = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert code == 143, err
    stop = re.search(r"stopped by SIGTERM during epoch (\d+), after step (\d+) of 24; saved", err)
    assert stop, err
    print(f"stopped {took:.1f} s after SIGTERM, {stop[2]} steps into the epoch, {step_seconds} s")
    assert int(stop[1]) == done + 2
    assert 1 <= int(stop[2]) <= steps // 2, err
    stopped = checkpoint.load_trained(run, mesh=make_mesh(cpu_devices[:1]))
    assert stopped.progress["steps_done"] == int(stop[2]) and stopped.epoch == done + 2
    assert Lock(run / LOCK).acquire() is None  # the lock went with the process


def test_restored_rows_take_the_timings_written_after_their_checkpoint():
    saved = [{"epoch": 1, "train_loss": 1.0, "train_seconds": 2.0}]
    written = [{"epoch": 1, "train_loss": 1.0, "train_seconds": 2.0, "checkpoint_seconds": 0.3}]
    assert with_timings(saved, written, TIMING_FIELDS) == written
    other = [{"epoch": 1, "train_loss": 1.5, "train_seconds": 2.0, "checkpoint_seconds": 0.3}]
    assert with_timings(saved, other, TIMING_FIELDS) == saved  # another run's row: not taken


def test_asking_a_run_for_more_epochs_says_why_it_is_another_run():
    saved = tiny_config(num_epochs=2)
    with pytest.raises(
        UserError,
        match=r"holds a run with other settings \(num_epochs: 2 -> 5\) \(the learning-rate "
        r"schedule spans num_epochs: more epochs are a new run\): use another --workdir",
    ):
        check_resumable(saved, tiny_config(num_epochs=5), "runs/mnist")
    with pytest.raises(UserError, match=r"\(learning_rate: 0.5 -> 0.01\): use another"):
        check_resumable(tiny_config(learning_rate=0.5), tiny_config(), "runs/mnist")


IN_MEMORY = {"source": "in-memory", "name": "mnist", "class_names": [], "train_images": 64}


@pytest.mark.parametrize(
    "saved, given, message",
    [
        # The run, and another training with the same config and data passed or not: they
        # shared <workdir>/mnist, and the second resumed the first, mixing the two.
        (
            None,
            "Dataset",
            r"trained on TFDS mnist, and this run reads the in-memory Dataset 'mnist'",
        ),
        (
            {"source": "tfds", "name": "mnist", "version": "3.0.1"},
            "Dataset",
            r"trained on TFDS mnist:3.0.1, and this run reads the in-memory Dataset 'mnist'",
        ),
        (
            IN_MEMORY,
            "TFDS",
            r"trained on the in-memory Dataset 'mnist', and this run reads TFDS mnist:3.0.1",
        ),
        (
            {**IN_MEMORY, "name": "digits"},
            "Dataset",
            r"trained on the in-memory Dataset 'digits', and this run reads the in-memory "
            r"Dataset 'mnist'",
        ),
        (
            {"source": "tfds", "name": "mnist", "version": "2.0.0"},
            "TFDS",
            r"trained on TFDS mnist:2.0.0, and this run reads TFDS mnist:3.0.1",
        ),
    ],
)
def test_a_run_resumes_only_with_the_data_it_was_trained_on(
    saved, given, message, tmp_path, monkeypatch
):
    config = tiny_config(num_epochs=1)
    checkpoints = Checkpoints(tmp_path / "mnist" / "checkpoints")
    checkpoints.save(1, new_state(config), config, [{"epoch": 1, "test_accuracy": 0.5}], saved)
    checkpoints.wait()
    checkpoints.close()

    def read(*args):
        raise AssertionError("the data was read before the run's own data was checked")

    monkeypatch.setattr("alexnet_jax.run.load_training_data", read)
    monkeypatch.setattr("alexnet_jax.run.training_data_from", read)
    dataset = synthetic_dataset("mnist", 64, 32) if given == "Dataset" else None
    with pytest.raises(UserError) as refused:
        train.train_and_evaluate(config, tmp_path, dataset)
    assert re.fullmatch(
        rf".*/mnist/checkpoints/1 holds a run {message}: use another --workdir, or the run's "
        "own data to resume it",
        str(refused.value),
    ), refused.value
    assert sorted(p.name for p in (tmp_path / "mnist" / "checkpoints").iterdir()) == ["1"]
