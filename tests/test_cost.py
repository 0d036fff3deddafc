import numpy as np
import pytest

from alexnet_jax import cost
from alexnet_jax.cost import FirstCallsTimer, cost_line, duration


def test_the_seed_model_on_a_cpu_says_so_with_the_way_out():
    # CIFAR-10 at 224, batch 512: 97 steps an epoch; 52 s a step (issue 17) is 5,044 s an
    # epoch (84 min) and 252,200 s for 50 epochs (70 h, 2.9 days).
    line = cost_line("cpu", 224, 52.0, 97, 50)
    assert line.startswith("no accelerator: this run trains 224x224 images on the CPU at 52.0 s")
    assert "about 84 min an epoch and 70 h (2.9 days) for 50 epochs" in line
    assert "`make quick`" in line
    assert "`make install EXTRAS=dev,cuda`" in line
    assert "\n" not in line


def test_an_accelerator_gets_the_estimate_only():
    # 61 ms x 97 steps = 5.9 s an epoch; x 50 = 296 s, 5 min.
    line = cost_line("gpu", 224, 0.061, 97, 50)
    assert line == "estimate on the gpu: 61 ms a step: about 6 s an epoch and 5 min for 50 epochs"


def test_a_short_cpu_run_gets_the_estimate_only():
    # The quick run: 250 steps of 128 at 67x67, about 0.5 s a step here: 125 s, 2 min.
    line = cost_line("cpu", 67, 0.5, 250, 1)
    assert line == "estimate on the CPU: 500 ms a step: about 2 min an epoch and 2 min for 1 epoch"


def test_a_long_cpu_run_at_a_small_size_gets_the_advice_too():
    # 0.5 s x 250 steps x 30 epochs = 3,750 s: over the hour.
    assert cost_line("cpu", 67, 0.5, 250, 30).startswith("no accelerator: ")
    assert cost_line("cpu", 67, 0.5, 250, 28).startswith("estimate on the CPU: ")  # 3,500 s


def test_a_resumed_run_counts_only_the_epochs_left():
    assert "about 84 min an epoch and 84 min for 1 epoch" in cost_line("cpu", 224, 52.0, 97, 1)


@pytest.mark.parametrize(
    "seconds, text",
    [(0.4, "0 s"), (89, "89 s"), (90, "2 min"), (5044, "84 min"), (5400, "1.5 h"),
     (35999, "10 h"), (172799, "48 h"), (252200, "70 h (2.9 days)")],
)  # fmt: skip
def test_durations_read_as_a_person_says_them(seconds, text):
    assert duration(seconds) == text


@pytest.mark.parametrize("args", [(0.0, 97, 50), (1.0, 0, 50), (1.0, 97, -1)])
def test_nonsense_inputs_are_refused(args):
    with pytest.raises(ValueError):
        cost_line("cpu", 224, *args)


def test_the_timer_reports_once_the_first_call_after_the_compiling_one(monkeypatch):
    clock = iter([10.0, 40.0, 41.0, 99.0])  # dispatch times; the first call compiles for 30 s
    monkeypatch.setattr(cost.time, "perf_counter", lambda: next(clock))
    reports = []
    timer = FirstCallsTimer(reports.append)
    timer.dispatching()  # 10.0
    timer.dispatched({"loss": np.zeros(4)}, 4)
    assert reports == []  # the compiling call is not timed
    timer.dispatching()  # 40.0
    timer.dispatched({"loss": np.zeros(4)}, 4)  # done at 41.0: 1 s for 4 steps
    assert reports == [0.25]
    timer.dispatching()  # 99.0, never read again
    timer.dispatched({"loss": np.zeros(4)}, 4)
    assert reports == [0.25] and timer.done
