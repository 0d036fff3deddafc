import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import keys as run_keys
from alexnet_jax import preprocess


def images(n=8, size=12, channels=3):
    return jnp.asarray(
        np.random.default_rng(0).integers(0, 256, (n, size, size, channels)), jnp.uint8
    )


def keys(n, seed=0):
    return run_keys.example_keys(jax.random.PRNGKey(seed), 0, n)


def test_no_padding_and_no_flip_is_identity():
    x = images()
    np.testing.assert_array_equal(preprocess.augment(x, keys(8), 0, False), x)


def test_crops_are_shifted_windows_of_the_zero_padded_image():
    x = images(n=64)
    out = np.asarray(preprocess.augment(x, keys(64), 2, False))
    padded = np.pad(np.asarray(x), ((0, 0), (2, 2), (2, 2), (0, 0)))
    shifts = set()
    for i in range(64):
        matches = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if np.array_equal(padded[i, dy : dy + 12, dx : dx + 12], out[i])
        ]
        assert matches, f"example {i} is not a crop of its padded image"
        shifts.add(matches[0])
    assert len(shifts) > 5  # the offsets really vary


def test_flip_mirrors_about_half_the_images():
    x = images(n=200)
    out = np.asarray(preprocess.augment(x, keys(200), 0, True))
    flipped = [np.array_equal(out[i], np.asarray(x)[i, :, ::-1]) for i in range(200)]
    kept = [np.array_equal(out[i], np.asarray(x)[i]) for i in range(200)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 60 < sum(flipped) < 140


def test_cutout_hides_one_square_of_the_given_side_clipped_at_the_edges():
    # Images with no pixel equal to the fill value, so that the hidden pixels are exactly the
    # ones that now hold it.
    x = jnp.asarray(np.random.default_rng(1).integers(1, 256, (300, 12, 12, 3)), jnp.uint8)
    fill = np.array([0, 0, 0], np.uint8)
    out = np.asarray(preprocess.augment(x, keys(300), 0, False, cutout=5, fill=fill))
    corners = set()
    for i in range(300):
        hidden = np.all(out[i] == fill, axis=-1)
        np.testing.assert_array_equal(out[i][~hidden], np.asarray(x)[i][~hidden])
        rows, cols = np.nonzero(hidden)
        assert hidden.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)  # one rectangle
        assert np.ptp(rows) < 5 and np.ptp(cols) < 5
        # A full 5x5 square unless it touches an edge.
        if 0 < rows.min() and rows.max() < 11:
            assert np.ptp(rows) == 4
        corners.add((rows.min(), cols.min()))
    assert len(corners) > 50  # the place varies


def test_cutout_leaves_the_crops_and_flips_of_a_run_without_it():
    x = images(n=64)
    plain = np.asarray(preprocess.augment(x, keys(64), 2, True))
    fill = np.array([7, 7, 7], np.uint8)
    cut = np.asarray(preprocess.augment(x, keys(64), 2, True, cutout=3, fill=fill))
    differs = np.any(plain != cut, axis=-1)
    assert differs.any()
    assert np.all(cut[differs] == fill)


def test_example_keys_depend_on_global_position_only():
    rng = jax.random.PRNGKey(3)
    whole = run_keys.example_keys(rng, 0, 8)
    halves = jnp.concatenate([run_keys.example_keys(rng, 0, 4), run_keys.example_keys(rng, 4, 4)])
    np.testing.assert_array_equal(whole, halves)


def test_model_input_is_resized_and_normalised():
    x = jnp.full((2, 28, 28, 1), 255, jnp.uint8)
    out = preprocess.to_model_input(x, 67, (0.5,), (0.25,))
    assert out.shape == (2, 67, 67, 1) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, 2.0, rtol=1e-6)  # (1 - 0.5) / 0.25
    assert preprocess.to_model_input(x, 67, (0.5,), (0.25,), jnp.bfloat16).dtype == jnp.bfloat16


# MNIST and CIFAR-10 at the experiments' sizes, and a reduction.
@pytest.mark.parametrize("size, target", [(28, 67), (28, 224), (32, 67), (32, 224), (40, 33)])
def test_model_input_resizes_exactly_as_jax_image_resize_bilinear(size, target):
    # to_model_input calls scale_and_translate (which jax2onnx converts) for jax.image.resize.
    x = images(3, size, 3)

    @jax.jit
    def resize(x):
        return jax.image.resize(
            x.astype(jnp.float32) * (1 / 255), (3, target, target, 3), "bilinear"
        )

    @jax.jit
    def ours(x):
        return preprocess.to_model_input(x, target, (0.0,) * 3, (1.0,) * 3)

    np.testing.assert_array_equal(ours(x), resize(x))


def test_each_lever_draws_from_its_own_branch_of_an_examples_key():
    # keys.py's diagram: split gives children 0 and 1 (crop, flip), and each later lever its
    # own child, so that turning one on leaves the others' draws as they were.
    example = run_keys.example_keys(jax.random.PRNGKey(0), 5, 1)[0]
    branches = [*run_keys.crop_and_flip_keys(example)]
    branches += [run_keys.cutout_key(example), run_keys.affine_key(example)]
    branches += [run_keys.mixing_key(example), run_keys.trivial_augment_key(example)]
    for i, branch in enumerate(branches):
        np.testing.assert_array_equal(branch, jax.random.fold_in(example, i))


# Each field the step's input reads, with what turns it on (and what it needs beside it). A
# lever added to `Augmentation.from_config` must be added here, and must change the input.
LEVER_ON = {
    "crop_padding": {"crop_padding": 4},
    "flip": {"flip": True},
    "cutout": {"cutout": 8},
    "affine_rotation": {"affine_rotation": 15.0},
    "affine_scale": {"affine_scale": 0.1},
    "affine_translation": {"affine_translation": 0.1},
    "affine_shear": {"affine_shear": 5.0},
    "trivial_augment": {"trivial_augment": True},
    "mixup_alpha": {"mixup_alpha": 0.4},
    "mixup_probability": {"mixup_alpha": 0.4, "mixup_probability": 0.5},
    "cutmix_alpha": {"cutmix_alpha": 1.0},
    "cutmix_probability": {"cutmix_alpha": 1.0, "cutmix_probability": 0.5},
}


class FieldsRead:
    """A config that records which fields are read from it."""

    def __init__(self, config):
        self._config, self.read = config, set()

    def __getattr__(self, name):
        self.read.add(name)
        return getattr(self._config, name)


def test_every_lever_of_the_step_input_is_wired_and_changes_the_input():
    # A lever that from_config reads but `apply` leaves out (or applies only when another lever
    # is on, like an operation put inside preprocess.augment) trains silently without it.
    from alexnet_jax.augmentation import Augmentation
    from alexnet_jax.config import derive
    from alexnet_jax.data import synthetic_dataset

    from conftest import tiny_config

    off = tiny_config(crop_padding=0, flip=False)
    recorder = FieldsRead(off)
    Augmentation.from_config(recorder, derive(off))
    assert recorder.read - {"image_size"} == set(LEVER_ON), "a new lever: add it to LEVER_ON"

    train = synthetic_dataset("mnist", train_size=8, test_size=1).train
    batch = {"image": jnp.asarray(train.images), "label": jnp.asarray(train.labels)}

    @functools.cache  # the same config with a lever off serves several levers
    def step_input(on: frozenset):
        config = tiny_config(**{**off, **dict(on)})
        augmentation = Augmentation.from_config(config, derive(config))
        apply = jax.jit(lambda b: augmentation.apply(b, keys(8, seed=3), 0, None))
        return jax.device_get(apply(batch))

    for field, on in LEVER_ON.items():
        (x_on, targets_on), (x_off, targets_off) = (
            step_input(frozenset(on.items())),
            step_input(frozenset((key, value) for key, value in on.items() if key != field)),
        )
        assert not (np.array_equal(x_on, x_off) and np.array_equal(targets_on, targets_off)), (
            f"{field}={on[field]!r} leaves the step's input as it was"
        )
