"""How far the golden test's tiny training moves when its initial kernels move by one ulp.

    python benchmarks/results/cpu/rounding/one_ulp.py     (from the repository root)

Trains tests/test_golden.py's config for its epoch of 4 steps twice in one process: from the
initial state, and from it with every kernel moved one ulp up (`nextafter`). Prints each
run's epoch loss, the per-step losses and the final state's sha256.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "tests"))

# isort: off
import conftest  # noqa: E402  (two host devices: before JAX starts)

# isort: on
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from test_golden import GOLDEN_RUN, cpu_model, state_sha256  # noqa: E402

from alexnet_jax.data import synthetic_dataset  # noqa: E402
from alexnet_jax.interrupt import StopRequests  # noqa: E402
from alexnet_jax.run import build, train_epoch  # noqa: E402

config = conftest.tiny_config(**GOLDEN_RUN, log_every=1)
run = build(config, synthetic_dataset("mnist", train_size=64, test_size=32), jax.devices()[:2])


def epoch(state):
    steps = []
    state, totals = train_epoch(
        run, state, 0, StopRequests(), on_log=lambda logged, _: steps.extend(logged)
    )
    losses = [round(float(m["loss_sum"] / m["count"]), 7) for _, m in steps]
    return float(totals["loss_sum"] / totals["count"]), losses, state_sha256(state)


print(cpu_model())
print("initial state:      ", *epoch(run.fresh_state()))
state = run.fresh_state()
moved = jax.tree.map(lambda p: jnp.nextafter(p, jnp.inf) if p.ndim > 1 else p, state.params)
print("kernels one ulp up: ", *epoch(state.replace(params=moved)))
