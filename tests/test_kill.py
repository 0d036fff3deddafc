"""Crashes and stop requests: SIGKILL at random points, Ctrl-C and SIGTERM.

Each test drives real training processes (tests/train_subprocess.py) and bounds every wait.
"""

import random
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from alexnet_jax import artifacts
from alexnet_jax.checkpoint import Checkpoints
from alexnet_jax.parallel import make_mesh
from alexnet_jax.run import TIMING_FIELDS

from conftest import new_state
from train_subprocess import config as run_config
from train_subprocess import start as start_training

EPOCHS = 4
PROCESS_TIMEOUT = 240  # seconds; a run of 4 tiny epochs takes about 30


def start(workdir) -> subprocess.Popen:
    return start_training(workdir, EPOCHS)


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=PROCESS_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return process.returncode, out, err


def wait_for(condition, process, what: str, timeout: float = PROCESS_TIMEOUT):
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            return False  # the run ended first
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)
    return True


def checkpoint_dir(workdir):
    return workdir / "mnist" / "checkpoints"


def writing(workdir) -> bool:
    """Orbax writes a checkpoint into a temporary folder before renaming it."""
    folder = checkpoint_dir(workdir)
    return folder.is_dir() and any("tmp" in p.name for p in folder.iterdir())


def saved_epochs(workdir) -> list[int]:
    folder = checkpoint_dir(workdir)
    return (
        sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []
    )


def final_state(workdir, epoch=None):
    checkpoints = Checkpoints(checkpoint_dir(workdir), read_only=True)
    epoch = epoch or checkpoints.latest_epoch()
    abstract = new_state(run_config(EPOCHS))
    state, history = checkpoints.restore(epoch, abstract, make_mesh(jax.devices()[:1]))
    return jax.device_get((state.params, state.batch_stats, state.opt_state, state.step)), history


def assert_every_checkpoint_reads_back(workdir):
    for epoch in saved_epochs(workdir):
        final_state(workdir, epoch)  # raises CorruptCheckpoint if any array or file is off


def without_timing(history):
    return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in history]


def run_to_the_end(workdir) -> float:
    """Train to the end; returns the seconds from the start to the first checkpoint."""
    process, started = start(workdir), time.monotonic()
    assert wait_for(lambda: saved_epochs(workdir), process, "the first checkpoint")
    first_checkpoint = time.monotonic() - started
    code, _, err = finish(process)
    assert code == 0, err
    return first_checkpoint


def kill(process, run, moment: str, kills: list) -> None:
    if process.poll() is not None:
        pytest.fail(f"the run ended before the kill {moment}: lengthen the run")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    kills.append((moment, saved_epochs(run), writing(run)))
    assert_every_checkpoint_reads_back(run)


def test_sigkill_at_random_points_loses_nothing_but_the_current_epoch(tmp_path):
    reference = tmp_path / "reference"
    first_checkpoint = run_to_the_end(reference)

    run = tmp_path / "killed"
    rng = random.Random(2026)
    kills = []
    # 1. During a checkpoint write: its temporary folder is still there after the kill. (Should
    # the write end between seeing the folder and the kill, the kill is made again.)
    while not (kills and kills[-1][2]):
        assert len(kills) < 3, f"no kill landed during a checkpoint write: {kills}"
        process = start(run)
        assert wait_for(lambda: writing(run), process, "a checkpoint write")
        kill(process, run, "during a checkpoint write", kills)
    # 2. Just after a checkpoint.
    process = start(run)
    done = len(saved_epochs(run))
    assert wait_for(lambda: len(saved_epochs(run)) > done, process, "the next checkpoint")
    time.sleep(rng.uniform(0, 0.5))
    kill(process, run, "after a checkpoint", kills)
    # 3. At a random time before a restarted run's first checkpoint could be on disk.
    process = start(run)
    time.sleep(rng.uniform(0, 0.9 * first_checkpoint))
    kill(process, run, "at a random time", kills)

    code, out, err = finish(start(run))
    assert code == 0, err
    assert not writing(run)  # the interrupted write's temporary folder is gone
    expected, expected_history = final_state(reference)
    resumed, resumed_history = final_state(run)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    assert without_timing(resumed_history) == without_timing(expected_history)
    assert without_timing(artifacts.read_history(run / "mnist")) == without_timing(expected_history)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_stop_signal_ends_cleanly_and_says_how_to_resume(tmp_path, signum, code):
    process = start(tmp_path)
    assert wait_for(lambda: len(saved_epochs(tmp_path)) >= 1, process, "the first checkpoint")
    process.send_signal(signum)
    returncode, _, err = finish(process)
    assert returncode == code, err
    name = signal.Signals(signum).name
    assert f"stopped by {name}" in err
    assert "re-run the same command to resume" in err
    assert_every_checkpoint_reads_back(tmp_path)
    if signum == signal.SIGINT:
        returncode, out, err = finish(start(tmp_path))
        assert returncode == 0, err
        assert "resuming" in out
        assert saved_epochs(tmp_path)[-1] == EPOCHS
