"""Shared test set-up: two host CPU devices, tiny configs and the prepared datasets."""

import os

# Two CPU devices for the data-parallel tests, unless a test's subprocess asked for another
# count; must be set before JAX is imported.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    ).strip()

# One persistent compilation cache for the tests and the processes they start: many tests
# compile the same small programs (the tiny config's steps, evaluation, export), and XLA's
# compilation is most of their time on a CPU. A cached executable is the one XLA compiled, so
# results keep their bits. ALEXNET_JAX_TEST_CACHE=off runs without it (and keeps the commands
# from turning on their own, alexnet_jax.compilation_cache).
_CACHE = os.environ.get("ALEXNET_JAX_TEST_CACHE", "")
if _CACHE == "off":
    os.environ["JAX_COMPILATION_CACHE_DIR"] = ""
else:
    os.environ.setdefault(
        "JAX_COMPILATION_CACHE_DIR",
        _CACHE or os.path.join(os.path.dirname(os.path.dirname(__file__)), ".jax-test-cache"),
    )
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# The tests read the datasets from their record files, decoding every PNG, unless one asks for
# the decoded-split cache (alexnet_jax.data_cache; tests/test_data_cache.py).
os.environ["ALEXNET_JAX_DATA_CACHE"] = ""

import contextlib  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from alexnet_jax import train  # noqa: E402
from alexnet_jax.config import default_config, derive  # noqa: E402
from alexnet_jax.data import (  # noqa: E402
    Dataset,
    Split,
    load_dataset,
    synthetic_dataset,
    training_data_from,
)
from alexnet_jax.parallel import DATA_AXIS, make_mesh, replicated  # noqa: E402
from alexnet_jax.pipeline import TrainPartitions  # noqa: E402
from alexnet_jax.state import create_train_state  # noqa: E402
from alexnet_jax.step import TrainCalls  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_TFDS = Path(os.environ.get("ALEXNET_JAX_TEST_DATA_DIR", ROOT.parent / "shared" / "tfds"))


# Every recipe lever that draws randomness, on.
LEVERS = dict(
    affine_rotation=15.0,
    affine_scale=0.1,
    affine_translation=0.1,
    affine_shear=5.0,
    mixup_alpha=0.4,
    mixup_probability=0.5,
    cutmix_alpha=1.0,
    cutmix_probability=0.5,
    trivial_augment=True,
)


def tiny_config(**overrides):
    """The smallest config that still runs the whole layer stack: 67x67 input, few images."""
    config = default_config()
    config.update(
        dataset="mnist",
        image_size=67,
        compute_dtype="float32",
        num_epochs=2,
        batch_size=16,
        eval_batch_size=32,
        learning_rate=0.01,
        warmup_epochs=0.0,
        dropout_rate=0.0,
        crop_padding=2,
        flip=False,
        log_every=2,
        checkpoint_every=1,
    )
    config.update(overrides)
    return config


def new_state(config, steps_per_epoch: int = 4):
    """A fresh training state of `config`, on the default device."""
    return create_train_state(config, derive(config), steps_per_epoch)


@contextlib.contextmanager
def tmpfs(path, megabytes: int):
    """A real filesystem of `megabytes` at `path` (a tmpfs: needs root, as CI and the dev VM);
    skips the test where none can be mounted."""
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root (other tests inject the failure)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=False)


def portable_orders(partitions: TrainPartitions, mesh, steps: int):
    """Orders of the training partitions under which global batch i holds the same images in
    the same positions on one device as on two: the i-th device batch of each half of the
    training images (which is what identity orders give on two devices)."""
    size = partitions.per_device_batch
    devices, batch = mesh.devices.size, size * mesh.devices.size
    half_batch, half = batch // 2, partitions.per_device * devices // 2
    orders = np.tile(np.arange(partitions.per_device, dtype=np.int32), (devices, 1))
    for i in range(steps):
        for position in range(batch):
            device, q = divmod(position, size)
            h, j = divmod(position, half_batch)
            image = h * half + i * half_batch + j
            orders[device, i * size + q] = image - device * partitions.per_device
    return jax.device_put(orders, NamedSharding(mesh, PartitionSpec(DATA_AXIS)))


def single_steps(config, dataset, devices, steps: int, state=None):
    """Train `steps` steps by the trainer's compiled calls, one step per call, on the first global
    batches (the same ones on one device as on two): the host copies of the state before and
    after each step, and each step's metrics."""
    mesh = make_mesh(devices)
    partitions = TrainPartitions(training_data_from(dataset, config), mesh, config.batch_size)
    calls = TrainCalls(config, derive(config), mesh, partitions)
    state = new_state(config) if state is None else state
    state = jax.device_put(state, replicated(mesh))
    orders = portable_orders(partitions, mesh, steps)
    states, metrics = [jax.device_get(state)], []
    for i in range(steps):
        state, step_metrics = calls.dispatch(state, (orders, i, 1))
        states.append(jax.device_get(state))
        metrics.append({key: value[0] for key, value in jax.device_get(step_metrics).items()})
    return states, metrics


@pytest.fixture
def tiny_dataset():
    return synthetic_dataset("mnist", train_size=64, test_size=32)


@pytest.fixture(scope="session")
def shared_tfds() -> Path:
    if not (SHARED_TFDS / "mnist").is_dir():
        pytest.skip(f"no prepared datasets at {SHARED_TFDS}")
    return SHARED_TFDS


@pytest.fixture
def mnist_copy(shared_tfds, tmp_path) -> Path:
    """A TFDS data dir holding a writable copy of the prepared MNIST (`<dir>/mnist/3.0.1`)."""
    shutil.copytree(shared_tfds / "mnist", tmp_path / "tfds" / "mnist")
    for path in (tmp_path / "tfds").rglob("*"):
        path.chmod(0o644 if path.is_file() else 0o755)
    return tmp_path / "tfds"


@pytest.fixture(scope="session")
def mnist(shared_tfds):
    return load_dataset("mnist", str(shared_tfds), download=False)


@pytest.fixture(scope="session")
def cpu_devices():
    devices = jax.devices("cpu")
    assert len(devices) >= 2, "conftest asks XLA for two host devices"
    return devices


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, cpu_devices) -> Path:
    """A run dir of one epoch of `tiny_config` on synthetic MNIST, with a moving average of the
    weights, for the tests that use a trained model (predict, export, report). Read it only;
    copy it to change it. Its evaluation batch is 128, not the tiny config's 32: the eval CLI
    and the report evaluate it on the real MNIST test split (10,000 images), a third faster a
    batch of 128 than of 32 on a 2-core CPU."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    dataset = synthetic_dataset("mnist", train_size=64, test_size=32)
    config = tiny_config(num_epochs=1, ema_decay=0.9, eval_batch_size=128)
    train.train_and_evaluate(config, workdir, dataset, cpu_devices[:2])
    return workdir / "mnist"


# The source images of `odd_shaped_run`: [H, W, C], taller than wide, of neither TFDS dataset.
ODD_SHAPE = (40, 36, 1)


@pytest.fixture(scope="session")
def odd_shaped_run(tmp_path_factory, cpu_devices) -> Path:
    """A run dir of one epoch of `tiny_config` (with eval_flip) on a Dataset named "odd" of
    ODD_SHAPE images, which `predict` and the exports take at that shape, not MNIST's 28x28.
    Read it only."""
    workdir = tmp_path_factory.mktemp("odd_shaped_run")
    rng = np.random.default_rng(0)

    def split(n):
        return Split(rng.integers(0, 256, (n, *ODD_SHAPE), np.uint8), np.arange(n) % 10)

    dataset = Dataset("odd", split(32), split(16), tuple(f"class {i}" for i in range(10)))
    config = tiny_config(num_epochs=1, eval_flip=True)
    train.train_and_evaluate(config, workdir, dataset, cpu_devices[:1])
    return workdir / "mnist"


@pytest.fixture(autouse=True)
def stop_signal_handlers_left_as_found(request):
    """Each test starts with the SIGINT and SIGTERM handlers the one before it found: a handler
    left by an earlier test in the same process took test_interrupt's second Ctrl-C in two CI
    runs of 2026-11-27 (not seen since, nor in a one-process run of 24 of the files). A test
    that leaves one is named in a warning, and its handlers are put back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    found = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in found.items():
        left = signal.signal(signum, handler)
        if left is not handler:
            warnings.warn(
                f"{request.node.nodeid} left {signal.Signals(signum).name} to {left!r} "
                f"(it found {handler!r}); put back",
                stacklevel=1,
            )


def record_split_reads(monkeypatch) -> list[str]:
    """The dataset splits read from TFDS from now on, in order: a split's name where it is read
    whole (`test`), its range in TFDS's notation where a range is given (`train[0:500]`)."""
    from alexnet_jax import data

    read, read_split = [], data._read_split

    def recording(builder, split, data_dir, start=0, stop=None):
        ranged = (start, stop) != (0, None)
        read.append(f"{split}[{start}:{'' if stop is None else stop}]" if ranged else split)
        return read_split(builder, split, data_dir, start, stop)

    monkeypatch.setattr(data, "_read_split", recording)
    return read


def train_until_interrupted(config, workdir, dataset, devices, epochs: int, monkeypatch):
    """Train `config` but break off (as Ctrl-C would) once `epochs` epochs are saved."""
    from alexnet_jax import artifacts, train

    write_history = artifacts.write_history

    def interrupt(run_dir, history, *figures):
        write_history(run_dir, history, *figures)
        if len(history) == epochs:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(artifacts, "write_history", interrupt)
        with pytest.raises(KeyboardInterrupt):
            train.train_and_evaluate(config, workdir, dataset, devices)


# The test files that took longest in a cold run (2-core CPU, 2026-11-26; README: Tests and CI),
# longest first. They run first, then the rest in their usual order: CI's two processes
# (pytest-xdist, `--dist loadfile --no-loadscope-reorder`) take the next file in this order
# whenever one is free, so the longest file (the real MNIST run) no longer starts last and runs
# alone at the end.
LONGEST_FIRST = (
    "test_real_training.py",
    "test_train.py",
    "test_dispatch.py",
    "test_distributed.py",
    "test_kill.py",
    "test_eval.py",
    "test_rundir.py",
    "test_report.py",
    "test_stop.py",
    "test_checkpoint.py",
    "test_keras_io.py",
    "test_bench.py",
    "test_predict.py",
    "test_ema.py",
    "test_export.py",
    "test_model.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))
