"""Orbax checkpoints of the whole training state, one per epoch, under <run>/checkpoints/.

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a crash
never leaves a half-written one under its final name. Orbax does not check array bytes on
reading, so each checkpoint also carries a fingerprint of its arrays, computed on the device
when saving and verified after every restore: a flipped bit or a swapped file is refused
instead of silently loaded. Nothing is ever unpickled: arrays come from TensorStore, the rest
from JSON.
"""

import argparse
import asyncio
import errno
import hashlib
import json
import logging
import shutil
import sys
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
from alexnet_jax.data import IN_MEMORY, TFDS, describe_data
from alexnet_jax.distributed import barrier, is_primary
from alexnet_jax.errors import UserError, first_line
from alexnet_jax.locks import RUN_LOCK, Lock
from alexnet_jax.parallel import make_mesh, replicated
from alexnet_jax.state import TrainState, create_train_state

CHECKPOINTS = "checkpoints"
PARTIAL = "partial"  # <run>/checkpoints/partial/<global step>/: a stopped epoch's progress
DATA = "data"  # the item that records where the run's data came from (`data.data_record`)
QUARANTINE = "checkpoints-unreadable"
TEMPORARY_SUFFIX = ".orbax-checkpoint-tmp"  # Orbax writes <id><suffix>... and renames it when done
# The accuracy of the split evaluated during training (row["eval_split"]): the validation split
# when the config holds one out, else the test split.
BEST_METRIC = "test_accuracy"
FINGERPRINT_VERSION = 1


class ReadOnlyNotices(logging.Filter):
    """Orbax announces each read-only opening, which eval, predict, report and export ask for,
    and each save without an evaluation to rank it by (a model imported from Keras has none),
    with warnings the user cannot act on: they are dropped."""

    NOTICES = (
        "CheckpointManagerOptions.read_only=True",
        "Given directory is read only",
        "Requested `tracked_metric`; did not provide metrics.",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.NOTICES)


class SaveRecordNotices(logging.Filter):
    """Orbax reads each checkpoint's _CHECKPOINT_METADATA (when it was saved) as it lists them,
    and logs an ERROR, with the whole file, for one that is damaged or gone. The checkpoint reads
    without it, so one warning line per file says so instead."""

    NOTICES = {
        "Metadata file does not exist": "is missing",
        "Failed to read Metadata file": "cannot be read",
        "Failed to json parse Metadata file": "is damaged (not JSON)",
    }

    def __init__(self):
        super().__init__()
        self.said = set()

    def filter(self, record: logging.LogRecord) -> bool:
        what = next((v for k, v in self.NOTICES.items() if str(record.msg).startswith(k)), None)
        if what is None:
            return True
        path = str(record.args[0]) if record.args else "a checkpoint's save record"
        if path not in self.said:
            self.said.add(path)
            print(
                f"warning: {path} {what}; it only records when that checkpoint was saved, "
                "and the checkpoint is read without it",
                file=sys.stderr,
                flush=True,
            )
        return False


# Orbax logs through absl's logger.
logging.getLogger("absl").addFilter(ReadOnlyNotices())
logging.getLogger("absl").addFilter(SaveRecordNotices())


def silence_failed_read_leftovers() -> None:
    """Keep off the terminal what a failed restore leaves behind, once its error is reported.

    When one array of a checkpoint cannot be read, Orbax's restore fails at once and closes its
    asyncio event loop while TensorStore's reads of the other arrays are still in flight. As
    each of them ends, TensorStore's thread finds the loop closed and prints a traceback
    ("RuntimeError: Event loop is closed"), and the coroutines and tasks left unfinished print
    theirs when collected: hundreds of lines, around the one-line error or the warning that the
    checkpoint was moved aside. Those are dropped from the first read on (some print before the
    failed restore returns); any other error still prints.
    """
    if getattr(sys.excepthook, "silences_failed_reads", False):
        return
    excepthook, unraisablehook = sys.excepthook, sys.unraisablehook

    def leftover(error) -> bool:
        return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"

    def quiet_excepthook(kind, error, traceback):
        if not leftover(error):
            excepthook(kind, error, traceback)

    def quiet_unraisablehook(unraisable):
        unfinished = asyncio.iscoroutine(unraisable.object) or leftover(unraisable.exc_value)
        if not unfinished:
            unraisablehook(unraisable)

    quiet_excepthook.silences_failed_reads = True
    sys.excepthook, sys.unraisablehook = quiet_excepthook, quiet_unraisablehook
    logging.getLogger("asyncio").addFilter(
        lambda record: "exception was never retrieved" not in str(record.msg)
    )


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

    A complete checkpoint, `<directory>/<epoch>/`, is taken at the end of an epoch (every
    `checkpoint_every` epochs, and the last); its step is the number of epochs completed (0,
    with an empty history, for a model imported from Keras: `keras_io`). The last `keep` are
    kept, and the best by evaluation accuracy besides (validation split when held out, else
    test). A partial checkpoint, `<directory>/partial/<global step>/`, is taken when a stop
    request ends a run between complete ones: it holds the state after the steps that ran and
    the epoch's progress (`progress`, written by `run.EpochProgress`), so that the run resumes
    at that step with nothing lost. It is never evaluated, so it never counts as best; it is
    removed once a later complete checkpoint is on disk. Saving is asynchronous.
    """

    def __init__(self, directory: str | Path, keep: int = 3, read_only: bool = False):
        self.directory = Path(directory).absolute()
        self.read_only = read_only
        best = lambda metrics: metrics[BEST_METRIC]  # noqa: E731
        self._manager = self._open(
            self.directory,
            ocp.CheckpointManagerOptions(
                best_fn=best,
                best_mode="max",
                preservation_policy=checkpoint_managers.AnyPreservationPolicy(
                    [
                        checkpoint_managers.LatestN(keep),
                        checkpoint_managers.BestN(get_metric_fn=best, n=1),
                    ]
                ),
                **self._access(),
            ),
        )
        self._partial = None  # the manager of partial/, opened when there is one
        self._writing = None  # (partial, id) of the save in flight
        self._partials()

    def _access(self) -> dict:
        return dict(
            read_only=self.read_only,
            create=not self.read_only,
            # Temporary folders of saves that a crash or a full disk cut short are removed on
            # start (a read-only reader leaves them: they may be a running training's).
            cleanup_tmp_directories=not self.read_only,
        )

    @staticmethod
    def _open(directory: Path, options) -> ocp.CheckpointManager:
        try:
            if options.create:  # here, not in Orbax's threads, so that a failure is one line
                directory.mkdir(parents=True, exist_ok=True)
            return ocp.CheckpointManager(directory, options=options)
        except Exception as e:
            raise CorruptCheckpoint(
                f"cannot open the checkpoints in {directory}: {first_line(e)}"
            ) from e

    def _partials(self, create: bool = False) -> ocp.CheckpointManager | None:
        folder = self.directory / PARTIAL
        if self._partial is None and (create or folder.is_dir()):
            self._partial = self._open(folder, ocp.CheckpointManagerOptions(**self._access()))
        return self._partial

    def _manager_of(self, partial: bool) -> ocp.CheckpointManager:
        manager = self._partials() if partial else self._manager
        if manager is None:
            raise UserError(f"{self.directory} holds no partial checkpoint")
        return manager

    def epochs(self) -> list[int]:
        """The epochs of the complete checkpoints, oldest first."""
        return list(self._manager.all_steps())

    def latest_epoch(self) -> int | None:
        return self._manager.latest_step()

    def best_epoch(self) -> int | None:
        """The epoch of the best evaluation accuracy; the latest if none was evaluated."""
        best = self._manager.best_step()
        return best if best is not None else self.latest_epoch()

    def partial_steps(self) -> list[int]:
        """The ids (global steps) of the partial checkpoints, oldest first."""
        manager = self._partials()
        return list(manager.all_steps()) if manager is not None else []

    def newest_partial(self) -> int | None:
        """The partial checkpoint newer than every complete one, if there is one (it is then
        the run's newest state; an older one is left over from before a later complete one)."""
        steps = self.partial_steps()
        if not steps:
            return None
        return (
            steps[-1]
            if self.read_progress(steps[-1])["epoch"] > (self.latest_epoch() or 0)
            else None
        )

    def path(self, id: int, partial: bool = False) -> Path:
        return self.directory / PARTIAL / str(id) if partial else self.directory / str(id)

    def save(self, epoch, state, config, history, data: dict | None = None) -> None:
        """Start writing the complete checkpoint of `epoch` (returns before the write completes).
        `data` records where the run's data came from (`data.data_record`)."""
        self._save(
            False,
            epoch,
            state,
            {"config": config.to_dict(), "history": history, **_data_item(data)},
            # An epoch-0 checkpoint (an imported model) has no metrics, and is never "best".
            metrics={BEST_METRIC: history[-1][BEST_METRIC]} if history else None,
        )

    def save_partial(self, state, config, history, progress: dict, data: dict | None = None):
        """Start writing a partial checkpoint: the state within a stopped epoch, the completed
        epochs' `history` and the epoch's `progress` (and `data`, as `save`). Returns its
        folder."""
        step = int(state.step)
        if step not in self.partial_steps():  # (else a resumed run stopped before its next step)
            items = {"config": config.to_dict(), "history": history, "progress": progress}
            items.update(_data_item(data))
            self._save(True, step, state, items)
        return self.path(step, partial=True)

    def _save(self, partial: bool, id: int, state, items: dict, metrics=None) -> None:
        # The save before must be on disk first, so that its failure is reported as its own.
        self.wait()
        # The devices the state is on (a run may train on fewer than the machine has).
        devices = getattr(jax.tree.leaves(state)[0], "sharding", None)
        devices = len(devices.device_set) if devices is not None else 1
        topology = {"num_processes": jax.process_count(), "num_devices": devices}
        # Copies: Orbax writes them in the background while the caller goes on with its rows.
        items = json.loads(json.dumps({**items, "topology": topology}))
        integrity = {
            "version": FINGERPRINT_VERSION,
            "fingerprint": state_fingerprint(state),
            **{f"{name}_sha256": json_sha256(value) for name, value in items.items()},
        }
        json_args = {name: ocp.args.JsonSave(value) for name, value in items.items()}
        manager = self._partials(create=True) if partial else self._manager
        try:
            manager.save(
                id,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    integrity=ocp.args.JsonSave(integrity),
                    **json_args,
                ),
                metrics=metrics,
            )
        except Exception as e:
            self._remove_temporary(partial, id)
            raise self._save_error(partial, id, e) from e
        self._writing = (partial, id)

    def wait(self) -> None:
        """Block until the save in flight is on disk; a failed write is raised here, naming its
        checkpoint. Then the partial checkpoints older than it go (all of them are, after a
        complete one: a partial checkpoint ends a run)."""
        if self._writing is None:
            return
        (partial, id), self._writing = self._writing, None
        try:
            self._manager_of(partial).wait_until_finished()
        except Exception as e:
            self._remove_temporary(partial, id)
            raise self._save_error(partial, id, e) from e
        for step in self.partial_steps():
            if not partial or step < id:
                self._partials().delete(step)

    def _remove_temporary(self, partial: bool, id: int) -> None:
        """Remove what a failed save left (Orbax would remove it at the next start)."""
        if is_primary():
            for folder in self.path(id, partial).parent.glob(f"{id}{TEMPORARY_SUFFIX}*"):
                shutil.rmtree(folder, ignore_errors=True)

    def _save_error(self, partial: bool, id: int, error: Exception) -> UserError:
        what = (
            f"the partial checkpoint at step {id}" if partial else f"the checkpoint of epoch {id}"
        )
        previous = [e for e in self.epochs() if partial or e < id]
        if previous:
            kept = f"epoch {previous[-1]}'s checkpoint is intact"
            then = "re-run the same command to resume"
        else:
            kept, then = "no earlier checkpoint was saved", "re-run the same command to start"
        return UserError(
            f"saving {what} in {self.directory} failed ({why_save_failed(error)}); {kept}: free "
            f"disk space (or fix the folder) and {then}"
        )

    def read_config(self, id: int, partial: bool = False) -> ml_collections.ConfigDict:
        saved = self._read_verified(id, partial).config
        config = default_config()
        unknown = set(saved) - set(config.keys())
        if unknown:
            raise CorruptCheckpoint(
                f"checkpoint {self.path(id, partial)} has config fields {sorted(unknown)} that "
                "this version of alexnet_jax does not know"
            )
        try:
            config.update(saved)
        except (TypeError, ValueError) as e:
            raise self._corrupt(id, partial, f"its config does not fit this version ({e})") from e
        return config

    def read_topology(self, id: int, partial: bool = False) -> dict:
        """How many processes and devices wrote the checkpoint."""
        return self._read_verified(id, partial).topology

    def read_data(self, id: int, partial: bool = False) -> dict:
        """Where the run's data came from (`data.data_record`); for a checkpoint written before
        runs recorded it, TFDS's dataset of its config (version not recorded)."""
        restored = self._read_verified(id, partial)
        if DATA in restored:
            return restored[DATA]
        return {"source": TFDS, "name": restored.config.get("dataset")}

    def read_progress(self, step: int) -> dict:
        """A partial checkpoint's progress: `epoch` (1-based, the stopped one), `steps_done`,
        `steps_per_epoch` and what `run.EpochProgress` needs to go on."""
        return self._read_verified(step, True).progress

    def restore(self, id: int, abstract_state: TrainState, mesh: Mesh, partial: bool = False):
        """(state, history) of epoch `id` (or of the partial checkpoint `id`), arrays placed
        replicated on `mesh` and verified."""
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated(mesh)),
            abstract_state,
        )
        restored = self._read_verified(id, partial, state=ocp.args.StandardRestore(target))
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
                id, partial, f"its arrays differ from what was saved ({', '.join(differing[:3])})"
            )
        completed = restored.progress["epoch"] - 1 if partial else id
        if len(restored.history) != completed:
            raise self._corrupt(id, partial, "its metrics history does not match its epoch")
        return restored.state, restored.history

    def _read_verified(self, id: int, partial: bool = False, **items):
        """Read the JSON items (and `items`), checking them against the integrity record."""
        names = {"config": dict, "history": list, "topology": dict}
        if partial:
            names["progress"] = dict
        if (self.path(id, partial) / DATA).is_dir():  # checkpoints from before it have none
            names[DATA] = dict
        restored = self._read(
            id,
            partial,
            integrity=ocp.args.JsonRestore(),
            **{name: ocp.args.JsonRestore() for name in names},
            **items,
        )
        integrity = restored.integrity
        if not isinstance(integrity, dict) or integrity.get("version") != FINGERPRINT_VERSION:
            raise self._corrupt(id, partial, "its integrity record is missing or unknown")
        if f"{DATA}_sha256" in integrity and DATA not in names:
            raise self._corrupt(id, partial, f"its {DATA} record is missing")
        for name, kind in names.items():
            value = getattr(restored, name)
            if not isinstance(value, kind) or json_sha256(value) != integrity.get(f"{name}_sha256"):
                raise self._corrupt(id, partial, f"its {name} differs from what was saved")
        return restored

    def restore_latest_readable(
        self, abstract_state: TrainState, mesh: Mesh, check=None, report=print
    ) -> "Restored | None":
        """Restore the newest checkpoint that reads back intact (a partial one when it is the
        newest), moving unreadable ones aside.

        `check(id, partial)` may refuse a checkpoint by raising a UserError, which propagates (a
        checkpoint of other settings is not corrupt). Returns None when there is no checkpoint.
        """
        if not self.epochs() and not self.partial_steps():
            return None
        try:
            newest_partial = self.newest_partial()
        except CorruptCheckpoint as e:
            newest_partial = None
            moved = self.quarantine(self.partial_steps()[-1], partial=True)
            report(f"warning: {e}; moved it to {moved} and trying the one before")
        candidates = [(newest_partial, True)] if newest_partial is not None else []
        candidates += [(epoch, False) for epoch in reversed(self.epochs())]
        for id, partial in candidates:
            try:
                if check is not None:
                    check(id, partial)
                state, history = self.restore(id, abstract_state, mesh, partial)
                progress = self.read_progress(id) if partial else None
                topology = self.read_topology(id, partial)
                return Restored(state, history, progress, self.path(id, partial), topology)
            except CorruptCheckpoint as e:
                moved = self.quarantine(id, partial)
                report(f"warning: {e}; moved it to {moved} and trying the one before")
        raise CorruptCheckpoint(
            f"none of the checkpoints in {self.directory} could be read (moved to "
            f"{self.directory.parent / QUARANTINE}): start afresh in another --workdir"
        )

    def quarantine(self, id: int, partial: bool = False) -> Path:
        """Move an unreadable checkpoint out of the way, keeping it for inspection."""
        name = f"{PARTIAL}-{id}" if partial else str(id)
        target = self.directory.parent / QUARANTINE / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        if is_primary():  # every process found it unreadable; one of them moves it
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(self.path(id, partial)), target)
        barrier(f"quarantine-{name}")
        self._manager_of(partial).reload()
        return target

    def _read(self, id: int, partial: bool, **items):
        # Before the read, not after its failure: the leftovers may print while it fails.
        silence_failed_read_leftovers()
        try:
            return self._manager_of(partial).restore(id, args=ocp.args.Composite(**items))
        except Exception as e:  # TensorStore, JSON and Orbax raise many kinds here
            # TensorStore's message goes on with a dump of its internals: the first part says it.
            why = first_line(e).split(" See full TensorStore details")[0].rstrip(". ")
            raise self._corrupt(id, partial, why) from e

    def _corrupt(self, id: int, partial: bool, why: str) -> CorruptCheckpoint:
        return CorruptCheckpoint(f"checkpoint {self.path(id, partial)} is unreadable: {why}")

    def close(self) -> None:
        self._manager.close()
        if self._partial is not None:
            self._partial.close()


@dataclass(frozen=True)
class Restored:
    """What resuming reads back: the state, the completed epochs' rows and, from a partial
    checkpoint, the stopped epoch's progress."""

    state: TrainState
    history: list[dict]
    progress: dict | None
    path: Path
    topology: dict  # how many processes and devices wrote it


def _data_item(data: dict | None) -> dict:
    return {} if data is None else {DATA: data}


def why_save_failed(error: BaseException) -> str:
    """The cause of a failed write in a few words: TensorStore's messages run to several
    hundred characters of paths, with the cause at the end."""
    text = str(error)
    if getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in text:
        return "No space left on device"
    return first_line(error)


def json_sha256(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def abstract_train_state(config, derived: Derived, steps_per_epoch: int = 1) -> TrainState:
    """Shapes and dtypes of the state a config trains, without computing anything (the
    optimiser's state has the same shapes whatever the steps per epoch)."""
    return jax.eval_shape(lambda: create_train_state(config, derived, steps_per_epoch))


def locate(path: str | Path) -> tuple[Path, int | None]:
    """Resolve what a user may pass as --ckpt: a run dir, its checkpoints dir, one epoch's dir,
    or a partial checkpoint's (`checkpoints/partial/<step>`, or `checkpoints/partial`).

    Returns (the folder that holds it, its id or None for "pick one"); the folder is named
    `partial` for partial checkpoints.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint path {path} does not exist")
    if (path / CHECKPOINTS).is_dir():
        return path / CHECKPOINTS, None
    if path.is_dir() and (
        path.name == CHECKPOINTS or any(child.name.isdigit() for child in path.iterdir())
    ):
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
        help="the complete epoch of the best validation accuracy (test accuracy when the run "
        "held out no validation split) instead of the newest checkpoint",
    )


@dataclass(frozen=True)
class Trained:
    """A trained state restored from a checkpoint, with the config it was trained with."""

    config: ml_collections.ConfigDict
    state: TrainState
    epoch: int  # for a partial checkpoint, the stopped epoch
    path: Path  # the checkpoint's folder
    history: list[dict]  # the metrics rows of the completed epochs
    derived: Derived  # what the config implies (dataset spec, dtype, classes)
    progress: dict | None = None  # a partial checkpoint's (see `Checkpoints.read_progress`)
    data: dict | None = None  # where its data came from (`Checkpoints.read_data`)

    @property
    def in_memory(self) -> bool:
        """Whether it was trained on an in-memory Dataset, not on TFDS (`data.data_record`)."""
        return bool(self.data) and self.data.get("source") == IN_MEMORY

    @property
    def class_names(self) -> tuple[str, ...]:
        """Its classes' names: the in-memory Dataset's it was trained on, else TFDS's."""
        if self.in_memory:
            return tuple(self.data["class_names"])
        return self.derived.dataset.class_names

    @property
    def source_shape(self) -> tuple[int, int, int]:
        """[H, W, C] of the images it takes (`predict`, the exports), before the model's resize
        to `image_size`: the in-memory Dataset's training images', else TFDS's (also for a run
        recorded before its images' shape was)."""
        if self.in_memory and self.data.get("image_shape"):
            return tuple(int(n) for n in self.data["image_shape"])
        return self.derived.dataset.image_shape

    @property
    def label(self) -> str:
        """What the checkpoint holds, as the commands print it."""
        if self.progress is None:
            return f"epoch {self.epoch}"
        done, steps = self.progress["steps_done"], self.progress["steps_per_epoch"]
        return (
            f"epoch {self.epoch}, partial: {done} of its {steps} steps (saved when the run was "
            "stopped; not evaluated during training)"
        )


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
    where = f"{trained.label} of {trained.path.parent}"
    if best and trained.history:
        return f"{where}, {chosen_by(trained.history[-1])}"
    return where


def in_memory_note(trained: Trained, instead: str) -> str | None:
    """What a command says of a model trained on an in-memory Dataset, which is not kept with
    the run: `note: <checkpoint> was trained on the in-memory Dataset '<name>': <instead>`,
    printed on stderr once the command's work is done (a command that fails says one line).
    None for a model trained on TFDS."""
    if not trained.in_memory:
        return None
    return f"note: {trained.path} was trained on {describe_data(trained.data)}: {instead}"


def load_trained(ckpt: str | Path, best: bool = False, mesh: Mesh | None = None) -> Trained:
    """Restore what a user passes as --ckpt (see `locate`): the newest checkpoint, or with
    `best` the complete epoch of the best evaluation accuracy.

    The newest is a partial checkpoint when a stop ended the run after the last complete one;
    `best` never picks a partial one (it was never evaluated). A run in progress can be read:
    only checkpoints whose write is complete are seen, and one that the training removes while
    it is read is picked again. Needs no dataset: the number of classes comes from the
    dataset's spec.
    """
    directory, id = locate(ckpt)
    partial = directory.name == PARTIAL
    if partial:
        directory = directory.parent
    mesh = mesh or make_mesh()
    for attempt in range(2):
        checkpoints = Checkpoints(directory, read_only=True)
        chosen = None
        try:
            try:
                chosen, is_partial = _choose(checkpoints, id, partial, best)
                config = checkpoints.read_config(chosen, is_partial)
                derived = derive(config)
                abstract = abstract_train_state(config, derived)
                state, history = checkpoints.restore(chosen, abstract, mesh, is_partial)
                progress = checkpoints.read_progress(chosen) if is_partial else None
                data = checkpoints.read_data(chosen, is_partial)
            except CorruptCheckpoint as e:
                where = None if chosen is None else checkpoints.path(chosen, is_partial)
                if attempt == 0 and id is None and _removed_meanwhile(directory, where):
                    continue  # a running training removed it (its keep policy): pick again
                if chosen is None:
                    raise
                what_else = other_checkpoints(checkpoints, None if is_partial else chosen)
                raise CorruptCheckpoint(f"{e}; {what_else}") from e
        finally:
            checkpoints.close()
        epoch = progress["epoch"] if progress else chosen
        path = checkpoints.path(chosen, is_partial)
        return Trained(config, state, epoch, path, history, derived, progress, data)
    raise AssertionError("unreachable")


def _removed_meanwhile(directory: Path, checkpoint: Path | None) -> bool:
    """Whether the checkpoint that could not be read (None: the one `_choose` looked at) was
    being removed by the training that holds the run, so that another may be picked.

    Orbax removes an old checkpoint file by file: for a moment its folder is there and cannot be
    read. While a training holds the run, that is waited out (a second at most); without one,
    nothing removes checkpoints, and an unreadable one is damaged.
    """
    if Lock.held_by_another(directory.parent / RUN_LOCK) is None:
        return checkpoint is not None and not checkpoint.exists()
    if checkpoint is None:
        time.sleep(0.2)
        return True
    deadline = time.monotonic() + 1.0
    while checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return not checkpoint.exists()


def other_checkpoints(checkpoints: Checkpoints, unreadable: int | None) -> str:
    """What to do when a checkpoint (the epoch `unreadable`, or a partial one: None) cannot be
    read: name the run's other complete ones."""
    others = [epoch for epoch in checkpoints.epochs() if epoch != unreadable]
    if not others:
        return "the run holds no other complete checkpoint: train it again"
    return (
        f"pass another of the run's checkpoints (epochs {', '.join(map(str, others))}), "
        f"for example --ckpt {checkpoints.path(others[-1])}"
    )


def _choose(checkpoints: Checkpoints, id: int | None, partial: bool, best: bool):
    """(id, is partial) of the checkpoint that load_trained's arguments name."""
    if best and (id is not None or partial):  # it took the named one and called it the best
        named = (
            checkpoints.directory / (PARTIAL if partial else "") / ("" if id is None else str(id))
        )
        raise UserError(
            f"--best picks a run's best checkpoint, and --ckpt names one ({named}): pass "
            f"--ckpt {checkpoints.directory.parent} with --best, or leave --best out"
        )
    if partial:
        steps = checkpoints.partial_steps()
        chosen = steps[-1] if id is None and steps else id
        if chosen is None or chosen not in steps:
            missing = "" if chosen is None else f" {chosen}"
            raise UserError(f"{checkpoints.directory} holds no partial checkpoint{missing}")
        return chosen, True
    if id is not None:
        if id not in checkpoints.epochs():
            raise UserError(f"{checkpoints.directory} holds no checkpoint {id}")
        return id, False
    if best:
        epoch = checkpoints.best_epoch()
        if epoch is None:
            only = " (only a partial one, never evaluated)" if checkpoints.partial_steps() else ""
            raise UserError(
                f"{checkpoints.directory} holds no complete checkpoint{only}, so none is best: "
                "leave out --best for the newest"
            )
        return epoch, False
    newest = checkpoints.newest_partial()
    if newest is not None:
        return newest, True
    epoch = checkpoints.latest_epoch()
    if epoch is None:
        raise UserError(
            f"{checkpoints.directory} holds no checkpoint: a training writes its first after "
            "checkpoint_every epochs (or when stopped), so wait for it, or train this run"
        )
    return epoch, False
