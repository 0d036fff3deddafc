"""The Keras baseline of `make bench-peers` (benchmarks/keras_peer.py)."""

import importlib.util
import json

import pytest

from conftest import ROOT


@pytest.fixture(scope="module")
def keras_peer():
    path = ROOT / "benchmarks" / "keras_peer.py"
    module_spec = importlib.util.spec_from_file_location("keras_peer", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_the_keras_peer_is_the_seed_model(keras_peer):
    model = keras_peer.seed_model(224)
    assert keras_peer.check_parameters(model, 224, (32, 32, 3)) == 46_793_482
    assert model.count_params() == 46_793_482
    convs = [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    assert [(c.filters, c.kernel_size, c.strides) for c in convs] == [
        (96, (11, 11), (4, 4)),
        (256, (5, 5), (1, 1)),
        (384, (3, 3), (1, 1)),
        (384, (3, 3), (1, 1)),
        (256, (3, 3), (1, 1)),
    ]
    assert convs[0].compute_output_shape((None, 224, 224, 3)) == (None, 54, 54, 96)
    assert model.compute_output_shape((None, 32, 32, 3)) == (None, 10)


def test_a_peer_with_other_parameters_is_refused(keras_peer):
    model = keras_peer.seed_model(224, num_classes=9)
    with pytest.raises(
        AssertionError, match="Keras peer has 46,789,385 parameters, ours 46,793,482"
    ):
        keras_peer.check_parameters(model, 224, (32, 32, 3))


def test_bench_peers_runs_end_to_end(keras_peer, tmp_path, capsys):
    # CPU defaults: both models resize CIFAR-10's 32x32 to 67x67, float32, batch 16.
    out = tmp_path / "peers.json"
    keras_peer.main(["--ours", "s2d-k1", "--steps", "2", "--epochs", "1", "--out", str(out)])
    document = json.loads(out.read_text())
    assert (document["image_size"], document["batch_size"]) == (67, 16)
    (comparison,) = document["comparisons"]
    keras_result, (ours,) = comparison["keras"], comparison["ours"]
    assert keras_result["policy"] == "float32"
    assert keras_result["parameters"] == 21_627_658  # the seed model at 67x67, as ours
    # Keras' warm-up epoch, then one before each of ours (its warm-up and its timed epoch).
    assert len(keras_result["epoch_seconds"]) == 3 and keras_result["images_per_epoch"] == 32
    assert ours["name"] == "s2d-f32-k1" and ours["devices"] == 1
    assert (ours["batch_size"], ours["image_size"]) == (16, 67)
    # With one configuration, Keras' figure is that of the epoch timed in turn with ours.
    assert ours["keras_images_per_second"] == pytest.approx(keras_result["images_per_second"])
    assert keras_result["images_per_second"] == pytest.approx(
        32 / keras_result["epoch_seconds"][2], rel=1e-2
    )
    ratio = ours["train"]["images_per_second"] / ours["keras_images_per_second"]
    assert ours["ratio_to_keras"] == pytest.approx(ratio, rel=1e-2)
    printed = capsys.readouterr().out
    assert "keras 3." in printed and "s2d-f32-k1" in printed
