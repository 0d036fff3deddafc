"""The quick config on the real MNIST: the one test that trains for minutes, not seconds."""

import pytest

from alexnet_jax import artifacts
from alexnet_jax.config import load_config
from alexnet_jax.train import train_and_evaluate

from conftest import ROOT

# The quick config's promise (README): at least 97% MNIST test accuracy on a 2-core CPU.
QUICK_ACCURACY_FLOOR = 0.97


# It runs first in CI (conftest.LONGEST_FIRST), beside the other process's compilations and
# training subprocesses, and took more than the suite's 10-minute limit per test there (443 s
# when it ran last, mostly alone; 2026-11-26).
@pytest.mark.timeout(1800)
def test_quick_config_reaches_its_accuracy_floor_on_real_mnist(shared_tfds, cpu_devices, tmp_path):
    config = load_config(ROOT / "experiments" / "quick.py")
    config.data_dir = str(shared_tfds)
    config.download = False
    # One device, as `make quick` has on a CPU (the tests' second host device is conftest's):
    # splitting each step over two devices on the same two cores made it a fifth slower.
    history = train_and_evaluate(config, tmp_path, devices=cpu_devices[:1]).history
    assert history[-1]["eval_split"] == "test"
    assert history[-1]["test_accuracy"] >= QUICK_ACCURACY_FLOOR
    assert artifacts.read_history(tmp_path / "mnist") == history
