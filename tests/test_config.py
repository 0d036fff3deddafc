import re
import sys

import pytest

from alexnet_jax.config import apply_overrides, default_config, load_config, validate
from alexnet_jax.errors import UserError

from conftest import ROOT


@pytest.mark.parametrize("name", ["mnist", "cifar10", "quick"])
def test_experiment_files_load_and_validate(name):
    config = load_config(ROOT / "experiments" / f"{name}.py")
    validate(config)
    assert config.dataset in ("mnist", "cifar10")


def test_seed_faithful_configs_use_224_and_all_data():
    for name in ("mnist", "cifar10"):
        config = load_config(ROOT / "experiments" / f"{name}.py")
        assert config.image_size == 224
        assert config.train_examples == 0 and config.validation_examples == 0
        assert config.dataset == name
    assert load_config(ROOT / "experiments" / "mnist.py").flip is False


def test_overrides_are_parsed_by_field_type():
    config = default_config()
    apply_overrides(
        config,
        ["batch_size=64", "learning_rate=1e-3", "flip=false", "dataset=mnist", "data_dir=/x"],
    )
    assert config.batch_size == 64 and isinstance(config.batch_size, int)
    assert config.learning_rate == pytest.approx(1e-3)
    assert config.flip is False
    assert config.dataset == "mnist"
    assert config.data_dir == "/x"


@pytest.mark.parametrize(
    "override, message",
    [
        ("batch_sise=3", "did you mean batch_size"),
        ("batch_size=abc", "batch_size='abc' is not a valid int"),
        ("flip=maybe", "flip='maybe' is not a valid bool"),
        ("batch_size", "needs a value"),
    ],
)
def test_bad_overrides_say_what_is_wrong(override, message):
    with pytest.raises(UserError, match=message):
        apply_overrides(default_config(), [override])


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("batch_size", 0, "batch_size=0 must be at least 1"),
        ("learning_rate", -0.1, "learning_rate=-0.1 must be at least 0"),
        ("image_size", 66, "image_size=66 is too small"),
        ("dataset", "imagenet", "dataset='imagenet' is not one of"),
        ("dropout_rate", 1.0, "must be below 1"),
        ("optimizer", "lion", "optimizer='lion' is not one of"),
        ("stem", "conv7", "stem='conv7' is not one of space_to_depth, conv11"),
        ("pool_backward", "avg", "pool_backward='avg' is not one of select_and_scatter, masks"),
        ("steps_per_dispatch", 0, "steps_per_dispatch=0 must be at least 1"),
        ("eval_every", 0, "eval_every=0 must be at least 1"),
        ("learning_rate", float("nan"), "learning_rate=nan must be a finite number"),
        ("cutout", 32, "cutout=32 would hide the whole cifar10 image"),
        ("weight_decay", float("inf"), "weight_decay=inf must be a finite number"),
        ("compute_dtype", "float16", "float16' is not offered: .* without loss scaling"),
    ],
)
def test_validation_rejects_out_of_range_values(field, value, message):
    config = default_config()
    config[field] = value
    with pytest.raises(UserError, match=message):
        validate(config)


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.py")
    broken = tmp_path / "broken.py"
    broken.write_text("def nothing(): pass\n")
    with pytest.raises(UserError, match="no get_config"):
        load_config(broken)


def test_an_experiment_file_imports_the_files_beside_it_and_leaves_the_path_as_it_was(tmp_path):
    # A user's experiments in their own folder: one builds on another beside it, at import and
    # inside get_config, as experiments/*.py build on default_config().
    def experiments(folder, batch_size):
        folder.mkdir()
        (folder / "good.py").write_text((ROOT / "experiments" / "quick.py").read_text())
        (folder / "helpers").mkdir()
        (folder / "helpers" / "__init__.py").write_text(f"BATCH = {batch_size}\n")
        (folder / "sib.py").write_text(
            "from good import get_config as base\n\n\n"
            "def get_config():\n"
            "    from helpers import BATCH\n\n"
            "    config = base()\n"
            "    config.batch_size = BATCH\n"
            "    return config\n"
        )
        return folder / "sib.py"

    path_before = list(sys.path)
    assert load_config(experiments(tmp_path / "mine", 48)).batch_size == 48
    assert sys.path == path_before
    assert "good" not in sys.modules and "helpers" not in sys.modules
    # Another folder's files of the same names are its own, not the first folder's.
    assert load_config(experiments(tmp_path / "theirs", 24)).batch_size == 24
    assert sys.path == path_before


def test_every_config_field_is_read_outside_config_py():
    # A field added to default_config (and its bounds) but read nowhere trains silently without
    # it: every field must be named (`.field` or "field") somewhere else in the package.
    package = ROOT / "alexnet_jax"
    source = "\n".join(p.read_text() for p in package.glob("*.py") if p.name != "config.py")
    unread = [
        key
        for key in default_config().keys()
        if not re.search(rf"\.{key}\b|[\"']{key}[\"']", source)
    ]
    assert not unread, f"config fields read nowhere outside config.py: {unread}"
