import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from alexnet_jax import mixing
from alexnet_jax.keys import example_keys
from alexnet_jax.parallel import DATA_AXIS, make_mesh

BOTH = mixing.Mixing(
    mixup_alpha=0.4, mixup_probability=0.5, cutmix_alpha=1.0, cutmix_probability=0.3
)


def keys(n, seed=0):
    return example_keys(jax.random.PRNGKey(seed), 0, n)


# Compiled once each: op by op, the Beta sampler alone takes seconds.
draws = jax.jit(mixing.draws, static_argnums=1)
mix_pairs = jax.jit(mixing.mix_pairs, static_argnums=(5, 6))


def test_draws_follow_the_probabilities_and_the_beta_distributions():
    n = 4000
    d = jax.device_get(draws(keys(n), BOTH))
    assert d["kind"].shape == (n,) and d["kind"].dtype == np.int32
    assert d["lam"].shape == (n,) and d["lam"].dtype == np.float32
    assert d["centre"].shape == (n, 2)
    # 3 standard errors of a proportion of 4000 draws is under 0.025.
    for kind, probability in ((mixing.CUTMIX, 0.3), (mixing.MIXUP, 0.5), (mixing.NEITHER, 0.2)):
        assert np.mean(d["kind"] == kind) == pytest.approx(probability, abs=0.025)
    assert np.all(d["lam"][d["kind"] == mixing.NEITHER] == 1)
    # Beta(a, a) has mean 1/2 and variance 1 / (4 (2a + 1)).
    for kind, alpha in ((mixing.MIXUP, 0.4), (mixing.CUTMIX, 1.0)):
        lam = d["lam"][d["kind"] == kind]
        assert np.all((lam >= 0) & (lam <= 1))
        assert lam.mean() == pytest.approx(0.5, abs=0.03)
        assert lam.var() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.1)
    again = jax.device_get(draws(keys(n), BOTH))
    for name in d:
        np.testing.assert_array_equal(d[name], again[name])


def random_batch(n=64, size=12, channels=3, seed=1):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, channels)).astype(np.uint8)
    labels = rng.integers(0, 10, n).astype(np.int32)
    return jnp.asarray(images), jnp.asarray(labels)


def test_each_example_is_blended_pasted_or_left_as_drawn_with_targets_in_proportion():
    n, size = 600, 12
    rng = np.random.default_rng(1)
    # Own pixels below 100, the partners' above 150: a pasted pixel is told from a blended one.
    images = jnp.asarray(rng.integers(0, 100, (n, size, size, 1)), jnp.uint8)
    partners = jnp.asarray(rng.integers(150, 256, (n, size, size, 1)), jnp.uint8)
    # Own labels 0-4, partners' 5-9: the target's weight on the own label is the share kept.
    labels, partner_labels = jnp.arange(n) % 5, 5 + jnp.arange(n) % 5
    mixed, targets = mix_pairs(images, labels, partners, partner_labels, keys(n), BOTH, 10)
    assert mixed.shape == images.shape and mixed.dtype == jnp.float32
    assert targets.shape == (n, 10) and targets.dtype == jnp.float32
    d = jax.device_get(draws(keys(n), BOTH))
    mixed, targets = np.asarray(mixed)[..., 0], np.asarray(targets)
    own, partner = np.asarray(images, np.float32)[..., 0], np.asarray(partners, np.float32)[..., 0]
    kept = targets[np.arange(n), np.asarray(labels)]
    np.testing.assert_allclose(targets[np.arange(n), np.asarray(partner_labels)], 1 - kept)
    np.testing.assert_allclose(targets.sum(axis=1), 1, rtol=1e-6)
    pasted_shares = []
    for i in range(n):
        if d["kind"][i] == mixing.NEITHER:
            np.testing.assert_array_equal(mixed[i], own[i])
            assert kept[i] == 1
        elif d["kind"][i] == mixing.MIXUP:
            # The Beta draw on the grid of mixing.exact_blend_weight, where the blend is exact:
            # the same bits as in float64.
            lam = float(mixing.exact_blend_weight(d["lam"][i]))
            assert abs(lam - d["lam"][i]) <= 0.5 / mixing.BLEND_STEPS
            assert kept[i] == lam
            blend = lam * own[i].astype(np.float64) + (1 - lam) * partner[i]
            np.testing.assert_array_equal(mixed[i], blend)
        else:
            pasted = mixed[i] >= 150
            np.testing.assert_array_equal(mixed[i][pasted], partner[i][pasted])
            np.testing.assert_array_equal(mixed[i][~pasted], own[i][~pasted])
            # The partner's share of the target is the share of pixels pasted from it.
            assert 1 - kept[i] == pytest.approx(pasted.mean(), abs=1e-6)
            if pasted.any():
                rows, cols = np.nonzero(pasted)
                assert pasted.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)  # one rectangle
            pasted_shares.append(pasted.mean())
    # Beta(1, 1) boxes cover 1 - E[lam] = 1/2 on average; clipping at the edges only shrinks
    # them.
    assert 0.2 < np.mean(pasted_shares) < 0.5


def test_a_cutmix_box_has_the_side_that_leaves_lam_of_the_image_and_is_clipped_at_edges():
    box = np.asarray(mixing.cutmix_box(0.75, jnp.array([0.5, 0.5]), 16, 16))
    expected = np.zeros((16, 16), bool)
    expected[4:12, 4:12] = True  # side sqrt(1 - 0.75) * 16 = 8, centred at pixel 8
    np.testing.assert_array_equal(box, expected)
    corner = np.asarray(mixing.cutmix_box(0.75, jnp.array([0.0, 0.99]), 16, 16))
    expected = np.zeros((16, 16), bool)
    expected[:4, 11:] = True  # the rows -4..3 and columns 11..18 that lie inside
    np.testing.assert_array_equal(corner, expected)


def test_cutmix_pastes_one_box_of_the_partner_and_weighs_the_targets_by_its_area():
    n, size = 300, 16
    images = jnp.full((n, size, size, 1), 10, jnp.uint8)
    partners = jnp.full((n, size, size, 1), 200, jnp.uint8)
    labels, partner_labels = jnp.zeros(n, jnp.int32), jnp.ones(n, jnp.int32)
    only_cutmix = mixing.Mixing(cutmix_alpha=1.0)
    mixed, targets = mix_pairs(images, labels, partners, partner_labels, keys(n), only_cutmix, 10)
    mixed, targets = np.asarray(mixed)[..., 0], np.asarray(targets)
    assert set(np.unique(mixed)) <= {10.0, 200.0}  # pasted, not blended
    pasted_fractions = []
    for i in range(n):
        pasted = mixed[i] == 200
        # The partner's share of the target is the share of pixels pasted from it.
        assert targets[i, 1] == pytest.approx(pasted.mean(), abs=1e-6)
        assert targets[i, 0] == pytest.approx(1 - pasted.mean(), abs=1e-6)
        if pasted.any():
            rows, cols = np.nonzero(pasted)
            assert pasted.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)  # one rectangle
        pasted_fractions.append(pasted.mean())
    # Beta(1, 1) boxes cover 1 - E[lam] = 1/2 on average; clipping at the edges only shrinks
    # them.
    assert 0.2 < np.mean(pasted_fractions) < 0.5
    assert len({tuple(np.argwhere(mixed[i] == 200).min(0, initial=99)) for i in range(n)}) > 50


def test_mixing_off_leaves_the_images_and_gives_one_hot_targets():
    images, labels = random_batch(8)
    out, targets = mixing.mix_batch(images, labels, keys(8), 0, mixing.NO_MIXING, 10, DATA_AXIS)
    assert out is images
    np.testing.assert_array_equal(targets, jax.nn.one_hot(labels, 10))


def sharded_mix(devices, images, labels, mix):
    """`mix_batch` as the train step runs it: each device mixes its slice of the global batch."""
    mesh = make_mesh(devices)
    n = len(labels)
    local = n // len(devices)

    def per_device(images, labels):
        first = jax.lax.axis_index(DATA_AXIS) * local
        return mixing.mix_batch(
            images,
            labels,
            example_keys(jax.random.PRNGKey(5), first, local),
            first,
            mix,
            16,
            DATA_AXIS,
        )

    spec = PartitionSpec(DATA_AXIS)
    mapped = jax.shard_map(per_device, mesh=mesh, in_specs=(spec, spec), out_specs=(spec, spec))
    return jax.device_get(jax.jit(mapped)(images, labels))


def test_mixing_pairs_mirrored_positions_the_same_on_one_and_two_devices(cpu_devices):
    images, _ = random_batch(16)
    labels = jnp.arange(16, dtype=jnp.int32)  # each its own class: targets name the partner
    one = sharded_mix(cpu_devices[:1], images, labels, BOTH)
    two = sharded_mix(cpu_devices[:2], images, labels, BOTH)
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a, b)
    mixed, targets = one
    for g in range(16):
        support = set(np.flatnonzero(targets[g]))
        assert support <= {g, 15 - g}  # example g is mixed with example 15 - g only
    assert sum(len(np.flatnonzero(t)) == 2 for t in targets) >= 8
    assert not np.array_equal(mixed, np.asarray(images, np.float32))
