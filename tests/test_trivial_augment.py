"""TrivialAugment (config.trivial_augment): its draws, and each operation against PIL's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from alexnet_jax import keys as run_keys
from alexnet_jax import trivial_augment as ta

from conftest import single_steps, tiny_config

apply = jax.jit(ta.apply)
augment = jax.jit(ta.trivial_augment, static_argnums=2)
OP = ta.INDEX


def keys(n, seed=0):
    return run_keys.example_keys(jax.random.PRNGKey(seed), 0, n)


def photos(n=4, seed=0, low=0, high=256):
    return np.random.default_rng(seed).integers(low, high, (n, 32, 32, 3)).astype(np.uint8)


def test_off_is_the_identity_and_on_is_deterministic_per_example():
    images = photos(8)
    assert ta.trivial_augment(images, keys(8), False) is images
    out = augment(jnp.asarray(images), keys(8), True)
    assert out.shape == images.shape and out.dtype == jnp.uint8
    np.testing.assert_array_equal(out, augment(jnp.asarray(images), keys(8), True))
    # Example i's operation depends on its key alone, not on the batch around it.
    np.testing.assert_array_equal(out[4:], augment(jnp.asarray(images[4:]), keys(8)[4:], True))
    assert not np.array_equal(out, images)


def test_operations_strengths_and_signs_are_drawn_uniformly():
    n = 2800  # 200 per operation
    d = jax.device_get(jax.jit(ta.draws)(keys(n)))
    counts = np.bincount(d["operation"], minlength=len(ta.OPERATIONS))
    assert len(counts) == len(ta.OPERATIONS)
    # Binomial(2800, 1/14): mean 200, sd 13.6; 5 sd either way.
    assert counts.min() > 200 - 68 and counts.max() < 200 + 68, counts
    levels = np.round(d["strength"] * (ta.LEVELS - 1))
    np.testing.assert_allclose(levels / (ta.LEVELS - 1), d["strength"], atol=1e-6)
    assert set(levels) == set(range(ta.LEVELS))
    assert d["strength"].mean() == pytest.approx(0.5, abs=0.03)
    assert set(d["sign"]) == {-1.0, 1.0} and abs(d["sign"].mean()) < 0.1


@pytest.mark.parametrize("name", ta.OPERATIONS)
def test_every_operation_at_strength_zero_leaves_the_image_as_it_is_or_as_it_says(name):
    image = photos(1, seed=1, low=40, high=200)[0]  # neither 0 nor 255 anywhere
    out = np.asarray(apply(image, OP[name], 0.0, 1.0))
    if name == "solarize":  # threshold 255: only 255s would invert
        np.testing.assert_array_equal(out, image)
    elif name == "autocontrast":  # strengthless: stretched to 0..255 all the same
        assert out.min(axis=(0, 1)).tolist() == [0] * 3
        assert out.max(axis=(0, 1)).tolist() == [255] * 3
    elif name == "equalize":
        np.testing.assert_array_equal(out, np.asarray(ImageOps.equalize(Image.fromarray(image))))
    else:
        np.testing.assert_array_equal(out, image)


def test_translations_move_whole_pixels_along_their_axis_and_fill_with_zeros():
    image = photos(1, seed=2, low=1)[0]
    half = 15 / 30  # level 15: round(0.5 * 32) = 16 pixels
    right = np.asarray(apply(image, OP["translate_x"], half, 1.0))
    np.testing.assert_array_equal(right[:, 16:], image[:, :16])
    assert not right[:, :16].any()
    up = np.asarray(apply(image, OP["translate_y"], half, -1.0))
    np.testing.assert_array_equal(up[:16], image[16:])
    assert not up[16:].any()


def test_the_shear_along_y_is_the_shear_along_x_of_the_transposed_image():
    image = photos(1, seed=3)[0]
    sheared_y = np.asarray(apply(image, OP["shear_y"], 0.6, 1.0))
    sheared_x = np.asarray(apply(image.transpose(1, 0, 2), OP["shear_x"], 0.6, 1.0))
    np.testing.assert_array_equal(sheared_y, sheared_x.transpose(1, 0, 2))
    assert not np.array_equal(sheared_y, image)


def test_a_rotation_keeps_a_centred_disc_centred():
    rows, cols = np.mgrid[:32, :32]
    disc = ((rows - 15.5) ** 2 + (cols - 15.5) ** 2 < 36).astype(np.uint8) * 200
    image = np.repeat(disc[..., None], 3, axis=2)
    out = np.asarray(apply(image, OP["rotate"], 1.0, 1.0)).astype(float)[..., 0]
    weight = out.sum()
    assert weight == pytest.approx(image[..., 0].sum(), rel=0.05)
    assert (out * rows).sum() / weight == pytest.approx(15.5, abs=0.1)
    assert (out * cols).sum() / weight == pytest.approx(15.5, abs=0.1)


def pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image)


@pytest.mark.parametrize("seed", [0, 1])
def test_posterize_solarize_and_equalize_give_pils_bits(seed):
    image = photos(1, seed=seed)[0]
    for level in (0, 7, 30):  # 8, 7 and 2 bits
        bits = 8 - round(level / 5)
        out = apply(image, OP["posterize"], level / 30, 1.0)
        np.testing.assert_array_equal(out, np.asarray(ImageOps.posterize(pil(image), bits)))
    for threshold in (0, 100, 255):
        out = jax.jit(ta.solarize)(image, threshold)
        np.testing.assert_array_equal(out, np.asarray(ImageOps.solarize(pil(image), threshold)))
    dull = photos(1, seed=seed, low=60, high=120)[0]  # a narrow histogram to spread
    out = apply(dull, OP["equalize"], 0.5, 1.0)
    np.testing.assert_array_equal(out, np.asarray(ImageOps.equalize(pil(dull))))


@pytest.mark.parametrize(
    "name, enhancer",
    [
        ("brightness", ImageEnhance.Brightness),
        ("color", ImageEnhance.Color),
        ("contrast", ImageEnhance.Contrast),
        ("sharpness", ImageEnhance.Sharpness),
    ],
)
def test_the_enhancements_match_pils_to_rounding(name, enhancer):
    # PIL computes in integers (its grey, mean and smoothing rounded, the blend truncated);
    # these compute in float32 and round once.
    image = photos(1, seed=4)[0]
    for strength, sign in ((0.5, 1.0), (1.0, -1.0), (0.8, 1.0)):
        factor = 1 + sign * strength * ta.MAX_FACTOR_CHANGE
        ours = np.asarray(apply(image, OP[name], strength, sign)).astype(int)
        theirs = np.asarray(enhancer(pil(image)).enhance(factor)).astype(int)
        assert np.abs(ours - theirs).max() <= 1, (name, strength, sign)


def test_autocontrast_stretches_each_channel_to_the_full_range():
    image = photos(1, seed=5, low=50, high=101)[0]
    image[0, 0] = (50, 60, 70)  # each channel's own minimum
    image[0, 1] = (100, 90, 80)
    out = np.asarray(apply(image, OP["autocontrast"], 0.3, 1.0)).astype(int)
    theirs = np.asarray(ImageOps.autocontrast(pil(image))).astype(int)
    assert np.abs(out - theirs).max() <= 1  # PIL truncates, this rounds
    flat = np.full((32, 32, 3), 77, np.uint8)
    np.testing.assert_array_equal(apply(flat, OP["autocontrast"], 0.3, 1.0), flat)


def test_the_training_step_uses_it(tiny_dataset):
    # tests/test_train.py and test_dispatch.py run it with the other levers (conftest.LEVERS):
    # the same step on one device and two, and in one call or several.
    def kernel_after_a_step(config):
        states = single_steps(config, tiny_dataset, jax.devices()[:1], 1)[0]
        return states[-1].params["conv2d"]["kernel"]

    plain = kernel_after_a_step(tiny_config())
    augmented = kernel_after_a_step(tiny_config(trivial_augment=True))
    assert not np.allclose(plain, augmented)
