"""Graceful stops: Ctrl-C or SIGTERM ends training at the next step, not in the middle of a save."""

import signal
import threading

import jax

from alexnet_jax.distributed import any_process
from alexnet_jax.errors import UserError


class Interrupted(UserError):
    """Training stopped on request; the exit status is the shell's 128 + signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


def stopped(stop: "StopRequests", epoch: int, then: str = "", where: str = "") -> Interrupted:
    """The error that ends a run stopped during `epoch` (0-based); `then` says what was kept,
    `where` replaces "during epoch N"."""
    where = where or f"during epoch {epoch + 1}"
    return Interrupted(f"stopped by {stop.name} {where}{then}", stop.exit_signal)


class StopRequests:
    """While active, SIGINT and SIGTERM only set `signum`; the training loop polls it.

    A second signal of the same kind is not caught again: it stops the process at once.
    Outside the main thread (where Python cannot install handlers) this does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None  # the signal this process received
        # With several processes: whether they all decided to stop. Set by the collective in
        # `should_stop` alone, so that every process holds the same value at the same step.
        self.agreed = False
        self._previous = {}

    def _handle(self, signum, frame):
        self.signum = signum
        # Restore the default so that a second Ctrl-C interrupts a stuck process.
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        return False

    def should_stop(self, synchronise: bool) -> bool:
        """Whether to stop now.

        With several processes, all must stop after the same step or the others would wait
        forever in the next collective; so they decide together, and only where every process
        calls this with `synchronise` (the same steps everywhere).
        """
        if jax.process_count() == 1:
            return self.signum is not None
        # Once agreed, no process calls the collective again (one that did would wait forever).
        if synchronise and not self.agreed:
            self.agreed = any_process(self.signum is not None)
        return self.agreed

    @property
    def stopped(self) -> bool:
        """Whether training stops: with several processes, what they last agreed (a signal
        received since then counts at the next `should_stop(synchronise=True)`)."""
        if jax.process_count() == 1:
            return self.signum is not None
        return self.agreed

    @property
    def elsewhere(self) -> bool:
        """Stopping because another process received a signal."""
        return self.agreed and self.signum is None

    @property
    def name(self) -> str:
        if self.signum:
            return signal.Signals(self.signum).name
        return "a stop request to another process" if self.elsewhere else ""

    @property
    def exit_signal(self) -> int:
        return self.signum or signal.SIGTERM
