import jax
import numpy as np
import pytest

from alexnet_jax.checkpoint import Checkpoints, locate
from alexnet_jax.errors import UserError
from alexnet_jax.parallel import make_mesh
from alexnet_jax.state import create_train_state

from conftest import tiny_config


def row(epoch, accuracy):
    return {"epoch": epoch, "test_accuracy": accuracy}


def perturbed_state(config):
    """A state whose every array differs from a fresh one, so a restore cannot pass by luck."""
    state = create_train_state(config, 4)
    noise = lambda x: x + 0.5 if np.issubdtype(x.dtype, np.floating) else x + 3  # noqa: E731
    return state.replace(
        params=jax.tree.map(noise, state.params),
        batch_stats=jax.tree.map(noise, state.batch_stats),
        opt_state=jax.tree.map(noise, state.opt_state),
        step=state.step + 11,
    )


def test_save_then_restore_gives_identical_arrays(tmp_path):
    config = tiny_config()
    saved = perturbed_state(config)
    checkpoints = Checkpoints(tmp_path)
    checkpoints.save(1, saved, config, [row(1, 0.5)])
    checkpoints.wait()

    fresh = create_train_state(config, 4)
    restored, history = Checkpoints(tmp_path, read_only=True).restore(1, fresh, make_mesh())
    assert history == [row(1, 0.5)]
    saved_leaves = jax.tree.leaves(jax.device_get(saved))
    restored_leaves = jax.tree.leaves(jax.device_get(restored))
    assert len(saved_leaves) == len(restored_leaves)
    for a, b in zip(saved_leaves, restored_leaves, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert Checkpoints(tmp_path, read_only=True).read_config(1) == config


def test_keeps_the_last_n_and_the_best(tmp_path):
    config = tiny_config()
    state = create_train_state(config, 4)
    checkpoints = Checkpoints(tmp_path, keep=2)
    history = []
    for epoch, accuracy in enumerate([0.3, 0.9, 0.5, 0.6, 0.7], start=1):
        history.append(row(epoch, accuracy))
        checkpoints.save(epoch, state, config, history)
    checkpoints.wait()
    assert checkpoints.epochs() == [2, 4, 5]
    assert checkpoints.best_epoch() == 2 and checkpoints.latest_epoch() == 5


def test_locate_accepts_run_checkpoints_and_epoch_dirs(tmp_path):
    config = tiny_config()
    run = tmp_path / "mnist"
    checkpoints = Checkpoints(run / "checkpoints")
    checkpoints.save(1, create_train_state(config, 4), config, [row(1, 0.1)])
    checkpoints.wait()
    ckpts = (run / "checkpoints").absolute()
    assert locate(run) == (run / "checkpoints", None)
    assert locate(run / "checkpoints") == (run / "checkpoints", None)
    assert locate(run / "checkpoints" / "1") == (run / "checkpoints", 1)
    assert locate(tmp_path) == (run / "checkpoints", None)
    assert ckpts.is_dir()


@pytest.mark.parametrize("kind", ["missing", "empty", "file"])
def test_locate_rejects_what_is_not_a_checkpoint(tmp_path, kind):
    path = tmp_path / "x"
    if kind == "empty":
        path.mkdir()
    elif kind == "file":
        path.write_text("hello")
    with pytest.raises(UserError, match="does not exist|is not a checkpoint"):
        locate(path)
