"""The run's randomness: one tree of keys grown from `config.seed`.

Every random choice of a run is a pure function of the seed and of where it happens (epoch,
step, device, an example's position in the global batch), never of how many steps a call to
the devices runs, how the batch is split over devices, or when the run was resumed:

    PRNGKey(seed) -split-> init: the parameters' initialisation
                        -> run: kept in the state (`state.rng`)
                             -split-> orders: fold_in(epoch), fold_in(device): each device's
                                      permutation of its training images for the epoch
                                   -> steps: fold_in(global step) -split->
                                        augment: fold_in(example's position in the global batch)
                                                 -split-> crop, flip; fold_in(2): cutout;
                                                 fold_in(3): affine; fold_in(4): mixing;
                                                 fold_in(5): TrivialAugment
                                        dropout: fold_in(device)

(`split(key)` gives `fold_in(key, 0), fold_in(key, 1)` with JAX's partitionable threefry, the
default since JAX 0.5: an example's branches are its children 0 to 5. A lever gets a branch of
its own, so that turning it on leaves the other levers' draws as they were.) Mixing pairs an
example with the one at the mirrored position of the global batch, a choice that needs no key
(`mixing.py`).
"""

import jax
import jax.numpy as jnp


def seed_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """(the parameters' initialisation key, the run's key kept in the state)."""
    init, run = jax.random.split(jax.random.PRNGKey(seed))
    return init, run


def order_key(run: jax.Array, epoch, device) -> jax.Array:
    """The key of one device's shuffled order of its images in `epoch`."""
    orders = jax.random.split(run)[0]
    return jax.random.fold_in(jax.random.fold_in(orders, epoch), device)


def step_key(run: jax.Array, step) -> jax.Array:
    """The key of global step `step` (its augmentation and dropout)."""
    return jax.random.fold_in(jax.random.split(run)[1], step)


def augment_and_dropout_keys(step: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A step's key split into the augmentation's and dropout's."""
    augment, dropout = jax.random.split(step)
    return augment, dropout


def example_keys(augment: jax.Array, first_index: jax.Array, count: int) -> jax.Array:
    """One key per example, for global batch positions first_index .. first_index + count - 1."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(augment, first_index + jnp.arange(count))


def crop_and_flip_keys(example: jax.Array) -> tuple[jax.Array, jax.Array]:
    """An example's key split into its random crop's and its flip's."""
    crop, flip = jax.random.split(example)
    return crop, flip


def cutout_key(example: jax.Array) -> jax.Array:
    """The key of an example's cutout square."""
    # Its own branch, so that crops and flips stay those of a run without cutout.
    return jax.random.fold_in(example, 2)


def affine_key(example: jax.Array) -> jax.Array:
    """The key of an example's random affine transform."""
    return jax.random.fold_in(example, 3)


def mixing_key(example: jax.Array) -> jax.Array:
    """The key of an example's mixup or cutmix draws."""
    return jax.random.fold_in(example, 4)


def trivial_augment_key(example: jax.Array) -> jax.Array:
    """The key of an example's TrivialAugment operation and strength."""
    return jax.random.fold_in(example, 5)


def dropout_key(dropout: jax.Array, device) -> jax.Array:
    """Dropout masks are drawn per device (so they depend on the device split)."""
    return jax.random.fold_in(dropout, device)
