"""MNIST as in the seed: the full training set, images resized to 224x224."""

from alexnet_jax.config import default_config


def get_config():
    config = default_config()
    config.dataset = "mnist"
    config.num_epochs = 8
    config.batch_size = 512
    config.learning_rate = 0.04
    config.crop_padding = 2  # digits are centred; a small shift is enough, and no flips
    config.flip = False
    return config
