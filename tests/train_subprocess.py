"""A tiny training run in a process of its own, for the tests that kill, signal or group it.

    python tests/train_subprocess.py --config tests/tiny_experiment.py --workdir W [train options]

It is `python -m alexnet_jax.train` (same options, same initialisation of several processes)
on the synthetic dataset of the tests.
"""

import os
import subprocess
import sys
from pathlib import Path

from alexnet_jax import train
from alexnet_jax.config import load_config
from alexnet_jax.data import synthetic_dataset

from conftest import ROOT

EXPERIMENT = Path(__file__).with_name("tiny_experiment.py")


TRAIN_SIZE = "ALEXNET_JAX_TEST_TRAIN_SIZE"  # more training images: longer epochs


def dataset():
    return synthetic_dataset("mnist", train_size=int(os.environ.get(TRAIN_SIZE, 64)), test_size=32)


def config(epochs: int):
    """The config the processes run, for an in-process reference run."""
    config = load_config(EXPERIMENT)
    config.num_epochs = epochs
    return config


def start(workdir, epochs: int, devices: int = 1, args=(), train_size=64) -> subprocess.Popen:
    """Start a training process with `devices` CPU devices; its output is piped."""
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{ROOT}",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        TRAIN_SIZE: str(train_size),
    }
    command = [
        sys.executable,
        str(Path(__file__)),
        "--config",
        str(EXPERIMENT),
        "--workdir",
        str(workdir),
        f"--config.num_epochs={epochs}",
        *args,
    ]
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


if __name__ == "__main__":
    train.main(sys.argv[1:], dataset=dataset())
