"""Property-based tests: odd config values and damaged bytes give a clear error or the right
result, never a silent success, never a hang (pytest-timeout bounds each test)."""

import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from alexnet_jax import data
from alexnet_jax.checkpoint import Checkpoints
from alexnet_jax.config import CHOICES, apply_overrides, default_config, validate
from alexnet_jax.errors import UserError
from alexnet_jax.model import MIN_IMAGE_SIZE
from alexnet_jax.parallel import make_mesh

from conftest import new_state, tiny_config

FIELDS = list(default_config().keys())
value_texts = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["true", "false", "yes", "", "None", "[1, 2]", "1e-3", "0", "-0.5", "nan"]),
    st.sampled_from([v for choices in CHOICES.values() for v in choices]),
    st.text(max_size=12),
)
field_names = st.one_of(st.sampled_from(FIELDS), st.text(min_size=1, max_size=12))


def typed_texts(key: str):
    """Texts of the field's own type, mostly in range, so that accepted configs are common."""
    kind = default_config().get_type(key)
    if kind is bool:
        return st.sampled_from(["true", "false", "True", "NO", "yes", "1", "0"])
    if kind is int:
        return st.integers(0, 300).map(str)
    if kind is float:
        return st.floats(0, 1, exclude_max=True).map(repr)
    return st.sampled_from(CHOICES[key]) if key in CHOICES else st.text(max_size=12)


# A pair of anything, or (twice as often) a known field with a value of its type.
typed_pairs = st.sampled_from(FIELDS).flatmap(lambda key: st.tuples(st.just(key), typed_texts(key)))
overrides = st.one_of(st.tuples(field_names, value_texts), typed_pairs, typed_pairs)

# Bounds an accepted config must keep, written out here on purpose rather than read from
# `config.validate`'s tables: taken from those, the test would check validate against itself.
LOWER_BOUNDS = {
    "batch_size": 1,
    "eval_batch_size": 1,
    "num_epochs": 1,
    "image_size": MIN_IMAGE_SIZE,
}
UNIT_INTERVAL = ("label_smoothing", "dropout_rate", "momentum", "ema_decay")


def other_valid_text(key: str) -> str:
    """A valid value for the field that is not its default, as command-line text."""
    default, kind = default_config()[key], default_config().get_type(key)
    if kind is bool:
        return "no" if default else "yes"
    if key in CHOICES:
        return next(choice for choice in CHOICES[key] if choice != default)
    if kind is int:
        return str(default + 1)
    if kind is float:
        return repr(default / 2 if default else 0.25)
    return "/data/tfds"  # data_dir


@settings(max_examples=300, deadline=None)
@given(st.lists(overrides, max_size=4))
# Every field at once, so that each one's final value is checked on every run; and a field
# given twice (the last one holds).
@example([(key, other_valid_text(key)) for key in FIELDS])
@example([("batch_size", "7"), ("learning_rate", "0.5"), ("batch_size", "8")])
def test_config_overrides_are_applied_correctly_or_refused(pairs):
    config = default_config()
    overrides = [f"{key}={value}" for key, value in pairs]
    try:
        apply_overrides(config, overrides)
        validate(config)
    except UserError as e:
        assert str(e) and "\n" not in str(e)
        return
    # Accepted: every value has its field's type and lies in its allowed range.
    defaults = default_config()
    for key in FIELDS:
        if defaults[key] is not None and not isinstance(defaults[key], float):
            assert type(config[key]) is type(defaults[key]), key
    for key, low in LOWER_BOUNDS.items():
        assert config[key] >= low, key
    for key in UNIT_INTERVAL:
        assert 0 <= config[key] < 1, key
    assert config.learning_rate >= 0
    for key in FIELDS:
        if isinstance(defaults[key], float):
            assert np.isfinite(config[key]), key
    for key, choices in CHOICES.items():
        assert config[key] in choices
    # The last override of each field is what the config holds, parsed by the field's type;
    # every other field keeps its default.
    overridden = dict(pairs)
    for key in FIELDS:
        if key in overridden:
            expected = parsed(key, overridden[key])
            assert config[key] == expected and type(config[key]) is type(expected), key
        else:
            assert config[key] == defaults[key], key


def parsed(key: str, text: str):
    """The value `--config.KEY=TEXT` stands for, by the type of the field's default."""
    kind = default_config().get_type(key)
    if kind is bool:
        return text.lower() in ("true", "1", "yes")
    return kind(text)  # int, float or str (data_dir, whose default is None, is a str)


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory):
    config = tiny_config(momentum=0.0)  # no momentum buffer: half the bytes to copy per example
    state = new_state(config)
    directory = tmp_path_factory.mktemp("checkpoint")
    checkpoints = Checkpoints(directory)
    checkpoints.save(1, state, config, [{"epoch": 1, "test_accuracy": 0.5}])
    checkpoints.wait()
    files = sorted(p.relative_to(directory) for p in directory.rglob("*") if p.is_file())
    return directory, config, jax.device_get(state), files


damage = st.tuples(
    st.integers(0, 10**9),  # which file (modulo the count)
    st.floats(0, 1, exclude_max=True),  # where in it
    st.one_of(st.integers(1, 255).map(lambda x: ("xor", x)), st.just(("truncate", 0))),
)


def damaged_copy(source: Path, target: Path, files, file_index, where, change) -> Path:
    shutil.copytree(source, target)
    path = target / files[file_index % len(files)]
    blob = bytearray(path.read_bytes())
    at = int(where * len(blob))
    kind, value = change
    if kind == "truncate" or not blob:
        blob = blob[:at]
    else:
        blob[at] ^= value
    path.write_bytes(bytes(blob))
    return target


@pytest.mark.timeout(300)
@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(damage)
def test_damaged_checkpoint_bytes_are_refused_or_restore_exactly(saved_checkpoint, tmp_path, hit):
    source, config, saved, files = saved_checkpoint
    target = tmp_path / "copy"
    shutil.rmtree(target, ignore_errors=True)
    damaged_copy(source, target, files, *hit)
    try:
        checkpoints = Checkpoints(target, read_only=True)
        restored_config = checkpoints.read_config(1)
        restored, history = checkpoints.restore(1, new_state(config), make_mesh(jax.devices()[:1]))
    except UserError as e:
        assert "\n" not in str(e)
        return
    # Read back without complaint: then it must be exactly what was saved.
    assert restored_config == config
    assert history == [{"epoch": 1, "test_accuracy": 0.5}]
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(jax.device_get(restored)), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def mnist_test_split(shared_tfds):
    builder = data._prepared_builder("mnist", str(shared_tfds), download=False)
    return builder, data._read_split(builder, "test", str(shared_tfds))


@pytest.mark.timeout(300)
@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.floats(0, 1, exclude_max=True), st.integers(1, 255), st.booleans())
def test_damaged_record_bytes_are_refused_or_read_exactly(
    shared_tfds, mnist_test_split, tmp_path, where, xor, truncate
):
    _, expected = mnist_test_split
    target = tmp_path / "tfds"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(shared_tfds / "mnist", target / "mnist")
    for path in target.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    record = next((target / "mnist" / "3.0.1").glob("mnist-test.array_record*"))
    blob = bytearray(record.read_bytes())
    at = int(where * len(blob))
    blob = blob[:at] if truncate else blob[:at] + bytes([blob[at] ^ xor]) + blob[at + 1 :]
    record.write_bytes(bytes(blob))
    try:
        builder = data._prepared_builder("mnist", str(target), download=False)
        split = data._read_split(builder, "test", str(target))
    except UserError as e:
        assert "\n" not in str(e)
        return
    np.testing.assert_array_equal(split.images, expected.images)
    np.testing.assert_array_equal(split.labels, expected.labels)
