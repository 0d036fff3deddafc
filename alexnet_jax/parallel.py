"""The device mesh of data parallelism: one named batch axis over all devices."""

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from alexnet_jax.errors import UserError

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over `devices` (default: all devices) whose axis splits the batch."""
    devices = list(devices) if devices is not None else jax.devices()
    return Mesh(np.array(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters, the dataset)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Each device holds a contiguous slice of the leading (batch) axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_divisible(batch_size: int, mesh: Mesh, name: str = "batch_size") -> None:
    """A global batch must split evenly over the devices."""
    devices = mesh.devices.size
    if batch_size % devices:
        raise UserError(
            f"{name}={batch_size} does not divide by the {devices} devices: "
            f"use a multiple of {devices}"
        )
