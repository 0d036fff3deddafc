import json

import pytest

from alexnet_jax import sweep
from alexnet_jax.config import load_config
from alexnet_jax.errors import UserError

from conftest import ROOT, tiny_config


def test_a_sweep_trains_each_variant_on_the_validation_split_and_writes_the_table(
    tiny_dataset, cpu_devices, tmp_path
):
    # 64 training images: 48 to train on (3 steps of 16), the last 16 to validate on.
    base = tiny_config(num_epochs=2, validation_examples=16, log_every=1)
    variants = {"base": {}, "mixup": {"mixup_alpha": 0.4}}
    # A dataset without its test split: a sweep that read it would fail.
    training_only = sweep.Dataset("mnist", tiny_dataset.train, None, tiny_dataset.class_names)
    table = sweep.run_sweep(base, variants, tmp_path, training_only, cpu_devices, "tiny")

    assert [row["name"] for row in table["variants"]] == ["base", "mixup"]
    assert table["variants"][1]["changes"] == {"mixup_alpha": 0.4}
    for row in table["variants"]:
        assert row["epochs"] == 2 and len(row["validation_accuracy_per_epoch"]) == 2
        assert row["validation_accuracy"] == row["validation_accuracy_per_epoch"][-1]
        assert row["best_validation_accuracy"] == max(row["validation_accuracy_per_epoch"])
        assert 0 <= row["validation_accuracy"] <= 1 and row["validation_loss"] > 0
        assert row["wall_seconds"] >= row["train_seconds"] > 0
    # Mixing changed the training: the variants are not the same run twice.
    assert table["variants"][0]["train_loss"] != table["variants"][1]["train_loss"]
    assert table["backend"] == "cpu"
    assert json.loads((tmp_path / sweep.JSON).read_text()) == table
    lines = (tmp_path / sweep.MARKDOWN).read_text().splitlines()
    rows = [line for line in lines if line.startswith("| base") or line.startswith("| mixup")]
    assert len(rows) == 2 and "mixup_alpha=0.4" in rows[1]
    assert "validation split: the last 16 training images" in "\n".join(lines)


def test_a_sweep_refuses_variants_without_a_validation_split(tmp_path):
    base = tiny_config(validation_examples=16)
    with pytest.raises(UserError, match="variant 'full' has no validation split"):
        sweep.run_sweep(base, {"ok": {}, "full": {"validation_examples": 0}}, tmp_path)
    with pytest.raises(UserError, match="variant 'typo': unknown config field 'mixup'"):
        sweep.run_sweep(base, {"typo": {"mixup": 0.2}}, tmp_path)
    with pytest.raises(UserError, match="variant 'bad': mixup_probability=2.0 must be at most"):
        sweep.run_sweep(base, {"bad": {"mixup_probability": 2.0}}, tmp_path)
    assert not (tmp_path / sweep.JSON).exists()  # refused before anything ran


@pytest.mark.parametrize("name", ["sweep_cifar10.py", "sweep_mnist.py"])
def test_the_experiments_sweeps_are_valid_and_tune_on_validation_only(name):
    path = ROOT / "experiments" / name
    base = load_config(path)
    variants = sweep.load_variants(path)
    assert "base" in variants and variants["base"] == {}
    for variant, changes in variants.items():
        config = sweep.variant_config(base, variant, changes)
        assert config.validation_examples > 0


def test_the_command_refuses_an_unknown_variant(capsys):
    with pytest.raises(SystemExit) as exit_info:
        sweep.main(
            [
                "--config",
                str(ROOT / "experiments" / "sweep_mnist.py"),
                "--out",
                "unused",
                "--only",
                "base",
                "bogus",
            ]
        )
    assert exit_info.value.code == 2
    assert "--only bogus: the variants are base, affine" in capsys.readouterr().err
