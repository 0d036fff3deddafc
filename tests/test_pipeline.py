"""The training images on the devices: each epoch's order (README: How the training step is
parallel)."""

import numpy as np
import pytest

from alexnet_jax import keys
from alexnet_jax.data import Dataset, Split, synthetic_dataset, training_data_from
from alexnet_jax.parallel import make_mesh
from alexnet_jax.pipeline import TrainPartitions

from conftest import tiny_config


def numbered_dataset(size: int) -> Dataset:
    """Training images whose first two pixels hold the image's number."""
    dataset = synthetic_dataset("mnist", size, 32)
    images = dataset.train.images.copy()
    images[:, 0, 0, 0], images[:, 0, 1, 0] = np.arange(size) % 256, np.arange(size) // 256
    return Dataset("mnist", Split(images, dataset.train.labels), dataset.test, dataset.class_names)


def epoch_numbers(partitions: TrainPartitions, seed: int, epoch: int) -> np.ndarray:
    """The numbers of the images of every global batch of `epoch`, in training order."""
    _, run_key = keys.seed_keys(seed)  # the key a fresh training state holds
    orders = partitions.epoch_orders(run_key, epoch)
    batches = [
        np.asarray(partitions.batch(orders, step)["image"])
        for step in range(partitions.steps_per_epoch)
    ]
    images = np.concatenate(batches)
    return images[:, 0, 0, 0].astype(int) + 256 * images[:, 0, 1, 0].astype(int)


def partitions_of(size: int, devices, batch_size: int = 16) -> TrainPartitions:
    config = tiny_config(batch_size=batch_size)
    data = training_data_from(numbered_dataset(size), config)
    return TrainPartitions(data, make_mesh(devices), batch_size)


@pytest.mark.parametrize("devices", [1, 2])
def test_every_training_image_comes_once_per_epoch_in_a_new_order(cpu_devices, devices):
    partitions = partitions_of(64, cpu_devices[:devices])
    assert partitions.steps_per_epoch == 4
    orders = {}
    for seed in (0, 1):
        for epoch in (0, 1, 2):
            numbers = epoch_numbers(partitions, seed, epoch)
            assert sorted(numbers) == list(range(64)), (seed, epoch)
            orders[seed, epoch] = tuple(numbers)
    # Six different orders: the epochs of a seed differ, and so do the seeds' epochs.
    assert len(set(orders.values())) == 6
    # The same seed and epoch give the same order (a resumed run trains what it would have).
    assert tuple(epoch_numbers(partitions, 0, 1)) == orders[0, 1]


def test_images_beyond_whole_batches_are_left_out_not_repeated(cpu_devices):
    # 70 images on 2 devices: 35 each, 4 steps of 8 per device; each epoch leaves out the 3
    # last of each device's shuffled order.
    partitions = partitions_of(70, cpu_devices[:2])
    assert partitions.images_per_epoch == 64
    for epoch in range(3):
        numbers = epoch_numbers(partitions, 0, epoch)
        assert len(numbers) == len(set(numbers)) == 64
        assert set(numbers) <= set(range(70))
