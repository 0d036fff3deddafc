"""XLA's memory plan of the trainer's one-step program (bench-peers' CPU configuration: conv11,
float32, batch 16, 67x67, one device), and whether it donates the state.

    PYTHONPATH=. python benchmarks/results/cpu/in-place/memory.py

Prints MB of arguments, outputs, outputs aliased to the (donated) arguments, and temporaries;
with `--keras`, also those of Keras' jitted `train_step` (benchmarks/step_breakdown.py's).
Run from a checkout, it measures that checkout's trainer.
"""

import sys
from pathlib import Path

import jax

from alexnet_jax import bench
from alexnet_jax.data import synthetic_dataset
from alexnet_jax.run import build

config = bench.base_config("experiments/cifar10.py", 67, 64, [])
config.batch_size = 16
config.update(bench.configuration("conv11-f32-k1"))
run = build(config, synthetic_dataset("cifar10", train_size=64, test_size=64), jax.devices()[:1])
state = run.fresh_state()
program = run.calls.lower(state, run.partitions.epoch_orders(state.rng, 0))[0].compile()


def plan(compiled) -> str:
    analysis = compiled.memory_analysis()
    return ", ".join(
        f"{name} {getattr(analysis, f'{name}_size_in_bytes') / 1e6:.0f} MB"
        for name in ("argument", "output", "alias", "temp")
    )


print(plan(program))
if "--keras" in sys.argv:
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # benchmarks/
    import step_breakdown

    print("keras:", plan(step_breakdown.Keras(67, 16).compiled))
