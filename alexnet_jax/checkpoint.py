"""Orbax checkpoints of the whole training state, one per epoch, under <run>/checkpoints/."""

import argparse
from dataclasses import dataclass
from pathlib import Path

import jax
import ml_collections
import orbax.checkpoint as ocp
from jax.sharding import Mesh
from orbax.checkpoint import checkpoint_managers

from alexnet_jax.config import default_config
from alexnet_jax.data import spec
from alexnet_jax.errors import UserError
from alexnet_jax.parallel import make_mesh, replicated
from alexnet_jax.state import TrainState, create_train_state

CHECKPOINTS = "checkpoints"
BEST_METRIC = "test_accuracy"


class Checkpoints:
    """The checkpoints of one run: each holds the state, the config and the metrics history.

    The step of a checkpoint is the number of epochs completed. The last `keep` epochs are kept,
    and the best by test accuracy besides. Saving is asynchronous; Orbax writes each checkpoint
    into a temporary folder and renames it when complete, so a crash never leaves a half one.
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
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def epochs(self) -> list[int]:
        return list(self._manager.all_steps())

    def latest_epoch(self) -> int | None:
        return self._manager.latest_step()

    def best_epoch(self) -> int | None:
        return self._manager.best_step()

    def save(self, epoch, state, config, history) -> None:
        """Start writing the checkpoint of `epoch` (returns before the write completes)."""
        self._manager.save(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                config=ocp.args.JsonSave(config.to_dict()),
                history=ocp.args.JsonSave(history),
            ),
            metrics={BEST_METRIC: history[-1][BEST_METRIC]},
        )

    def read_config(self, epoch: int) -> ml_collections.ConfigDict:
        saved = self._manager.restore(
            epoch, args=ocp.args.Composite(config=ocp.args.JsonRestore())
        ).config
        config = default_config()
        unknown = set(saved) - set(config.keys())
        if unknown:
            raise UserError(
                f"checkpoint {self.directory / str(epoch)} has config fields {sorted(unknown)} "
                "that this version of alexnet_jax does not know"
            )
        config.update(saved)
        return config

    def restore(self, epoch: int, abstract_state: TrainState, mesh: Mesh):
        """(state, history) of `epoch`, arrays placed replicated on `mesh`."""
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated(mesh)),
            abstract_state,
        )
        restored = self._manager.restore(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), history=ocp.args.JsonRestore()
            ),
        )
        return restored.state, restored.history

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def abstract_train_state(config, steps_per_epoch: int, num_classes: int = 10) -> TrainState:
    """Shapes and dtypes of the state a config trains, without computing anything."""
    return jax.eval_shape(lambda: create_train_state(config, steps_per_epoch, num_classes))


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
    parser.add_argument("--best", action="store_true", help="the best epoch instead of the latest")


@dataclass(frozen=True)
class Trained:
    """A trained state restored from a checkpoint, with the config it was trained with."""

    config: ml_collections.ConfigDict
    state: TrainState
    epoch: int
    path: Path  # the epoch's checkpoint folder
    history: list[dict]  # the metrics rows up to that epoch


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
        num_classes = len(spec(config.dataset).class_names)
        abstract = abstract_train_state(config, 1, num_classes)
        state, history = checkpoints.restore(epoch, abstract, mesh or make_mesh())
    finally:
        checkpoints.close()
    return Trained(config, state, epoch, directory / str(epoch), history)
