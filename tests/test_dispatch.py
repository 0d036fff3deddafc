"""Several steps per call to the devices (`steps_per_dispatch`): the same steps as single calls
(to rounding), and the epoch driver's handling of their stacked metrics."""

import jax
import numpy as np
import pytest

from alexnet_jax.interrupt import StopRequests
from alexnet_jax.run import NonFiniteLoss, build, drive, train_epoch

from conftest import LEVERS, new_state, tiny_config


def test_several_steps_per_dispatch_equal_single_steps_to_rounding(tiny_dataset, cpu_devices):
    # Whole epochs through the trainer's driver (`run.train_epoch`) on two devices, with every
    # source of randomness (dropout, crops, cutout, affine transforms, mixing) and the moving
    # average: calls of 3 steps then the epoch's short last call of 1, against calls of 1 step.
    # On two devices, the case with the most to go wrong (collectives in every unrolled step);
    # one device more would compile both programs again, the suite's largest compilation.
    config = tiny_config(
        dropout_rate=0.5,
        crop_padding=2,
        cutout=8,
        ema_decay=0.9,
        num_epochs=2,
        batch_size=16,
        **LEVERS,
    )

    def trained(steps_per_dispatch):
        run = build(
            tiny_config(**{**config.to_dict(), "steps_per_dispatch": steps_per_dispatch}),
            tiny_dataset,
            cpu_devices[:2],
        )
        assert run.steps_per_epoch == 4
        state, stop = run.fresh_state(), StopRequests()
        for epoch in range(2):
            state, totals = train_epoch(run, state, epoch, stop)
        return jax.device_get(state), totals

    (single, single_totals), (several, several_totals) = trained(1), trained(3)
    assert single_totals == several_totals
    assert int(several.step) == 8
    # The parameters, BatchNorm statistics, step and key: the same bits. The momentum and the
    # moving average: XLA fuses the small leaves' updates across the unrolled steps, and they
    # round apart by at most 32 ulp here (the dense biases' moving average; README: Speed).
    exact = ("params", "batch_stats", "step", "rng")
    leaves = jax.tree_util.tree_leaves_with_path(several)
    assert len(leaves) == len(jax.tree.leaves(single))
    for (path, a), b in zip(leaves, jax.tree.leaves(single), strict=True):
        name = jax.tree_util.keystr(path)
        if name.startswith(tuple(f".{part}" for part in exact)):
            np.testing.assert_array_equal(a, b, err_msg=name)
        else:
            np.testing.assert_array_max_ulp(a, b, maxulp=32)
    initial_kernel = new_state(config).params["conv2d"]["kernel"]
    assert not np.array_equal(several.params["conv2d"]["kernel"], initial_kernel)


class FakeState:
    step = 10


def fake_dispatches(calls, nonfinite_at):
    """`run.drive`'s dispatch function for calls of several steps, with stacked numpy metrics."""

    def step_fn(state, work):
        first, count = work
        steps = np.arange(first, first + count) + 1 + FakeState.step  # 1-based global steps
        metrics = {
            "loss_sum": np.full(count, 8.0),
            "correct": np.full(count, 4),
            "count": np.full(count, 16),
            "nonfinite": (steps == nonfinite_at).astype(np.int32),
        }
        calls.append(work)
        return state, metrics

    return step_fn


@pytest.mark.parametrize("nonfinite", ["skip", "stop"])
def test_the_loop_names_a_non_finite_step_inside_a_dispatch(nonfinite, capsys):
    # Steps 11..20 (an epoch of 10 after 10 done) in calls of 3, 3, 3 and 1, fetched every 6
    # steps or more: the 15th is the second step of the second call.
    config = tiny_config(nonfinite=nonfinite, log_every=6, num_epochs=2)
    calls = []
    work = [(0, 3), (3, 3), (6, 3), (9, 1)]
    step_fn = fake_dispatches(calls, nonfinite_at=15)
    if nonfinite == "stop":
        with pytest.raises(NonFiniteLoss, match=r"non-finite at step 15 \(epoch 2\)"):
            drive(FakeState(), iter(work), 10, step_fn, 1, config, StopRequests())
        assert calls == work[:2]  # found at the first fetch, after 6 steps
        return
    _, totals = drive(FakeState(), iter(work), 10, step_fn, 1, config, StopRequests())
    assert calls == work
    assert totals == {"loss_sum": 72.0, "correct": 36, "count": 144, "skipped": 1}
    out = capsys.readouterr().out
    assert "skipped step 15:" in out and out.count("skipped step") == 1
