"""What a run or a measured figure depends on besides the config: versions, devices, command,
commit. Training writes it to <run>/environment.json; the benchmarks put it in their JSON."""

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import jax

import alexnet_jax
from alexnet_jax import data_cache

ENVIRONMENT = "environment.json"
# The distributions whose versions decide what a run computes and how it reads and saves.
PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "tensorflow-datasets",
    "numpy",
    "ml-collections",
)


def environment() -> dict:
    """This process's environment: date, versions, devices (of all processes), command, commit."""
    devices = jax.devices()
    commit, dirty = git_commit()
    decoded = data_cache.folder()
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "alexnet_jax": alexnet_jax.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "packages": {name: package_version(name) for name in PACKAGES},
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "process_count": jax.process_count(),
        "host_cpus": os.cpu_count(),
        "processor": cpu_model() or platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        # A run's compilation times depend on it (alexnet_jax.compilation_cache).
        "compilation_cache_dir": jax.config.jax_compilation_cache_dir or None,
        "data_cache_dir": None if decoded is None else str(decoded),
        "command": command_line(),
    }


def cpu_model() -> str | None:
    """The host CPU's model name, where /proc/cpuinfo tells it (Linux)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    names = [line.partition(":")[2].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else None


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def command_line() -> str:
    """This process's command, as typed: `python -m alexnet_jax.bench ...` or `python f.py ...`."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    program = ["-m", spec.name] if spec is not None else [os.path.relpath(sys.argv[0])]
    return " ".join(["python", *program, *sys.argv[1:]])


def git_commit() -> tuple[str | None, bool | None]:
    """The commit of the git checkout this package runs from, and whether its tracked files
    differ from it; (None, None) for an installed copy or where git is missing."""
    package = Path(alexnet_jax.__file__).resolve().parent

    def git(*args):
        return subprocess.run(
            ["git", "-C", str(package), *args], capture_output=True, text=True, timeout=10
        )

    try:
        # Only a checkout that tracks this very file: an installed copy inside some other
        # repository (a virtual environment in a checkout) has no commit of its own.
        if git("ls-files", "--error-unmatch", "__init__.py").returncode != 0:
            return None, None
        commit = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None, None
    if commit.returncode != 0:
        return None, None
    return commit.stdout.strip(), bool(status.stdout.strip()) if status.returncode == 0 else None


def record(run_dir: Path, epoch: int) -> dict:
    """Write <run>/environment.json for a run (re)started after `epoch` epochs; the environments
    of its earlier starts are kept under "earlier", oldest first (a run may resume elsewhere)."""
    path = Path(run_dir) / ENVIRONMENT
    earlier = []
    previous = read(run_dir)
    if previous:
        earlier = [*previous.pop("earlier", []), previous]
    document = {**environment(), "started_after_epoch": epoch, "earlier": earlier}
    partial = path.with_name(path.name + ".partial")  # a crash leaves the old file or the new
    partial.write_text(json.dumps(document, indent=2) + "\n")
    partial.replace(path)
    return document


def read(run_dir: Path) -> dict | None:
    """The run's environment.json, or None where it is missing or unreadable."""
    try:
        document = json.loads((Path(run_dir) / ENVIRONMENT).read_text())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None
