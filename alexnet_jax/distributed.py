"""Several processes, one training: JAX's distributed runtime, and what only process 0 does.

Every process runs the same program over one global device mesh; JAX's coordination service
(`jax.distributed.initialize`) connects them, and on CPUs the collectives go over gloo.
"""

import jax
import numpy as np
from jax.experimental import multihost_utils

from alexnet_jax.errors import UserError


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    auto: bool = False,
    timeout_seconds: int = 300,
) -> None:
    """Join the other processes, from explicit arguments or (`auto`) from the cluster's variables.

    `auto` uses JAX's own detection (SLURM, Open MPI, Kubernetes/GKE, Cloud TPU). Without any
    of these, this is a single process and nothing happens.
    """
    explicit = (coordinator, num_processes, process_id)
    if not auto and all(value is None for value in explicit):
        return
    if not auto and any(value is None for value in explicit):
        raise UserError("give all of --coordinator HOST:PORT, --num-processes N and --process-id I")
    if num_processes is not None and not 0 <= (process_id or 0) < num_processes:
        raise UserError(f"--process-id {process_id} must lie in 0 .. {num_processes - 1}")
    # CPU devices of different processes talk through gloo; GPUs and TPUs have their own.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=timeout_seconds,
        )
    except Exception as e:  # the runtime raises RuntimeError/ValueError/XlaRuntimeError
        where = f"the coordinator at {coordinator}" if coordinator else "the cluster's coordinator"
        raise UserError(
            f"could not join {where} within {timeout_seconds} s "
            f"({str(e).strip().splitlines()[0][:200]}): check the address, that process 0 "
            "runs, and that every process was given the same --num-processes"
        ) from e


def is_primary() -> bool:
    """Process 0 prints, writes metrics and plots; the others stay quiet."""
    return jax.process_index() == 0


def log(*args, **kwargs) -> None:
    if is_primary():
        print(*args, **kwargs, flush=True)


def gather(array) -> np.ndarray:
    """A global array's whole value on every process (a plain fetch on a single process)."""
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(array))
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
