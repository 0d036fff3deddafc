"""CIFAR-10 as in the seed: the full training set, images resized to 224x224."""

from alexnet_jax.config import default_config


def get_config():
    config = default_config()
    config.dataset = "cifar10"
    config.num_epochs = 50
    config.batch_size = 512
    config.learning_rate = 0.04
    config.crop_padding = 4
    config.flip = True
    config.eval_flip = True
    return config
