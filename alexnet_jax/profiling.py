"""`jax.profiler` traces of training steps, written by process 0 only (`bench --profile N`).

A trace folder holds `plugins/profile/<time>/<host>.xplane.pb`, which TensorBoard's profile
plugin reads (`pip install tensorboard-plugin-profile`, then `tensorboard --logdir DIR`, tab
PROFILE), and `perfetto_trace.json.gz`, which https://ui.perfetto.dev opens as it is.
"""

import contextlib
from pathlib import Path

import jax

TRACE_FILES = "plugins/profile/*/*"


@contextlib.contextmanager
def trace(directory, process_index: int | None = None):
    """Trace what runs inside into `directory`; yields the folder, or None on a process other
    than 0 (every process would otherwise write a trace of the same steps)."""
    process_index = jax.process_index() if process_index is None else process_index
    if process_index != 0:
        yield None
        return
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with jax.profiler.trace(str(directory), create_perfetto_trace=True):
        yield directory


def step_annotated(dispatch, first_step: int):
    """`dispatch(state, work)` with each call marked as a step in the trace (TensorBoard's
    step view reads these), numbered by its first global step."""

    def annotated(state, work):
        _, first, _ = work
        with jax.profiler.StepTraceAnnotation("train", step_num=first_step + first):
            return dispatch(state, work)

    return annotated


def trace_files(directory) -> list[Path]:
    return sorted(p for p in Path(directory).glob(TRACE_FILES) if p.is_file())
