"""What a training run will take, said once its first steps after compilation are timed."""

import time
from collections.abc import Callable

import jax

# A run on the CPU at least this long (seconds) gets the advice too, whatever its image size.
LONG_ON_A_CPU = 3600
SEED_IMAGE_SIZE = 224  # the seed model's input: far too slow for a CPU to train in a day


def cost_line(
    platform: str,
    image_size: int,
    seconds_per_step: float,
    steps_per_epoch: int,
    epochs: int,
) -> str:
    """The line to print once the first steps after compilation are timed.

    On an accelerator, the estimate of an epoch and of the run. On the CPU at 224x224, or for
    any CPU run of an hour or more, it also says that no accelerator is in use and names the
    quick run and the GPU install.

    Args:
      platform: `jax.default_backend()`: "cpu", or an accelerator's ("gpu", "tpu", ...).
      seconds_per_step: wall time of one training step, from steps timed after the first
        (compiling) call.
      epochs: the epochs still to run (all of them, or those left when resuming).
    """
    if seconds_per_step <= 0 or steps_per_epoch <= 0 or epochs < 0:
        raise ValueError(
            f"cannot estimate from {seconds_per_step} s a step, {steps_per_epoch} steps an "
            f"epoch and {epochs} epochs"
        )
    epoch = seconds_per_step * steps_per_epoch
    run = epoch * epochs
    estimate = (
        f"{step_time(seconds_per_step)} a step: about {duration(epoch)} an epoch and "
        f"{duration(run)} for {epochs} epoch{'s' if epochs != 1 else ''}"
    )
    if platform != "cpu":
        return f"estimate on the {platform}: {estimate}"
    if image_size < SEED_IMAGE_SIZE and run < LONG_ON_A_CPU:
        return f"estimate on the CPU: {estimate}"
    return (
        f"no accelerator: this run trains {image_size}x{image_size} images on the CPU at "
        f"{estimate}. For a run of minutes: `make quick` (MNIST at 67x67); with an NVIDIA GPU: "
        "`make install EXTRAS=dev,cuda`, then the same command"
    )


def step_time(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def duration(seconds: float) -> str:
    """Seconds as a person reads them: 40 s, 85 min, 7.5 h, 71 h (3.0 days)."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    hours = seconds / 3600
    if round(hours, 1) < 10:
        return f"{hours:.1f} h"
    if hours < 48:
        return f"{hours:.0f} h"
    return f"{hours:.0f} h ({hours / 24:.1f} days)"


class FirstCallsTimer:
    """Times the first call to the devices after the compiling one, once per process.

    `run.drive` tells it when each call is dispatched and hands it the call's metrics. It waits
    for the first call (compilation included) to finish, times the second from its dispatch to
    its result, and hands `report` the seconds per step; then it is done and waits for nothing.
    It carries over between epochs, so that an epoch of a single call still gets its estimate
    from the next epoch's first call (the evaluation in between is not timed).
    """

    def __init__(self, report: Callable[[float], None]):
        self.report = report
        self.calls = 0
        self.started = 0.0
        self.done = False

    def dispatching(self) -> None:
        self.started = time.perf_counter()

    def dispatched(self, metrics: dict, steps: int) -> None:
        if self.done:
            return
        jax.block_until_ready(metrics)
        self.calls += 1
        if self.calls == 2:
            self.done = True
            self.report((time.perf_counter() - self.started) / steps)
