"""The run directory, <workdir>/<dataset>/: held by one training, checked before anything is
read, and resumed from.

A run directory holds one run: its checkpoints, metrics and figures. `hold` makes one training
its only writer (an operating-system lock, which the kernel releases however the process
ends), checks that it can be written and has room for a checkpoint, and keeps the libraries'
thread noise in a log file there; `check_settings` refuses a run of other settings, and
`check_data` one trained on other data (TFDS, or another in-memory Dataset); all of this before
the data is read. `resume` restores its newest readable checkpoint.
"""

import asyncio
import contextlib
import gc
import logging
import math
import os
import shutil
import sys
import threading
from pathlib import Path

import jax
import ml_collections
from jax.sharding import Mesh

from alexnet_jax.checkpoint import CHECKPOINTS, Checkpoints, CorruptCheckpoint, Restored
from alexnet_jax.config import RESUMABLE_CHANGES
from alexnet_jax.data import describe_data
from alexnet_jax.distributed import any_process, is_primary
from alexnet_jax.errors import UserError
from alexnet_jax.locks import RUN_LOCK, Lock, missing_folders
from alexnet_jax.state import TrainState

LOCK = RUN_LOCK
# Orbax's own messages: its writer threads log a traceback each when a write fails, which the
# run's one-line error already says; they go here instead of the terminal, as does what other
# threads print (TensorStore prints a traceback for each write cut short by the failure).
LIBRARY_LOG = "library.log"


@contextlib.contextmanager
def hold(run_dir: Path, checkpoint_bytes: int, image_size: int):
    """Hold `run_dir` for one training, or refuse now, before any data is read.

    Process 0 holds the lock for all processes of a run (they share the directory). A second
    training in a held directory is refused with a line naming the process and host that hold
    it. Then `prepare`, and Orbax's messages go to LIBRARY_LOG for as long as it is held.
    """
    refuse_a_run_as_workdir(run_dir)
    made = missing_folders(run_dir)
    create(run_dir)
    lock = Lock(run_dir / LOCK, "training", f"the run directory {run_dir}")
    holder = lock.acquire() if is_primary() else None
    try:
        if any_process(holder is not None):  # every process learns it, none waits for the others
            holder = holder or f"{Lock.holder(run_dir / LOCK)}, found by process 0"
            raise in_use(run_dir, holder)
        prepare(run_dir, checkpoint_bytes, image_size)
        with library_log(run_dir / log_name()):
            yield
    except BaseException:
        if lock.held:  # a new run that failed before it wrote anything leaves no empty folders
            remove_unused(made, lock)
        raise
    finally:
        lock.release()


def in_use(run_dir: Path, holder: str) -> UserError:
    return UserError(
        f"{run_dir} is in use by another training ({holder}): wait for it to end or stop it, "
        "or pass another --workdir"
    )


def check_ahead(run_dir: Path, config: ml_collections.ConfigDict) -> None:
    """Refuse now what `hold` and `check_settings` would refuse in `run_dir` (a run's folder
    passed as the workdir, another training in it, a run of other settings), without holding
    it or writing anything: for a command that trains several runs one after another
    (`seeds`), so that the last one's refusal comes before the first one trains."""
    refuse_a_run_as_workdir(run_dir)
    holder = Lock.held_by_another(run_dir / LOCK)
    if holder is not None:
        raise in_use(run_dir, holder)
    _check_saved(run_dir, lambda checkpoints: check_settings(checkpoints, config))


def check_data_ahead(run_dir: Path, data: dict) -> None:
    """Refuse now what `check_data` would refuse in `run_dir`, as `check_ahead` does (after it:
    the Dataset is checked in between)."""
    _check_saved(run_dir, lambda checkpoints: check_data(checkpoints, data))


def _check_saved(run_dir: Path, check) -> None:
    """`check(checkpoints)` on the run's checkpoints, opened read-only, if it has any."""
    if (run_dir / CHECKPOINTS).exists():
        checkpoints = Checkpoints(run_dir / CHECKPOINTS, read_only=True)
        try:
            check(checkpoints)
        finally:
            checkpoints.close()


def remove_unused(made: list[Path], lock: Lock) -> None:
    """Remove the folders this training made when they hold nothing but the lock and an empty
    checkpoints folder; anything else in them (a log, a checkpoint) keeps them all."""
    if not made:
        return
    run_dir = made[0]
    contents = {path.name for path in run_dir.iterdir()}
    if not contents <= {LOCK, CHECKPOINTS} or any((run_dir / CHECKPOINTS).glob("*")):
        return
    with contextlib.suppress(OSError):
        if CHECKPOINTS in contents:
            (run_dir / CHECKPOINTS).rmdir()
        lock.release()  # removes the lock file
        for folder in made:
            folder.rmdir()  # fails, and stops, at the first that another process wrote into


def refuse_a_run_as_workdir(run_dir: Path) -> None:
    """A new run inside another run's folder is most likely a --workdir that names the run
    itself (runs/mnist for runs): refused, rather than training afresh in runs/mnist/mnist."""
    workdir = run_dir.parent
    if run_dir.exists():
        return
    if (workdir / CHECKPOINTS).is_dir():
        raise UserError(
            f"--workdir {workdir} is a run's folder (it holds {CHECKPOINTS}/), and runs go to "
            f"WORKDIR/<dataset>/: pass --workdir {workdir.parent} to resume that run, or "
            "another folder for a new one"
        )
    # Deeper inside a run (its checkpoints/, say): a run is told by its config.json beside
    # checkpoints/, so that an unrelated checkpoints/ folder higher up is no run.
    for folder in workdir.absolute().parents:
        if (folder / CHECKPOINTS).is_dir() and (folder / "config.json").is_file():
            raise UserError(
                f"--workdir {workdir} lies inside the run {folder}: pass a folder outside it "
                "for a new run"
            )


def create(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write to the run directory {run_dir}: {e.strerror}") from e


def prepare(run_dir: Path, checkpoint_bytes: int, image_size: int) -> None:
    """Fail now, not after an epoch, if the run directory cannot be written or is full (the
    message names the image size, which sets the first dense layer's and so the state's size)."""
    try:
        create(run_dir)
        probe = run_dir / f".write-test-{jax.process_index()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to the run directory {run_dir}: {e.strerror}") from e
    disk = shutil.disk_usage(run_dir)
    needed = int(checkpoint_bytes * 1.2) + (16 << 20)  # a checkpoint, its metadata and plots
    if disk.free < needed:
        fix = "free disk space or use another --workdir"
        if needed > disk.total:
            whole = disk.total >> 20
            fix = f"that is more than the whole disk ({whole} MiB): use a smaller image_size"
        raise UserError(
            f"only {disk.free >> 20} MiB free in {run_dir}, and a checkpoint of the model at "
            f"image_size {image_size} needs about {needed >> 20} MiB: {fix}"
        )


def log_name() -> str:
    process = jax.process_index()
    return LIBRARY_LOG if process == 0 else LIBRARY_LOG.replace(".log", f".{process}.log")


@contextlib.contextmanager
def library_log(path: Path):
    """Send Orbax's log records, and what threads other than the main one print, to `path`
    (created when the first one comes) while active."""
    handler = LibraryLog(path)
    orbax = f"{os.sep}orbax{os.sep}"

    def divert(record: logging.LogRecord) -> bool:
        if orbax in record.pathname:
            handler.handle(record)
            return False  # not on to the terminal's handlers
        return True

    def divert_all(record: logging.LogRecord) -> bool:
        handler.handle(record)
        return False

    logger = logging.getLogger("absl")  # Orbax logs through absl's logger
    logger.addFilter(divert)
    tasks = logging.getLogger("asyncio")  # see read_failed_writes
    tasks.addFilter(divert_all)
    terminal, sys.stderr = sys.stderr, ThreadOutput(sys.stderr, handler)
    try:
        yield
    finally:
        read_failed_writes(handler)
        sys.stderr = terminal
        tasks.removeFilter(divert_all)
        logger.removeFilter(divert)
        handler.close()


def read_failed_writes(handler: logging.Handler) -> None:
    """Orbax writes through asyncio futures in its own threads; when several writes of a save
    fail, only one error reaches the run (its one-line error says it), and asyncio logs each
    other whose error nobody read ("exception was never retrieved", with a traceback) when it
    is collected: during the run, or at exit, on the terminal. Their errors are read here, at
    the end of the run, and go to the library log.

    Each object's type is asked with `type()`, not `isinstance`, which reads `__class__`: TFDS
    keeps lazy proxies of its dataset builders that import their module when an attribute is
    read, and each logged a deprecation warning (166 at the end of every run)."""
    for obj in gc.get_objects():
        if issubclass(type(obj), asyncio.Future) and obj.done() and not obj.cancelled():
            error = obj.exception()  # marks it read
            if error is not None:
                message = f"an asynchronous write's error, read at the end of the run: {error!r}"
                handler.handle(logging.makeLogRecord({"msg": message, "levelname": "ERROR"}))


class ThreadOutput:
    """sys.stderr for the main thread; complete lines that other threads write go to a log
    handler (the main thread is where the progress bar and the run's own lines come from)."""

    def __init__(self, terminal, handler: logging.Handler):
        self.terminal, self.handler = terminal, handler
        self.partial = {}  # thread id -> the line it has begun
        self.lock = threading.Lock()

    def write(self, text: str) -> int:
        if threading.current_thread() is threading.main_thread():
            return self.terminal.write(text)
        with self.lock:
            *lines, rest = (self.partial.pop(threading.get_ident(), "") + text).split("\n")
            if rest:
                self.partial[threading.get_ident()] = rest
            for line in lines:
                self.handler.handle(logging.makeLogRecord({"msg": line, "levelname": "ERROR"}))
        return len(text)

    def __getattr__(self, name):  # flush, isatty, fileno, encoding: the terminal's
        return getattr(self.terminal, name)


class LibraryLog(logging.FileHandler):
    """A log file that a full disk does not break: the records it refuses are written again
    when the run ends (the failed save's files are gone by then), or dropped; never printed."""

    def __init__(self, path: Path):
        super().__init__(path, delay=True)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(message)s"))
        self.refused = []

    def handleError(self, record):
        self.refused.append(record)
        with contextlib.suppress(OSError):  # a half-written buffer: dropped, then reopened
            if self.stream is not None:
                self.stream.close()
        self.stream = None

    def close(self):
        refused, self.refused = self.refused, []
        for record in refused[:1000]:
            self.emit(record)
        with contextlib.suppress(OSError):
            super().close()


def state_bytes(state: TrainState) -> int:
    """The bytes of a state's arrays (concrete or abstract): about what its checkpoint takes."""
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(state))


def check_settings(checkpoints: Checkpoints, config: ml_collections.ConfigDict) -> None:
    """Refuse now, before the data is read, a run directory whose newest readable checkpoint
    has other settings or another process count (`resume` checks each one it reads again)."""
    for id, partial in newest_first(checkpoints):
        try:
            saved = checkpoints.read_config(id, partial)
            topology = checkpoints.read_topology(id, partial)
        except CorruptCheckpoint:
            continue  # `resume` moves it aside
        check_resumable(saved, config, checkpoints.path(id, partial))
        check_topology(topology, checkpoints.path(id, partial))
        return


def check_data(checkpoints: Checkpoints, data: dict) -> None:
    """Refuse now, before the data is read, a run directory whose newest readable checkpoint
    was trained on other data than `data` (a `data.data_record`); `resume` checks each one it
    reads again."""
    for id, partial in newest_first(checkpoints):
        try:
            saved = checkpoints.read_data(id, partial)
        except CorruptCheckpoint:
            continue  # `resume` moves it aside
        check_same_data(saved, data, checkpoints.path(id, partial))
        return


def newest_first(checkpoints: Checkpoints) -> list[tuple[int, bool]]:
    """(id, is partial) of every checkpoint, the partial ones (newer) first."""
    candidates = [(step, True) for step in reversed(checkpoints.partial_steps())]
    return candidates + [(epoch, False) for epoch in reversed(checkpoints.epochs())]


def resume(
    checkpoints: Checkpoints,
    config: ml_collections.ConfigDict,
    data: dict,
    abstract_state: TrainState,
    mesh: Mesh,
    report=print,
) -> Restored | None:
    """The newest checkpoint that reads back intact and may resume with `config` and `data` (a
    partial one when a stop ended the run after the last complete one), or None when there is
    none. Unreadable checkpoints are moved aside; one of other settings, another process count
    or other data is refused with a UserError."""

    def check(id, partial):
        where = checkpoints.path(id, partial)
        check_resumable(checkpoints.read_config(id, partial), config, where)
        check_topology(checkpoints.read_topology(id, partial), where)
        check_same_data(checkpoints.read_data(id, partial), data, where)

    return checkpoints.restore_latest_readable(abstract_state, mesh, check=check, report=report)


def with_timings(history: list[dict], written: list[dict], timing_fields) -> list[dict]:
    """The restored rows, with the timings metrics.jsonl has for them.

    A checkpoint is written before its epoch's time is all known, so its last row lacks the
    checkpointing and the rest; metrics.jsonl, written after, has them. A row takes them only
    from a written row with the same results.
    """
    by_epoch = {row.get("epoch"): row for row in written}

    def results(row):
        return {k: v for k, v in row.items() if k not in timing_fields}

    merged = []
    for row in history:
        other = by_epoch.get(row.get("epoch"))
        if other is not None and results(other) == results(row):
            row = {**row, **{k: v for k, v in other.items() if k in timing_fields}}
        merged.append(row)
    return merged


def check_resumable(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict, where):
    """A run resumes only with the settings it was started with (up to harmless ones)."""
    changed = [
        f"{key}: {saved[key]!r} -> {config[key]!r}"
        for key in config.keys()
        if key not in RESUMABLE_CHANGES and saved.get(key) != config[key]
    ]
    if changed:
        # The most common case: a finished run asked for more epochs. Its learning rate was
        # laid out over num_epochs, so more epochs are another run, not a longer one.
        why = (
            " (the learning-rate schedule spans num_epochs: more epochs are a new run)"
            if saved.get("num_epochs") != config.num_epochs
            else ""
        )
        raise UserError(
            f"{where} holds a run with other settings ({'; '.join(changed)}){why}: "
            "use another --workdir, or the run's own settings to resume it"
        )


def check_same_data(saved: dict, data: dict, where) -> None:
    """A run resumes only with the data it was trained on: TFDS's dataset (of the same version,
    where the run recorded one), or the in-memory Dataset of the same name. Its epochs were
    trained and judged on that data: the best checkpoint is chosen among them."""
    same = (saved.get("source"), saved.get("name")) == (data["source"], data["name"])
    if same and saved.get("version") and data.get("version"):
        same = saved["version"] == data["version"]
    if not same:
        raise UserError(
            f"{where} holds a run trained on {describe_data(saved)}, and this run reads "
            f"{describe_data(data)}: use another --workdir, or the run's own data to resume it"
        )


def check_topology(saved: dict, where) -> None:
    """A run resumes with as many processes as it was written by (their data shards differ)."""
    processes = jax.process_count()
    if saved.get("num_processes") != processes:
        raise UserError(
            f"{where} was written by {saved.get('num_processes')} process(es) and this run has "
            f"{processes}: resume it with --num-processes {saved.get('num_processes')}, or start "
            "afresh in another --workdir"
        )
