"""A tiny training run in a process of its own, for the tests that kill or signal it.

python tests/train_subprocess.py WORKDIR EPOCHS
"""

import sys

import jax

from alexnet_jax.data import synthetic_dataset
from alexnet_jax.errors import cli
from alexnet_jax.train import train_and_evaluate

from conftest import tiny_config


def config(epochs: int):
    return tiny_config(num_epochs=epochs, dropout_rate=0.5, crop_padding=2, keep_checkpoints=2)


@cli
def main(workdir: str, epochs: str):
    dataset = synthetic_dataset("mnist", train_size=64, test_size=32)
    train_and_evaluate(config(int(epochs)), workdir, dataset, jax.devices()[:1])


if __name__ == "__main__":
    main(*sys.argv[1:])
