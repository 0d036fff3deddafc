"""Orbax checkpoints of the whole training state, one per epoch, under <run>/checkpoints/.

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a crash
never leaves a half-written one under its final name. Orbax does not check array bytes on
reading, so each checkpoint also carries a fingerprint of its arrays, computed on the device
when saving and verified after every restore: a flipped bit or a swapped file is refused
instead of silently loaded. Nothing is ever unpickled: arrays come from TensorStore, the rest
from JSON.
"""

import argparse
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh
from orbax.checkpoint import checkpoint_managers

from alexnet_jax.config import Derived, default_config, derive
from alexnet_jax.distributed import barrier, is_primary
from alexnet_jax.errors import UserError, first_line
from alexnet_jax.parallel import make_mesh, replicated
from alexnet_jax.state import TrainState, create_train_state

CHECKPOINTS = "checkpoints"
QUARANTINE = "checkpoints-unreadable"
# The accuracy of the split evaluated during training (row["eval_split"]): the validation split
# when the config holds one out, else the test split.
BEST_METRIC = "test_accuracy"
FINGERPRINT_VERSION = 1


class CorruptCheckpoint(UserError):
    """A checkpoint that cannot be read back as it was written."""


@jax.jit
def fingerprint(tree) -> jax.Array:
    """Two uint32 checksums per array leaf, over the leaf's bytes, computed on the device.

    Each 32-bit word is multiplied by an odd, position-dependent constant and summed modulo
    2**32, so any single changed bit changes the sum; the second sum uses other constants.
    Cheap enough to run on every save (one pass over the state on the accelerator).
    """

    def words(leaf):
        leaf = jnp.ravel(leaf)
        if leaf.dtype.itemsize == 4:
            return jax.lax.bitcast_convert_type(leaf, jnp.uint32)
        return jnp.ravel(jax.lax.bitcast_convert_type(leaf, jnp.uint8)).astype(jnp.uint32)

    def checksums(leaf):
        w = words(leaf)
        i = jnp.arange(w.shape[0], dtype=jnp.uint32)
        first = jnp.sum(w * (i * jnp.uint32(0x9E3779B1) | jnp.uint32(1)), dtype=jnp.uint32)
        second = jnp.sum(
            (w ^ (i * jnp.uint32(0x85EBCA77))) * jnp.uint32(0xC2B2AE3D), dtype=jnp.uint32
        )
        return jnp.stack([first, second])

    return jnp.stack([checksums(leaf) for leaf in jax.tree.leaves(tree)])


def state_fingerprint(state: TrainState) -> list[list[int]]:
    return np.asarray(jax.device_get(fingerprint(_arrays(state)))).tolist()


def _arrays(state: TrainState):
    arrays = {
        "params": state.params,
        "batch_stats": state.batch_stats,
        "opt_state": state.opt_state,
        "step": state.step,
        "rng": state.rng,
    }
    if state.ema is not None:
        arrays["ema"] = state.ema
    return arrays


class Checkpoints:
    """The checkpoints of one run: each holds the state, the config and the metrics history.

    The step of a checkpoint is the number of epochs completed (0, with an empty history, for a
    model imported from Keras: `keras_io`). The last `keep` epochs are kept, and the best by
    evaluation accuracy besides (validation split when held out, else test). Saving is
    asynchronous.
    """

    def __init__(self, directory: str | Path, keep: int = 3, read_only: bool = False):
        self.directory = Path(directory).absolute()
        best = lambda metrics: metrics[BEST_METRIC]  # noqa: E731
        options = ocp.CheckpointManagerOptions(
            best_fn=best,
            best_mode="max",
            preservation_policy=checkpoint_managers.AnyPreservationPolicy(
                [
                    checkpoint_managers.LatestN(keep),
                    checkpoint_managers.BestN(get_metric_fn=best, n=1),
                ]
            ),
            read_only=read_only,
            create=not read_only,
            # Temporary folders of saves that a crash cut short are removed on start.
            cleanup_tmp_directories=not read_only,
        )
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        except Exception as e:
            raise CorruptCheckpoint(
                f"cannot open the checkpoints in {self.directory}: {first_line(e)}"
            ) from e

    def epochs(self) -> list[int]:
        return list(self._manager.all_steps())

    def latest_epoch(self) -> int | None:
        return self._manager.latest_step()

    def best_epoch(self) -> int | None:
        """The epoch of the best test accuracy; the latest when none was evaluated (imported)."""
        best = self._manager.best_step()
        return best if best is not None else self.latest_epoch()

    def save(self, epoch, state, config, history) -> None:
        """Start writing the checkpoint of `epoch` (returns before the write completes)."""
        config = config.to_dict()
        topology = {"num_processes": jax.process_count(), "num_devices": jax.device_count()}
        integrity = {
            "version": FINGERPRINT_VERSION,
            "fingerprint": state_fingerprint(state),
            "config_sha256": json_sha256(config),
            "history_sha256": json_sha256(history),
            "topology_sha256": json_sha256(topology),
        }
        try:
            self._manager.save(
                epoch,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    config=ocp.args.JsonSave(config),
                    history=ocp.args.JsonSave(history),
                    topology=ocp.args.JsonSave(topology),
                    integrity=ocp.args.JsonSave(integrity),
                ),
                # An epoch-0 checkpoint (an imported model) has no metrics, and is never "best".
                metrics={BEST_METRIC: history[-1][BEST_METRIC]} if history else None,
            )
        except Exception as e:
            raise self._save_error(epoch, e) from e

    def wait(self) -> None:
        """Block until the last save is on disk; a failed write is raised here."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            raise self._save_error(self.latest_epoch(), e) from e

    def _save_error(self, epoch, error: Exception) -> UserError:
        previous = [e for e in self.epochs() if epoch is None or e < epoch]
        kept = f"epoch {previous[-1]}'s checkpoint is intact" if previous else "no earlier one"
        return UserError(
            f"saving the checkpoint of epoch {epoch} in {self.directory} failed "
            f"({first_line(error)}); {kept}: free disk space (or fix the folder) and re-run "
            "the same command to resume"
        )

    def read_config(self, epoch: int) -> ml_collections.ConfigDict:
        saved = self._read_verified(epoch).config
        config = default_config()
        unknown = set(saved) - set(config.keys())
        if unknown:
            raise CorruptCheckpoint(
                f"checkpoint {self._path(epoch)} has config fields {sorted(unknown)} that this "
                "version of alexnet_jax does not know"
            )
        try:
            config.update(saved)
        except (TypeError, ValueError) as e:
            raise self._corrupt(epoch, f"its config does not fit this version ({e})") from e
        return config

    def restore(self, epoch: int, abstract_state: TrainState, mesh: Mesh):
        """(state, history) of `epoch`, arrays placed replicated on `mesh` and verified."""
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated(mesh)),
            abstract_state,
        )
        restored = self._read_verified(epoch, state=ocp.args.StandardRestore(target))
        expected = restored.integrity["fingerprint"]
        actual = state_fingerprint(restored.state)
        if actual != expected:
            leaves = jax.tree_util.tree_leaves_with_path(_arrays(restored.state))
            differing = [
                jax.tree_util.keystr(path, simple=True, separator="/")
                for (path, _), a, e in zip(leaves, actual, expected, strict=False)
                if a != e
            ]
            raise self._corrupt(
                epoch, f"its arrays differ from what was saved ({', '.join(differing[:3])})"
            )
        if len(restored.history) != epoch:
            raise self._corrupt(epoch, "its metrics history does not match its epoch")
        return restored.state, restored.history

    def read_topology(self, epoch: int) -> dict:
        """How many processes and devices wrote the checkpoint."""
        return self._read_verified(epoch).topology

    def _read_verified(self, epoch: int, **items):
        """Read the JSON items (and `items`), checking them against the integrity record."""
        restored = self._read(
            epoch,
            config=ocp.args.JsonRestore(),
            history=ocp.args.JsonRestore(),
            topology=ocp.args.JsonRestore(),
            integrity=ocp.args.JsonRestore(),
            **items,
        )
        integrity = restored.integrity
        if not isinstance(integrity, dict) or integrity.get("version") != FINGERPRINT_VERSION:
            raise self._corrupt(epoch, "its integrity record is missing or unknown")
        for name, kind in (("config", dict), ("history", list), ("topology", dict)):
            value = getattr(restored, name)
            if not isinstance(value, kind) or json_sha256(value) != integrity.get(f"{name}_sha256"):
                raise self._corrupt(epoch, f"its {name} differs from what was saved")
        return restored

    def restore_latest_readable(
        self, abstract_state: TrainState, mesh: Mesh, check=None, report=print
    ):
        """Restore the newest checkpoint that reads back intact, moving unreadable ones aside.

        `check(epoch)` may refuse a checkpoint by raising a UserError, which propagates (a
        checkpoint of other settings is not corrupt). Returns (epoch, state, history), or None
        when there is no checkpoint at all.
        """
        epochs = self.epochs()
        if not epochs:
            return None
        for epoch in reversed(epochs):
            try:
                if check is not None:
                    check(epoch)
                state, history = self.restore(epoch, abstract_state, mesh)
                return epoch, state, history
            except CorruptCheckpoint as e:
                moved = self.quarantine(epoch)
                report(f"warning: {e}; moved it to {moved} and trying the one before")
        raise CorruptCheckpoint(
            f"none of the checkpoints in {self.directory} could be read (moved to "
            f"{self.directory.parent / QUARANTINE}): start afresh in another --workdir"
        )

    def quarantine(self, epoch: int) -> Path:
        """Move an unreadable checkpoint out of the way, keeping it for inspection."""
        target = self.directory.parent / QUARANTINE / f"{epoch}-{time.strftime('%Y%m%d-%H%M%S')}"
        if is_primary():  # every process found it unreadable; one of them moves it
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(self._path(epoch)), target)
        barrier(f"quarantine-{epoch}")
        self._manager.reload()
        return target

    def _read(self, epoch: int, **items):
        try:
            return self._manager.restore(epoch, args=ocp.args.Composite(**items))
        except Exception as e:  # TensorStore, JSON and Orbax raise many kinds here
            raise self._corrupt(epoch, first_line(e)) from e

    def _corrupt(self, epoch: int, why: str) -> CorruptCheckpoint:
        return CorruptCheckpoint(f"checkpoint {self._path(epoch)} is unreadable: {why}")

    def _path(self, epoch: int) -> Path:
        return self.directory / str(epoch)

    def close(self) -> None:
        self._manager.close()


def json_sha256(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def abstract_train_state(config, derived: Derived, steps_per_epoch: int = 1) -> TrainState:
    """Shapes and dtypes of the state a config trains, without computing anything (the
    optimiser's state has the same shapes whatever the steps per epoch)."""
    return jax.eval_shape(lambda: create_train_state(config, derived, steps_per_epoch))


def locate(path: str | Path) -> tuple[Path, int | None]:
    """Resolve what a user may pass as --ckpt: a run dir, its checkpoints dir or one epoch's dir.

    Returns (checkpoints directory, epoch or None for "pick one").
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint path {path} does not exist")
    if (path / CHECKPOINTS).is_dir():
        return path / CHECKPOINTS, None
    if path.is_dir() and any(child.name.isdigit() for child in path.iterdir()):
        return path, None
    if path.name.isdigit() and path.parent.is_dir():
        return path.parent, int(path.name)
    runs = sorted(p.parent for p in path.glob(f"*/{CHECKPOINTS}") if p.is_dir())
    if len(runs) > 1:
        names = ", ".join(str(run) for run in runs)
        raise UserError(f"{path} holds several runs ({names}): pass one of them")
    if runs:
        return runs[0] / CHECKPOINTS, None
    raise UserError(
        f"{path} is not a checkpoint: pass a run directory (<workdir>/<dataset>), "
        "its checkpoints/ folder or one epoch's folder"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The --ckpt and --best options of every command that uses a trained model."""
    parser.add_argument(
        "--ckpt",
        required=True,
        help="a run dir (<workdir>/<dataset>), its checkpoints/ or an epoch",
    )
    parser.add_argument(
        "--best",
        action="store_true",
        help="the epoch of the best validation accuracy (test accuracy when the run held out "
        "no validation split) instead of the latest",
    )


@dataclass(frozen=True)
class Trained:
    """A trained state restored from a checkpoint, with the config it was trained with."""

    config: ml_collections.ConfigDict
    state: TrainState
    epoch: int
    path: Path  # the epoch's checkpoint folder
    history: list[dict]  # the metrics rows up to that epoch
    derived: Derived  # what the config implies (dataset spec, dtype, classes)


def chosen_by(row: dict) -> str:
    """How the best epoch, whose metrics row this is, was chosen: by which split's accuracy."""
    split = row.get("eval_split", "test")
    text = f"the best by {split} accuracy ({row[BEST_METRIC]:.2%})"
    if split == "test":
        text += (
            '; no validation split was held out, so "best" is chosen on the test split '
            "(--config.validation_examples=N holds one out)"
        )
    return text


def describe(trained: Trained, best: bool = False) -> str:
    """Which checkpoint a command uses: `epoch N of DIR`, and for --best how it was chosen."""
    where = f"epoch {trained.epoch} of {trained.path.parent}"
    if best and trained.history:
        return f"{where}, {chosen_by(trained.history[-1])}"
    return where


def load_trained(ckpt: str | Path, best: bool = False, mesh: Mesh | None = None) -> Trained:
    """Restore what a user passes as --ckpt (see `locate`): the latest epoch, or the best one.

    Needs no dataset: the number of classes comes from the dataset's spec.
    """
    directory, epoch = locate(ckpt)
    checkpoints = Checkpoints(directory, read_only=True)
    try:
        if epoch is None:
            epoch = checkpoints.best_epoch() if best else checkpoints.latest_epoch()
        if epoch is None or epoch not in checkpoints.epochs():
            missing = "" if epoch is None else f" {epoch}"
            raise UserError(f"{directory} holds no checkpoint{missing}")
        config = checkpoints.read_config(epoch)
        derived = derive(config)
        abstract = abstract_train_state(config, derived)
        state, history = checkpoints.restore(epoch, abstract, mesh or make_mesh())
    finally:
        checkpoints.close()
    return Trained(config, state, epoch, directory / str(epoch), history, derived)
