import json
import os
import socket
import sys
import threading

import pytest

from alexnet_jax import sweep
from alexnet_jax.config import load_config
from alexnet_jax.errors import UserError
from alexnet_jax.locks import output_lock_path

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


def test_a_sweep_file_imports_the_files_beside_it(tmp_path):
    (tmp_path / "variants.py").write_text("CUTOUT = {'cutout8': {'cutout': 8}}\n")
    path = tmp_path / "my_sweep.py"
    path.write_text(
        "from alexnet_jax.config import load_config\n"
        "from variants import CUTOUT\n\n\n"
        "def get_config():\n"
        f"    config = load_config({str(ROOT / 'experiments' / 'quick.py')!r})\n"
        "    config.validation_examples = 64\n"
        "    return config\n\n\n"
        "def get_variants():\n"
        "    return {'base': {}, **CUTOUT}\n"
    )
    assert sweep.load_variants(path) == {"base": {}, "cutout8": {"cutout": 8}}
    assert load_config(path).validation_examples == 64
    assert "variants" not in sys.modules


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


def fake_result(accuracy: float) -> dict:
    """What `run_variant` returns, without training: the table's logic is what is tested."""
    return {
        "epochs": 1,
        "validation_accuracy": accuracy,
        "validation_loss": 1.0,
        "best_validation_accuracy": accuracy,
        "best_epoch": 1,
        "train_loss": 1.0,
        "setup_seconds": 0.0,
        "compile_seconds": 1.0,
        "train_seconds": 1.0,
        "wall_seconds": 2.0,
        "validation_accuracy_per_epoch": [accuracy],
    }


@pytest.fixture
def untrained(monkeypatch, tiny_dataset):
    """run_sweep of variants {name: validation accuracy}, each given instead of trained (a
    variant that would train is a string: the test fails if it does)."""

    def run(accuracies: dict, out, **base):
        results = iter(accuracies.values())
        monkeypatch.setattr(sweep, "run_variant", lambda *_: fake_result(next(results)))
        changes = {name: {"learning_rate": 0.01 + i / 1000} for i, name in enumerate(accuracies)}
        config = tiny_config(validation_examples=16, **base)
        return sweep.run_sweep(config, changes, out, tiny_dataset, None, "s.py")

    return run


def test_a_sweep_into_a_folder_of_the_same_sweep_adds_to_its_table(untrained, tmp_path):
    untrained({"base": 0.5, "ema": 0.6}, tmp_path)
    first = json.loads((tmp_path / sweep.JSON).read_text())
    table = untrained({"ema": 0.7, "views": 0.4}, tmp_path)

    # ema's row replaced in its place, base's kept as the first call wrote it, views added.
    assert [row["name"] for row in table["variants"]] == ["base", "ema", "views"]
    assert table["variants"][0] == first["variants"][0]
    assert [row["validation_accuracy"] for row in table["variants"]] == [0.5, 0.7, 0.4]
    assert table["added"] == {"ran": ["ema", "views"], "replaced": ["ema"]}
    assert json.loads((tmp_path / sweep.JSON).read_text()) == table
    text = (tmp_path / sweep.MARKDOWN).read_text()
    assert (
        "this call ran ema (replacing its earlier row), views; kept from earlier calls: base ("
        f"{first['date']}, cpu (cpu), jax " in text
    )
    assert "| ema | learning_rate=0.01 | 1 | **70.00%** |" in text  # the second call's changes
    assert text.endswith("3 variant(s), 6 s in all.\n")


@pytest.mark.parametrize(
    "change, difference",
    [
        ({"num_epochs": 3}, "num_epochs: 2 -> 3"),
        ({"learning_rate": 0.1, "seed": 1}, "learning_rate: 0.01 -> 0.1; seed: 0 -> 1"),
    ],
)
def test_a_sweep_into_a_folder_of_another_base_is_refused_before_anything_trains(
    untrained, tmp_path, change, difference
):
    untrained({"base": 0.5}, tmp_path)
    saved = {name: (tmp_path / name).read_bytes() for name in (sweep.JSON, sweep.MARKDOWN)}
    with pytest.raises(UserError) as refused:
        untrained({"base": "never trained"}, tmp_path, **change)
    message = str(refused.value)
    assert f"holds a sweep of another base ({difference})" in message
    assert "pass another --out (nothing was trained)" in message and "\n" not in message
    assert {name: (tmp_path / name).read_bytes() for name in saved} == saved  # left alone


@pytest.mark.parametrize("now, refused", [(False, False), (True, True)])
def test_a_config_field_newer_than_the_sweep_counts_as_its_default(
    untrained, tmp_path, now, refused
):
    # A sweep.json written before trivial_augment existed ran without it: adding to it with the
    # field at its default (off) is the same base; with it on, another one.
    untrained({"base": 0.5}, tmp_path)
    table = json.loads((tmp_path / sweep.JSON).read_text())
    del table["base"]["trivial_augment"]
    (tmp_path / sweep.JSON).write_text(json.dumps(table))
    if refused:
        with pytest.raises(UserError, match=r"another base \(trivial_augment: False -> True\)"):
            untrained({"ema": 0.7}, tmp_path, trivial_augment=now)
    else:
        added = untrained({"ema": 0.7}, tmp_path, trivial_augment=now)
        assert [row["name"] for row in added["variants"]] == ["base", "ema"]


def test_a_sweep_of_another_sweep_file_is_refused(untrained, tmp_path):
    untrained({"base": 0.5}, tmp_path)
    table = json.loads((tmp_path / sweep.JSON).read_text())
    (tmp_path / sweep.JSON).write_text(json.dumps({**table, "sweep": "other.py"}))
    with pytest.raises(UserError, match=r"another base \(sweep file: 'other.py' -> 's.py'\)"):
        untrained({"base": "never trained"}, tmp_path)


@pytest.mark.parametrize(
    "text, why",
    [
        ("{ cut short", "Expecting property name"),
        ("[]", "not a JSON object"),
        ('{"sweep": "s.py", "base": {}}', "no list 'variants'"),
        ('{"sweep": "s.py", "base": {}, "variants": [{"name": "x"}]}', "a variant without"),
        (None, "Is a directory"),
    ],
)
def test_an_unreadable_sweep_json_is_refused_in_one_line_before_anything_trains(
    untrained, tmp_path, text, why
):
    if text is None:
        (tmp_path / sweep.JSON).mkdir()
    else:
        (tmp_path / sweep.JSON).write_text(text)
    with pytest.raises(UserError) as refused:
        untrained({"base": "never trained"}, tmp_path)
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / sweep.JSON} cannot be read (") and why in message
    assert message.endswith("pass another --out (nothing was trained)") and "\n" not in message
    assert not (tmp_path / sweep.MARKDOWN).exists()


def test_a_sweep_md_without_its_json_is_not_replaced(untrained, tmp_path):
    (tmp_path / sweep.MARKDOWN).write_text("an earlier table\n")
    with pytest.raises(UserError, match=r"sweep.md has no sweep.json beside it"):
        untrained({"base": "never trained"}, tmp_path)
    assert (tmp_path / sweep.MARKDOWN).read_text() == "an earlier table\n"


def test_a_second_sweep_into_a_folder_in_use_is_refused_and_the_first_keeps_its_table(
    monkeypatch, tiny_dataset, tmp_path
):
    # Two sweeps into one folder at once (`--only base` and `--only lr2`): both read it empty,
    # and the later table replaced the other's rows.
    training, finish = threading.Event(), threading.Event()

    def run_variant(*_):
        if threading.current_thread() is threading.main_thread():
            return fake_result(0.7)  # the second sweep's variant, had it been let in
        training.set()
        assert finish.wait(60)
        return fake_result(0.5)

    monkeypatch.setattr(sweep, "run_variant", run_variant)
    config = tiny_config(validation_examples=16)
    first = threading.Thread(
        target=sweep.run_sweep, args=(config, {"base": {}}, tmp_path, tiny_dataset, None, "s.py")
    )
    first.start()
    try:
        assert training.wait(60)
        with pytest.raises(UserError) as refused:
            variants = {"lr2": {"learning_rate": 0.02}}
            sweep.run_sweep(config, variants, tmp_path, tiny_dataset, None, "s.py")
    finally:
        finish.set()
        first.join()
    message = str(refused.value)
    assert message.startswith(
        f"{tmp_path} is in use by another sweep (pid {os.getpid()} on host {socket.gethostname()}"
    )
    assert message.endswith("): wait for it to end, or pass another --out"), message
    table = json.loads((tmp_path / sweep.JSON).read_text())
    assert [row["name"] for row in table["variants"]] == ["base"] and "added" not in table
    assert sorted(p.name for p in tmp_path.iterdir()) == [sweep.JSON, sweep.MARKDOWN]
    assert not output_lock_path(tmp_path).exists()


def test_the_command_refuses_a_sweep_of_another_base_in_one_line(tmp_path, capsys):
    path = ROOT / "experiments" / "sweep_mnist.py"
    base = load_config(path).to_dict()
    (tmp_path / sweep.JSON).write_text(
        json.dumps({"sweep": str(path), "base": base, "variants": []})
    )
    with pytest.raises(SystemExit) as exit_info:
        sweep.main(["--config", str(path), "--out", str(tmp_path), "--config.num_epochs=1"])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {tmp_path} holds a sweep of another base (num_epochs: 8 -> 1)")
