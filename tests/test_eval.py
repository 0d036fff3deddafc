import functools
import json

import jax
import numpy as np
import pytest

from alexnet_jax import eval as eval_cli
from alexnet_jax import evaluation, train
from alexnet_jax.checkpoint import Checkpoints
from alexnet_jax.config import derive
from alexnet_jax.data import Split
from alexnet_jax.parallel import make_mesh, replicated

from conftest import new_state, record_split_reads, tiny_config


def test_confusion_and_per_class_accuracy():
    result = evaluation.EvalResult(
        loss=0.0,
        accuracy=0.6,
        predictions=np.array([0, 1, 1, 2, 0]),
        labels=np.array([0, 1, 2, 2, 1]),
        num_classes=3,
    )
    np.testing.assert_array_equal(result.confusion, [[1, 0, 0], [1, 1, 0], [0, 1, 1]])
    np.testing.assert_allclose(result.per_class_accuracy, [1.0, 0.5, 0.5])


@pytest.mark.parametrize("devices, flip", [(1, False), (2, True)])
def test_evaluate_counts_every_example_once(tiny_dataset, cpu_devices, devices, flip):
    config = tiny_config(eval_batch_size=24, eval_flip=flip)  # 32 test images: one padded batch
    mesh = make_mesh(cpu_devices[:devices])
    state = jax.device_put(new_state(config), replicated(mesh))
    split = evaluation.DeviceSplit(tiny_dataset.test, config.eval_batch_size, mesh)
    result = evaluation.evaluate(
        state, split, evaluation.make_evaluator(config, derive(config), mesh), 10
    )
    assert len(result.predictions) == len(tiny_dataset.test) == 32
    np.testing.assert_array_equal(result.labels, tiny_dataset.test.labels)
    assert result.accuracy == pytest.approx(np.mean(result.predictions == result.labels))
    assert result.confusion.sum() == 32


def test_eval_cli_restores_a_run_without_its_command_line(
    tiny_run, shared_tfds, tmp_path, capsys, monkeypatch
):
    out_json = tmp_path / "eval.json"
    read = record_split_reads(monkeypatch)  # the test split only
    eval_cli.main(
        ["--ckpt", str(tiny_run), "--data-dir", str(shared_tfds), "--json", str(out_json)]
    )
    assert read == ["test"]
    printed, err = capsys.readouterr()
    # The tiny run was trained on a synthetic Dataset (after the progress bar of the reading).
    assert err.strip().splitlines()[-1] == (
        f"note: {tiny_run}/checkpoints/1 was trained on the in-memory Dataset 'mnist': it was "
        "evaluated on TFDS mnist:3.0.1's test split instead"
    )
    assert "top-1 accuracy" in printed and "confusion matrix" in printed
    report = json.loads(out_json.read_text())
    matrix = np.array(report["confusion_matrix"])
    assert report["num_examples"] == matrix.sum() == 10000
    assert report["accuracy"] == pytest.approx(np.trace(matrix) / 10000)
    assert report["epoch"] == 1 and len(report["per_class_accuracy"]) == 10
    # With --json -, the same JSON and nothing else on stdout (as predict's), and no file "-".
    monkeypatch.chdir(tmp_path)
    eval_cli.main(["--ckpt", str(tiny_run), "--data-dir", str(shared_tfds), "--json", "-"])
    assert json.loads(capsys.readouterr().out) == report
    assert not (tmp_path / "-").exists()


def test_eval_cli_on_a_path_that_is_not_a_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        eval_cli.main(["--ckpt", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "is not a checkpoint" in capsys.readouterr().err


def test_restored_state_predicts_like_the_trained_one(tiny_dataset, cpu_devices, tmp_path):
    config = tiny_config(num_epochs=1)
    train.train_and_evaluate(config, tmp_path, tiny_dataset, cpu_devices[:1])
    checkpoints = Checkpoints(tmp_path / "mnist" / "checkpoints", read_only=True)
    mesh = make_mesh(cpu_devices[:1])
    state, history = checkpoints.restore(1, new_state(config), mesh)
    split = evaluation.DeviceSplit(tiny_dataset.test, config.eval_batch_size, mesh)
    result = evaluation.evaluate(
        state, split, evaluation.make_evaluator(config, derive(config), mesh), 10
    )
    assert result.accuracy == history[-1]["test_accuracy"]
    assert result.loss == pytest.approx(history[-1]["test_loss"], rel=1e-6)


def test_eval_cli_on_a_run_without_checkpoints(tmp_path, capsys):
    (tmp_path / "mnist" / "checkpoints").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        eval_cli.main(["--ckpt", str(tmp_path / "mnist")])
    assert exit_info.value.code == 2
    assert "holds no checkpoint" in capsys.readouterr().err


def test_eval_cli_on_a_damaged_checkpoint_names_it(
    tiny_dataset, cpu_devices, shared_tfds, tmp_path, capsys
):
    train.train_and_evaluate(tiny_config(num_epochs=1), tmp_path, tiny_dataset, cpu_devices[:1])
    history = tmp_path / "mnist" / "checkpoints" / "1" / "history" / "metadata"
    history.write_text(history.read_text().replace("1", "2", 1))
    capsys.readouterr()  # forget the training's output
    with pytest.raises(SystemExit) as exit_info:
        eval_cli.main(["--ckpt", str(tmp_path / "mnist"), "--data-dir", str(shared_tfds)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "checkpoints/1 is unreadable: its history differs from what was saved" in err
    assert len(err.strip().splitlines()) == 1


def test_eval_flip_averages_each_image_with_its_mirror(tiny_dataset, cpu_devices):
    config = tiny_config(eval_flip=True, eval_batch_size=16)
    derived = derive(config)
    mesh = make_mesh(cpu_devices[:2])
    # A fresh model's probabilities are all near 1/10; with its last layer scaled up they are
    # far apart, and those of an image and of its mirror differ.
    state = new_state(config)
    last = state.params["dense_2"]
    params = {**state.params, "dense_2": {**last, "kernel": last["kernel"] * 300}}
    state = jax.device_put(state.replace(params=params), replicated(mesh))
    images = tiny_dataset.test.images.copy()
    images[:, :, :9] = 255  # a bright left edge
    labels = tiny_dataset.test.labels
    options = {**evaluation.inference_options(config, derived), "flip": False}
    plain = jax.jit(functools.partial(evaluation.class_probabilities, **options))
    as_is, mirrored = np.asarray(plain(state, images)), np.asarray(plain(state, images[:, :, ::-1]))
    assert np.abs(as_is - mirrored).max() > 0.1  # the model is not mirror-symmetric
    averaged = (as_is + mirrored) / 2
    expected_loss = float(np.mean(-np.log(averaged[np.arange(len(labels)), labels])))

    split = evaluation.DeviceSplit(Split(images, labels), config.eval_batch_size, mesh)
    result = evaluation.evaluate(state, split, evaluation.make_evaluator(config, derived, mesh), 10)
    assert result.loss == pytest.approx(expected_loss, rel=1e-5)
    plain_loss = float(np.mean(-np.log(as_is[np.arange(len(labels)), labels])))
    assert result.loss != pytest.approx(plain_loss, rel=1e-2)
