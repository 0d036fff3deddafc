"""Test-time views: evaluation, predict and export average the same ones."""

import json

import jax
import numpy as np
import pytest

from alexnet_jax import checkpoint, evaluation, export, exported, predict, preprocess
from alexnet_jax import eval as eval_cli
from alexnet_jax.data import Split
from alexnet_jax.parallel import make_mesh
from alexnet_jax.state import inference_variables


def test_the_views_are_each_shift_and_its_mirror():
    assert evaluation.views(False, 0) == [{"shift": [0, 0], "flip": False}]
    assert evaluation.views(True, 0) == [
        {"shift": [0, 0], "flip": False},
        {"shift": [0, 0], "flip": True},
    ]
    ten = evaluation.views(True, 2)
    assert len(ten) == 10
    assert [view["shift"] for view in ten[::2]] == [[0, 0], [-2, 0], [2, 0], [0, -2], [0, 2]]
    assert [view["flip"] for view in ten] == [False, True] * 5


def test_a_shifted_view_moves_the_source_image_and_fills_with_zeros():
    images = np.random.default_rng(0).integers(1, 256, (2, 6, 5, 3)).astype(np.uint8)
    down_left = np.asarray(preprocess.shifted(images, 2, -1))
    np.testing.assert_array_equal(down_left[:, 2:, :-1], images[:, :-2, 1:])
    assert not down_left[:, :2].any() and not down_left[:, :, -1].any()
    assert preprocess.shifted(images, 0, 0) is images


@pytest.fixture(scope="module")
def trained_with_views(tiny_run, cpu_devices):
    """The tiny run's model, evaluated over 10 views: flip x (none, and 1 pixel each way)."""
    trained = checkpoint.load_trained(tiny_run, mesh=make_mesh(cpu_devices[:1]))
    trained.config.eval_flip = True
    trained.config.eval_shift = 1
    return trained


def test_evaluation_predict_and_export_average_the_same_views(trained_with_views, tmp_path):
    trained = trained_with_views
    images = np.random.default_rng(1).integers(0, 256, (8, 28, 28, 1)).astype(np.uint8)
    # predict: evaluation's class_probabilities with the run's options.
    probabilities = predict.make_classifier(trained, 8)(images)
    assert probabilities.shape == (8, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)

    # By hand, from the model itself: each shifted source image resized, then it and its mirror.
    derived, variables = trained.derived, inference_variables(trained.state)
    model_probabilities = jax.jit(
        lambda x: jax.nn.softmax(trained.state.apply_fn(variables, x, train=False))
    )
    by_hand = []
    for dy, dx in ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)):
        x = preprocess.to_model_input(
            preprocess.shifted(images, dy, dx),
            trained.config.image_size,
            derived.mean,
            derived.std,
            derived.dtype,
        )
        by_hand += [model_probabilities(x), model_probabilities(x[:, :, ::-1])]
    np.testing.assert_allclose(probabilities, np.mean(by_hand, axis=0), rtol=1e-5, atol=1e-7)
    # The views change the answer (the test would pass for a single view otherwise).
    assert not np.allclose(by_hand[0], probabilities, rtol=1e-3)

    # The evaluator (eval, report, seeds and training's evaluation): the same predictions.
    mesh = make_mesh(jax.devices()[:1])
    split = evaluation.DeviceSplit(Split(images, np.zeros(8, np.int32)), 8, mesh)
    evaluator = evaluation.make_evaluator(trained.config, derived, mesh)
    result = evaluation.evaluate(trained.state, split, evaluator, 10)
    np.testing.assert_array_equal(result.predictions, probabilities.argmax(axis=1))

    # export: logits whose softmax is the views' mean probability, and a manifest naming them.
    manifest = export.export(trained, tmp_path, platforms=("cpu",))
    assert manifest["test_time_views"] == evaluation.views(True, 1)
    saved = json.loads((tmp_path / exported.MANIFEST).read_text())
    assert saved["test_time_views"] == manifest["test_time_views"]
    model = exported.load(tmp_path)
    np.testing.assert_allclose(model.probabilities(images), probabilities, rtol=1e-4, atol=1e-6)


def test_eval_refuses_a_shift_that_leaves_nothing_to_see(tiny_run, capsys):
    with pytest.raises(SystemExit) as exit_info:
        eval_cli.main(["--ckpt", str(tiny_run), "--shift", "14"])
    assert exit_info.value.code == 2
    assert "eval_shift=14 would shift the mnist image out of view" in capsys.readouterr().err
