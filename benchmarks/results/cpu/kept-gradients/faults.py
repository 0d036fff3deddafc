"""Page faults and milliseconds a step: the trainer's one-step program (bench-peers' CPU
configuration: conv11, float32, batch 16, 67x67, one device) with its gradients kept in buffers
of their own (`step.keeps_gradients`), the same program with them among the call's temporaries,
and Keras' jitted `train_step` (benchmarks/step_breakdown.py's), in turn in one process.

    PYTHONPATH=. python benchmarks/results/cpu/kept-gradients/faults.py [--rounds 5] [--steps 4]

Prints, per round and program, the minor page faults of the process per step (getrusage) and
the milliseconds per step, then XLA's memory plan of each program (MB of temporaries, and of
outputs aliased to donated arguments).
"""

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # benchmarks/
import step_breakdown  # noqa: E402

from alexnet_jax import bench, step  # noqa: E402
from alexnet_jax.data import synthetic_dataset  # noqa: E402
from alexnet_jax.run import build  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--rounds", type=int, default=5)
parser.add_argument("--steps", type=int, default=4)
args = parser.parse_args()


def trainer(keep: bool):
    config = bench.base_config("experiments/cifar10.py", 67, 64, [])
    config.batch_size = 16
    config.update(bench.configuration("conv11-f32-k1"))
    with mock.patch.object(step, "keeps_gradients", lambda mesh: keep):
        run = build(config, synthetic_dataset("cifar10", 64, 64), jax.devices()[:1])
    state = run.fresh_state()
    run.orders = run.partitions.epoch_orders(state.rng, 0)
    return run, step_breakdown.Ours(run, state, "trainer")


programs = {"kept": trainer(True), "temporaries": trainer(False)}
programs["keras"] = (None, step_breakdown.Keras(67, 16))
for run, program in programs.values():
    program.steps(run, 2)  # warm

faults, ms = {name: [] for name in programs}, {name: [] for name in programs}
for r in range(args.rounds):
    for name, (run, program) in programs.items():
        before, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        program.steps(run, args.steps)
        ms[name].append(1000 * (time.perf_counter() - start) / args.steps)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        faults[name].append((after - before) / args.steps)
        print(f"round {r + 1} {name:<12} {faults[name][-1]:>8.0f} faults {ms[name][-1]:7.1f} ms")
print("median:")
for name, (_, program) in programs.items():
    plan = program.compiled.memory_analysis()
    temporaries, aliased = plan.temp_size_in_bytes / 1e6, plan.alias_size_in_bytes / 1e6
    print(
        f"  {name:<12} {statistics.median(faults[name]):>8.0f} faults a step "
        f"{statistics.median(ms[name]):7.1f} ms; temporaries {temporaries:.0f} MB, "
        f"aliased {aliased:.0f} MB"
    )
