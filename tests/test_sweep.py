import json

import pytest

from alexnet_jax import sweep
from alexnet_jax.config import load_config
from alexnet_jax.errors import UserError

from conftest import ROOT, tiny_config


def test_a_sweep_trains_a_variant_on_the_validation_split_and_writes_the_table(
    tiny_dataset, cpu_devices, tmp_path
):
    # 64 training images: 48 to train on (3 steps of 16), the last 16 to validate on.
    base = tiny_config(num_epochs=2, validation_examples=16, log_every=1)
    # A dataset without its test split: a sweep that read it would fail.
    training_only = sweep.Dataset("mnist", tiny_dataset.train, None, tiny_dataset.class_names)
    table = sweep.run_sweep(
        base, {"slower": {"learning_rate": 0.005}}, tmp_path, training_only, cpu_devices, "tiny"
    )

    (row,) = table["variants"]
    assert row["name"] == "slower" and row["changes"] == {"learning_rate": 0.005}
    assert row["epochs"] == 2 and len(row["validation_accuracy_per_epoch"]) == 2
    assert row["validation_accuracy"] == row["validation_accuracy_per_epoch"][-1]
    assert row["best_validation_accuracy"] == max(row["validation_accuracy_per_epoch"])
    assert row["best_epoch"] in (1, 2)
    assert 0 <= row["validation_accuracy"] <= 1 and row["validation_loss"] > 0
    assert row["wall_seconds"] >= row["train_seconds"] > 0
    assert table["backend"] == "cpu"
    assert json.loads((tmp_path / sweep.JSON).read_text()) == table
    text = (tmp_path / sweep.MARKDOWN).read_text()
    assert "| slower | learning_rate=0.005 | 2 | **" in text
    assert "validation split: the last 16 training images" in text


def test_the_table_lists_the_variants_in_order_and_marks_the_best():
    def row(name, accuracy):
        return {
            "name": name,
            "changes": {"cutout": 8} if name == "cutout" else {},
            "epochs": 3,
            "validation_accuracy": accuracy,
            "best_validation_accuracy": accuracy,
            "best_epoch": 3,
            "validation_loss": 0.5,
            "wall_seconds": 10.0,
            "compile_seconds": 2.0,
        }

    table = {
        "sweep": "s.py",
        "date": "today",
        "device": "cpu",
        "backend": "cpu",
        "jax_version": "0",
        "base": tiny_config(validation_examples=16).to_dict(),
        "variants": [row("base", 0.5), row("cutout", 0.75)],
    }
    lines = sweep.markdown(table).splitlines()
    rows = [line for line in lines if line.startswith("| base") or line.startswith("| cutout")]
    assert rows[0].startswith("| base | (base) | 3 | 50.00% |")
    assert rows[1].startswith("| cutout | cutout=8 | 3 | **75.00%** |")
    assert lines[-1] == "2 variant(s), 20 s in all."


def test_a_sweep_refuses_variants_without_a_validation_split(tmp_path):
    base = tiny_config(validation_examples=16)
    with pytest.raises(UserError, match="variant 'full' has no validation split"):
        sweep.run_sweep(base, {"ok": {}, "full": {"validation_examples": 0}}, tmp_path)
    with pytest.raises(UserError, match="variant 'typo': unknown config field 'mixup'"):
        sweep.run_sweep(base, {"typo": {"mixup": 0.2}}, tmp_path)
    with pytest.raises(UserError, match="variant 'bad': mixup_probability=2.0 must be at most"):
        sweep.run_sweep(base, {"bad": {"mixup_probability": 2.0}}, tmp_path)
    assert not (tmp_path / sweep.JSON).exists()  # refused before anything ran


@pytest.mark.parametrize("name", ["sweep_cifar10.py", "sweep_cifar10_long.py", "sweep_mnist.py"])
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
