import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import keys as run_keys
from alexnet_jax import preprocess

ALL = preprocess.Affine(rotation=20.0, scale=0.1, translation=0.1, shear=10.0)

random_affine = jax.jit(preprocess.random_affine, static_argnums=2)
warp = jax.jit(preprocess.warp)


def keys(n, seed=0):
    return run_keys.example_keys(jax.random.PRNGKey(seed), 0, n)


def digits(n=4, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28, 1)).astype(np.uint8)


def test_a_quarter_turn_is_numpys_rot90_and_no_change_is_the_identity():
    image = digits(1)[0]
    zero = jnp.zeros(2)
    np.testing.assert_array_equal(warp(image, math.pi / 2, 1.0, zero, 0.0), np.rot90(image))
    np.testing.assert_array_equal(warp(image, 0.0, 1.0, zero, 0.0), image)
    # A shift of (2, 3) moves the picture down and right, and fills with zeros.
    moved = np.asarray(warp(image, 0.0, 1.0, jnp.array([2.0, 3.0]), 0.0))
    np.testing.assert_array_equal(moved[2:, 3:], image[:-2, :-3])
    assert not moved[:2].any() and not moved[:, :3].any()


def test_off_is_the_identity_and_on_is_deterministic_per_example():
    images = digits(8)
    assert preprocess.random_affine(images, keys(8), preprocess.NO_AFFINE) is images
    out = random_affine(jnp.asarray(images), keys(8), ALL)
    assert out.shape == images.shape and out.dtype == jnp.uint8
    np.testing.assert_array_equal(out, random_affine(jnp.asarray(images), keys(8), ALL))
    # Example i's transform depends on its key alone, not on the batch around it.
    np.testing.assert_array_equal(out[4:], random_affine(jnp.asarray(images[4:]), keys(8)[4:], ALL))
    assert not np.array_equal(out, images)


def test_the_draws_cover_their_ranges_uniformly():
    n = 2000
    p = jax.device_get(
        jax.jit(preprocess.affine_parameters, static_argnums=(1, 2, 3))(keys(n), ALL, 28, 32)
    )
    for name, half_width in (
        ("angle", math.radians(20)),
        ("shear", math.radians(10)),
        ("scale", 0.1),
    ):
        centred = p[name] - (1 if name == "scale" else 0)
        assert np.abs(centred).max() <= half_width * (1 + 1e-6)
        assert np.abs(centred).max() > 0.95 * half_width
        assert centred.mean() == pytest.approx(0, abs=0.05 * half_width)
        # Uniform on [-h, h]: variance h^2 / 3.
        assert centred.var() == pytest.approx(half_width**2 / 3, rel=0.1)
    shift = p["shift"]
    assert shift.shape == (n, 2)
    assert np.abs(shift).max(axis=0) == pytest.approx([2.8, 3.2], rel=0.02)  # 10% of 28, 32
    # The draws are independent: angle and scale uncorrelated.
    assert abs(np.corrcoef(p["angle"], p["scale"])[0, 1]) < 0.1


def blob(size=28, sigma=3.0):
    centre = (size - 1) / 2
    y, x = np.mgrid[:size, :size]
    return (250 * np.exp(-((y - centre) ** 2 + (x - centre) ** 2) / (2 * sigma**2))).astype(
        np.uint8
    )[..., None]


def centroids(images):
    images = np.asarray(images, np.float64)[..., 0]
    y, x = np.mgrid[: images.shape[1], : images.shape[2]]
    mass = images.sum(axis=(1, 2))
    return np.stack([(images * y).sum((1, 2)) / mass, (images * x).sum((1, 2)) / mass], 1), mass


def test_rotation_scale_and_shear_keep_a_centred_blob_centred_and_translation_moves_it():
    n = 200
    images = jnp.asarray(np.repeat(blob()[None], n, axis=0))
    centre = 13.5
    still = preprocess.Affine(rotation=20.0, scale=0.1, shear=10.0)
    centres, mass = centroids(random_affine(images, keys(n), still))
    np.testing.assert_allclose(centres, centre, atol=0.1)
    # Scaling by s changes the blob's mass by s^2: it is really transformed.
    scales = np.asarray(preprocess.affine_parameters(keys(n), still, 28, 28)["scale"])
    original = centroids(images[:1])[1][0]
    np.testing.assert_allclose(mass / original, scales**2, rtol=0.05)

    moved = preprocess.Affine(translation=0.1)
    centres, _ = centroids(random_affine(images, keys(n), moved))
    offsets = centres - centre
    assert np.abs(offsets).max() <= 2.8 + 0.1  # 10% of 28 pixels
    assert np.abs(offsets).max() > 2.5
    np.testing.assert_allclose(offsets.mean(axis=0), 0, atol=0.3)
