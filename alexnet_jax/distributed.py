"""Several processes, one training: JAX's distributed runtime, and what only process 0 does.

Every process runs the same program over one global device mesh; JAX's coordination service
(`jax.distributed.initialize`) connects them, and on CPUs the collectives go over gloo.
"""

import socket
import time

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
    if num_processes is not None and num_processes < 1:
        raise UserError(f"--num-processes {num_processes} must be at least 1")
    if num_processes is not None and not 0 <= (process_id or 0) < num_processes:
        raise UserError(f"--process-id {process_id} must lie in 0 .. {num_processes - 1}")
    if coordinator:
        host_and_port(coordinator)  # process 0 too: JAX would fail on it with an IndexError
    if coordinator and process_id != 0:
        # JAX aborts the whole process when it cannot reach the coordinator; check first, so
        # that the user gets a line naming the address instead.
        wait_for_coordinator(coordinator, timeout_seconds)
    elif coordinator:
        print(
            f"process 0: waiting up to {timeout_seconds} s for {num_processes} processes at "
            f"{coordinator}",
            flush=True,
        )
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
        if auto and not coordinator and "coordinator_address" in str(e):
            raise UserError(
                "--distributed found no cluster to join (no SLURM, Open MPI, Kubernetes or Cloud "
                "TPU variables): run without it, or give --coordinator, --num-processes and "
                "--process-id"
            ) from e
        raise UserError(
            f"could not join {where} ({str(e).strip().splitlines()[0][:200]}): check the "
            f"address, that process 0 runs, and that every process was given the same "
            f"--num-processes (each waits up to {timeout_seconds} s)"
        ) from e


def host_and_port(address: str) -> tuple[str, int]:
    """--coordinator's HOST:PORT (an IPv6 host in brackets), or a one-line error."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--coordinator {address!r} must be HOST:PORT, e.g. 10.0.0.1:1234")
    return host.strip("[]"), int(port)


def wait_for_coordinator(address: str, timeout_seconds: float) -> None:
    """Retry a TCP connection to HOST:PORT until it opens or `timeout_seconds` pass."""
    host, port = host_and_port(address)
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            with socket.create_connection((host, port), timeout=2):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise UserError(
                    f"could not join the coordinator at {address} within {timeout_seconds} s "
                    f"({e.strerror or e}): check the address and that process 0 runs"
                ) from e
            time.sleep(0.5)


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


def any_process(flag: bool) -> bool:
    """Whether `flag` is true on any process (a collective: every process must call it)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.array([flag]))))


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
