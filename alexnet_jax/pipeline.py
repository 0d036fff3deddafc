"""Training data on the devices: a partition per device, shuffled per epoch.

Each device holds an equal, contiguous part of its process's training shard and draws its
slice of every global batch from it, in an order shuffled per epoch; no image crosses the host
during training. Arrays are assembled from what each process holds, so the same code serves
one process and many.
"""

import functools

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from alexnet_jax import keys
from alexnet_jax.data import TrainingData
from alexnet_jax.errors import UserError
from alexnet_jax.parallel import DATA_AXIS, check_divisible


class TrainPartitions:
    """The training images as [devices, per_device, ...], sharded over the mesh's batch axis."""

    def __init__(self, data: TrainingData, mesh: Mesh, batch_size: int):
        check_divisible(batch_size, mesh)
        local_devices = len(mesh.local_devices)
        # Equal parts on every device, even when process shards differ by an image.
        self.per_device = min(data.shard_sizes) // local_devices
        self.per_device_batch = batch_size // mesh.devices.size
        self.steps_per_epoch = self.per_device // self.per_device_batch
        if self.steps_per_epoch == 0:
            raise UserError(
                f"batch_size={batch_size} is larger than the {sum(data.shard_sizes)} training "
                f"images ({self.per_device} per device for {self.per_device_batch} per device "
                "and step)"
            )
        sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))

        def partitioned(array):
            kept = array[: local_devices * self.per_device]
            local = kept.reshape(local_devices, self.per_device, *array.shape[1:])
            return jax.make_array_from_process_local_data(sharding, local)

        self.images = partitioned(data.train.images)
        self.labels = partitioned(data.train.labels)
        self._orders = jax.jit(
            jax.shard_map(
                functools.partial(_device_order, size=self.per_device),
                mesh=mesh,
                in_specs=(PartitionSpec(), PartitionSpec()),
                out_specs=PartitionSpec(DATA_AXIS),
            )
        )
        self._take = jax.jit(
            jax.shard_map(
                functools.partial(device_batch, size=self.per_device_batch),
                mesh=mesh,
                in_specs=(PartitionSpec(DATA_AXIS),) * 3 + (PartitionSpec(),),
                out_specs=PartitionSpec(DATA_AXIS),
            )
        )

    @property
    def images_per_epoch(self) -> int:
        """The images an epoch trains on: whole batches only, over all devices."""
        return self.steps_per_epoch * self.per_device_batch * self.images.shape[0]

    def epoch_orders(self, rng, epoch: int):
        """Each device's shuffled order of its images for `epoch`, from the run's rng."""
        return self._orders(rng, epoch)

    def batch(self, orders, step: int):
        """The global batch of `step` within the epoch: {'image': uint8, 'label': int32}."""
        return self._take(self.images, self.labels, orders, step)


def _device_order(rng, epoch, *, size):
    device = jax.lax.axis_index(DATA_AXIS)
    return jax.random.permutation(keys.order_key(rng, epoch, device), size)[None]


def device_batch(images, labels, orders, step, *, size):
    """This device's slice of the batch of `step` (per-device code under `shard_map`)."""
    indices = jax.lax.dynamic_slice_in_dim(orders[0], step * size, size)
    return {"image": images[0][indices], "label": labels[0][indices]}
