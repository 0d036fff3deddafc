"""JAX's persistent compilation cache: the commands keep what XLA compiled for their next run.

Compiling the training and evaluation programs is most of a short run's start: 24 of the 37.5 s
that MNIST took to 99.5% on an H100 (README: Speed). JAX can keep each compiled executable on
disk, keyed by the program, the versions and the devices, and load it when a later run compiles
the same program, so only a machine's first run of a config pays for its compilation. The
commands that train or evaluate (`train`, `tta`, `seeds`, `sweep`, `eval`, `predict`, `export`)
turn it on when they start (`enable`), in a folder per host CPU model under the user's cache
folder: executables are compiled for the host's instruction set, and a home folder may be shared
by machines of several models. `JAX_COMPILATION_CACHE_DIR`, JAX's own variable, names another
folder, or turns the cache off when empty; a folder it names that is a file or cannot be made or
written gets one warning line and no cache for the run (JAX's own warning named another cause).
The folder may be deleted at any time; a cached executable is the one XLA compiled, so a run
computes the same bits with or without it.
"""

import hashlib
import os
import sys
import tempfile
from pathlib import Path

import jax
from jax import monitoring

from alexnet_jax.environment import cpu_model

VARIABLE = "JAX_COMPILATION_CACHE_DIR"
HITS = "/jax/compilation_cache/cache_hits"
MISSES = "/jax/compilation_cache/cache_misses"


def default_folder() -> Path:
    """$XDG_CACHE_HOME (else ~/.cache)/alexnet_jax/xla/<a hash of the host CPU's model>."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    host = hashlib.sha256((cpu_model() or "unknown").encode()).hexdigest()[:16]
    return base / "alexnet_jax" / "xla" / host


def unusable(folder: Path) -> str | None:
    """Why `folder` cannot hold the cache (a file, or a folder that cannot be made or written),
    or None when it can; it is made if it is not there."""
    if folder.exists() and not folder.is_dir():
        return "names a file"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"names a folder that cannot be made ({e.strerror or e})"
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        return f"names a folder that cannot be written ({e.strerror or e})"
    return None


def enable() -> str | None:
    """Turn the cache on, unless `JAX_COMPILATION_CACHE_DIR` is set (JAX reads it itself); the
    folder in use, or None when there is none (the variable empty, or no usable folder: one the
    variable names that cannot be used is warned of in one line and the cache turned off)."""
    if VARIABLE in os.environ:
        named = os.environ[VARIABLE]
        if not named or "://" in named:  # off, or a remote store (gs://...) left to JAX
            return named or None
        problem = unusable(Path(named))
        if problem is None:
            return named
        print(
            f"warning: {VARIABLE}={named} {problem}: the compilation cache is off for this run",
            file=sys.stderr,
        )
        jax.config.update("jax_compilation_cache_dir", None)
        return None
    folder = default_folder()
    if unusable(folder):
        return None  # a read-only home: the run compiles as without a cache
    jax.config.update("jax_compilation_cache_dir", str(folder))
    return str(folder)


class CacheUse:
    """Counts the programs loaded from the cache and those compiled afresh while it is open:
    `with CacheUse() as use: ...; use.hits, use.misses`. (JAX consults the cache only for
    programs whose compilation takes a second or more; the others count as neither.)"""

    def __init__(self):
        self.hits = self.misses = 0

    def _count(self, event: str, **_) -> None:
        if event == HITS:
            self.hits += 1
        elif event == MISSES:
            self.misses += 1

    def __enter__(self) -> "CacheUse":
        monitoring.register_event_listener(self._count)
        return self

    def __exit__(self, *exc) -> None:
        monitoring.unregister_event_listener(self._count)

    def summary(self) -> dict:
        return {
            "folder": jax.config.jax_compilation_cache_dir or None,
            "programs_loaded": self.hits,
            "programs_compiled": self.misses,
        }
