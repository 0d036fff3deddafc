"""The run directory, <workdir>/<dataset>/: checked before anything is read, and resumed from.

A run directory holds one run: its checkpoints, metrics and figures. Before the data is read,
`prepare` makes sure it can be written and has room for a checkpoint; `resume` restores its
newest readable checkpoint when the settings allow it.
"""

import shutil
from pathlib import Path

import jax
import ml_collections
from jax.sharding import Mesh

from alexnet_jax.checkpoint import Checkpoints
from alexnet_jax.config import RESUMABLE_CHANGES
from alexnet_jax.errors import UserError
from alexnet_jax.state import TrainState


def prepare(run_dir: Path, checkpoint_bytes: int) -> None:
    """Fail now, not after an epoch, if the run directory cannot be written or is full."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{jax.process_index()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to the run directory {run_dir}: {e.strerror}") from e
    free = shutil.disk_usage(run_dir).free
    needed = int(checkpoint_bytes * 1.2) + (16 << 20)  # a checkpoint, its metadata and plots
    if free < needed:
        raise UserError(
            f"only {free >> 20} MiB free in {run_dir}, and a checkpoint needs about "
            f"{needed >> 20} MiB: free disk space or use another --workdir"
        )


def state_bytes(state: TrainState) -> int:
    """The bytes of a state's arrays (concrete or abstract): about what its checkpoint takes."""
    return sum(x.nbytes for x in jax.tree.leaves(state) if hasattr(x, "nbytes"))


def resume(
    checkpoints: Checkpoints,
    config: ml_collections.ConfigDict,
    abstract_state: TrainState,
    mesh: Mesh,
    report=print,
):
    """(epoch, state, history) of the newest checkpoint that reads back intact and may resume
    with `config`, or None when there is none. Unreadable checkpoints are moved aside; one of
    other settings or another process count is refused with a UserError."""

    def check(epoch):
        where = checkpoints.directory / str(epoch)
        check_resumable(checkpoints.read_config(epoch), config, where)
        check_topology(checkpoints.read_topology(epoch), where)

    return checkpoints.restore_latest_readable(abstract_state, mesh, check=check, report=report)


def check_resumable(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict, where):
    """A run resumes only with the settings it was started with (up to harmless ones)."""
    changed = [
        f"{key}: {saved[key]!r} -> {config[key]!r}"
        for key in config.keys()
        if key not in RESUMABLE_CHANGES and saved.get(key) != config[key]
    ]
    if changed:
        raise UserError(
            f"{where} holds a run with other settings ({'; '.join(changed)}): "
            "use another --workdir, or the run's own settings to resume it"
        )


def check_topology(saved: dict, where) -> None:
    """A run resumes with as many processes as it was written by (their data shards differ)."""
    processes = jax.process_count()
    if saved.get("num_processes") != processes:
        raise UserError(
            f"{where} was written by {saved.get('num_processes')} process(es) and this run has "
            f"{processes}: resume it with --num-processes {saved.get('num_processes')}, or start "
            "afresh in another --workdir"
        )
