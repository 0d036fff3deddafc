"""Several processes on one machine (CPU devices, gloo collectives over loopback).

Each test starts its processes itself, bounds every wait and kills what is left on failure.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from alexnet_jax import checkpoint, train
from alexnet_jax.errors import UserError
from alexnet_jax.evaluation import DeviceSplit, evaluate, make_evaluator
from alexnet_jax.parallel import make_mesh

from train_subprocess import config as run_config
from train_subprocess import dataset as tiny_dataset
from train_subprocess import start

EPOCHS = 4
TIMEOUT = 300  # seconds for any group of processes to finish


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_group(workdir, count=2, devices=1, epochs=EPOCHS, extra=()):
    address = f"127.0.0.1:{free_port()}"
    return [
        start(
            workdir,
            epochs,
            devices=devices,
            args=[
                "--coordinator",
                address,
                "--num-processes",
                str(count),
                "--process-id",
                str(i),
                *extra,
            ],
        )
        for i in range(count)
    ]


def finish_group(processes) -> list[tuple[int, str, str]]:
    deadline = time.monotonic() + TIMEOUT
    results = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=max(1, deadline - time.monotonic()))
            results.append((process.returncode, out, err))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    return results


def saved_epochs(workdir):
    folder = workdir / "mnist" / "checkpoints"
    return (
        sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []
    )


def test_two_processes_train_like_one_and_resume_after_sigterm(tmp_path, cpu_devices):
    # One process with two devices sees exactly the global batches that two processes with
    # one device each build from their shards.
    reference = train.train_and_evaluate(
        run_config(EPOCHS), tmp_path / "one", tiny_dataset(), cpu_devices[:2]
    ).history

    run = tmp_path / "two"
    group = start_group(run)
    deadline = time.monotonic() + TIMEOUT
    while not saved_epochs(run) and time.monotonic() < deadline:
        if any(p.poll() is not None for p in group):
            break
        time.sleep(0.05)
    # A stop request to process 1 alone stops both after the same step: neither is left
    # waiting in a collective, and both name the same epoch.
    group[1].send_signal(signal.SIGTERM)
    results = finish_group(group)
    assert [code for code, _, _ in results] == [143, 143], results
    stopped = [
        re.search(r"stopped by (.+?) (?:during|after) epoch (\d+)", err) for _, _, err in results
    ]
    assert all(stopped), results
    assert stopped[0][1] == "a stop request to another process" and stopped[1][1] == "SIGTERM"
    assert stopped[0][2] == stopped[1][2]
    assert "re-run the same command to resume" in results[0][2]
    assert saved_epochs(run) and saved_epochs(run)[-1] < EPOCHS

    results = finish_group(start_group(run))
    assert [code for code, _, _ in results] == [0, 0], results
    assert "resuming" in results[0][1]
    # Only process 0 prints (gloo itself may say a word on the others).
    assert not any(word in results[1][1] for word in ("resuming", "training", "epoch", "accuracy"))

    # The two-process checkpoint restores in this single process.
    trained = checkpoint.load_trained(run / "mnist", mesh=make_mesh(cpu_devices[:1]))
    expected = checkpoint.load_trained(tmp_path / "one" / "mnist", mesh=make_mesh(cpu_devices[:1]))
    assert trained.epoch == EPOCHS
    # All-reduces over gloo and within one process may add in another order: float32 rounding.
    for a, b in zip(
        jax.tree.leaves(jax.device_get(expected.state.params)),
        jax.tree.leaves(jax.device_get(trained.state.params)),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert [r["test_accuracy"] for r in trained.history] == pytest.approx(
        [r["test_accuracy"] for r in reference], abs=1 / 32
    )
    # Evaluation in one process of what two processes trained gives their figures.
    mesh = make_mesh(cpu_devices[:1])
    dataset = tiny_dataset()
    result = evaluate(
        trained.state,
        DeviceSplit(dataset.test, trained.config.eval_batch_size, mesh),
        make_evaluator(trained.config, trained.derived, mesh),
        trained.derived.num_classes,
    )
    assert result.accuracy == trained.history[-1]["test_accuracy"]

    # Resuming with another process count is refused, naming both counts.
    with pytest.raises(UserError, match=r"written by 2 process\(es\) and this run has 1"):
        train.train_and_evaluate(run_config(EPOCHS), run, dataset, cpu_devices[:1])


def test_global_batch_must_divide_by_all_devices(tmp_path):
    results = finish_group(start_group(tmp_path, extra=["--config.batch_size=15"]))
    for code, _, err in results:
        assert code == 2, err
        assert "batch_size=15 does not divide by the 2 devices" in err


def test_unreachable_coordinator_is_named_after_a_bounded_wait(tmp_path):
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    process = start(
        tmp_path,
        1,
        args=[
            "--coordinator",
            address,
            "--num-processes",
            "2",
            "--process-id",
            "1",
            "--coordinator-timeout",
            "5",
        ],
    )
    ((code, _, err),) = finish_group([process])
    assert code == 2, err
    assert f"could not join the coordinator at {address} within 5 s" in err
    assert time.monotonic() - started < 120


@pytest.mark.parametrize(
    "arguments, message",
    [
        (("notahostport", 2, 0), r"--coordinator 'notahostport' must be HOST:PORT"),
        (("127.0.0.1:1234", 0, 0), r"--num-processes 0 must be at least 1"),
        (("127.0.0.1:1234", 2, 2), r"--process-id 2 must lie in 0 \.\. 1"),
    ],
)
def test_bad_process_options_are_refused_before_joining(arguments, message):
    from alexnet_jax.distributed import initialize

    with pytest.raises(UserError, match=message):
        initialize(*arguments)


def test_distributed_outside_a_cluster_says_so_at_once():
    program = (
        "from alexnet_jax.distributed import initialize\n"
        "from alexnet_jax.errors import cli\n"
        "cli(lambda: initialize(auto=True))()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_"))},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("error: --distributed found no cluster to join"), done.stderr
