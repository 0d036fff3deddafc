"""alexnet_jax: the AlexNet of "AlexNet for cifar10 and mnist" in JAX/Flax, trained data-parallel.

For notebooks and scripts:

    from alexnet_jax import default_config, train_and_evaluate, load_trained
    config = default_config()
    config.dataset, config.num_epochs = "mnist", 1
    trained = train_and_evaluate(config, "runs")      # .state, .history, .config
    trained = load_trained("runs/mnist")               # the same, from its checkpoint

The names load lazily, so that `import alexnet_jax.exported` (the export's loader) stays light.
"""

import importlib
import sys

# `python -m alexnet_jax.<command>` imports this package first, while sys.argv[0] is still "-m"
# (Python's documented placeholder): Ctrl-C during the command's imports then exits quietly.
# Notebooks, scripts and `python -c` are left with Python's Ctrl-C.
if getattr(sys, "argv", None) and sys.argv[0] == "-m":
    from alexnet_jax.errors import stop_quietly_while_starting

    stop_quietly_while_starting()

__version__ = "0.1.0"

_PUBLIC = {
    "AlexNet": "alexnet_jax.model",
    "default_config": "alexnet_jax.config",
    "load_config": "alexnet_jax.config",
    "train_and_evaluate": "alexnet_jax.train",
    "load_trained": "alexnet_jax.checkpoint",
}
__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'alexnet_jax' has no attribute {name!r}")
