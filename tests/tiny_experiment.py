"""The config of the tests' training processes: tiny_config with dropout and augmentation on."""

from conftest import tiny_config


def get_config():
    return tiny_config(num_epochs=4, dropout_rate=0.5, crop_padding=2, keep_checkpoints=2)
