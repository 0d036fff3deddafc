"""A CPU-sized run of the same layer stack: MNIST at 67x67 (the smallest input AlexNet takes)."""

from alexnet_jax.config import default_config


def get_config():
    config = default_config()
    config.dataset = "mnist"
    config.image_size = 67
    config.compute_dtype = "float32"
    config.num_epochs = 1
    config.train_examples = 32000  # about half an epoch: 250 steps
    config.batch_size = 128
    config.learning_rate = 0.04
    config.warmup_epochs = 0.1
    config.crop_padding = 0
    config.flip = False
    config.log_every = 10
    # The plain first convolution: space-to-depth gains nothing on a CPU (README: Speed), and
    # the quick run computes the same bits as before the stem could be chosen.
    config.stem = "conv11"
    return config
