import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import compilation_cache
from alexnet_jax.compilation_cache import VARIABLE, CacheUse, enable
from alexnet_jax.environment import environment


@pytest.fixture
def cache_dir_restored():
    """The process's compilation cache folder, put back after the test."""
    before = jax.config.jax_compilation_cache_dir
    yield
    jax.config.update("jax_compilation_cache_dir", before)


def test_commands_keep_compiled_programs_in_a_folder_per_cpu_model_under_the_users_cache(
    tmp_path, monkeypatch, cache_dir_restored
):
    monkeypatch.delenv(VARIABLE, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder = enable()
    assert re.fullmatch(re.escape(str(tmp_path / "alexnet_jax" / "xla")) + r"/[0-9a-f]{16}", folder)
    assert jax.config.jax_compilation_cache_dir == folder
    # Another CPU model gets another folder.
    monkeypatch.setattr(compilation_cache, "cpu_model", lambda: "another CPU [avx2]")
    assert compilation_cache.default_folder() != compilation_cache.Path(folder)


def test_jax_s_own_variable_names_another_folder_or_turns_the_cache_off(
    tmp_path, monkeypatch, cache_dir_restored
):
    jax.config.update("jax_compilation_cache_dir", None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "unused"))
    monkeypatch.setenv(VARIABLE, str(tmp_path / "mine"))
    assert enable() == str(tmp_path / "mine")  # JAX reads the variable itself
    monkeypatch.setenv(VARIABLE, "")
    assert enable() is None
    assert jax.config.jax_compilation_cache_dir is None
    assert not (tmp_path / "unused").exists()


def test_a_cache_folder_that_cannot_be_made_leaves_the_cache_off(
    tmp_path, monkeypatch, cache_dir_restored
):
    jax.config.update("jax_compilation_cache_dir", None)
    monkeypatch.delenv(VARIABLE, raising=False)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    assert enable() is None
    assert jax.config.jax_compilation_cache_dir is None


@pytest.mark.parametrize("kind", ["a file", "a folder under a file", "an unwritable folder"])
def test_a_variable_naming_a_file_or_an_unwritable_folder_warns_once_and_turns_the_cache_off(
    kind, tmp_path, monkeypatch, capsys, cache_dir_restored
):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    named = {
        "a file": afile,
        "a folder under a file": afile / "cache",
        "an unwritable folder": tmp_path / "read-only",
    }[kind]
    if kind == "an unwritable folder":
        # chmod does not stop root; a folder that refuses its temporary file does.
        def refused(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(compilation_cache.tempfile, "TemporaryFile", refused)
    monkeypatch.setenv(VARIABLE, str(named))
    jax.config.update("jax_compilation_cache_dir", str(named))  # as JAX read it at its import
    assert enable() is None
    assert jax.config.jax_compilation_cache_dir is None
    assert environment()["compilation_cache_dir"] is None
    err = capsys.readouterr().err
    assert err.startswith(f"warning: {VARIABLE}={named} names a ")
    assert err.endswith(": the compilation cache is off for this run\n")
    assert err.count("\n") == 1


def test_a_command_with_the_variable_naming_a_file_compiles_without_the_cache(tmp_path):
    # In a fresh process, as a command starts: one warning line (not JAX's UserWarning naming
    # another cause), and JAX consults no cache.
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    env = dict(
        os.environ, **{VARIABLE: str(afile), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    )
    script = (
        "import jax, jax.numpy as jnp\n"
        "from alexnet_jax.compilation_cache import CacheUse, enable\n"
        "print(enable())\n"
        "with CacheUse() as use:\n"
        "    y = jax.jit(lambda x: jnp.sin(x) @ x.T + 1.75)(jnp.ones((64, 64)))\n"
        "    jax.block_until_ready(y)\n"
        "print(use.summary())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.splitlines() == [
        "None",
        str({"folder": None, "programs_loaded": 0, "programs_compiled": 0}),
    ]
    assert done.stderr == (
        f"warning: {VARIABLE}={afile} names a file: the compilation cache is off for this run\n"
    )
    assert afile.read_text() == "not a folder"


def test_a_program_loaded_from_the_cache_is_counted_and_computes_the_same_bits():
    # The tests' processes run with the tests' persistent cache (conftest.py), consulted for
    # every program. A constant drawn at random makes a program no earlier run compiled.
    if not jax.config.jax_compilation_cache_dir:
        pytest.skip("the tests run without a compilation cache (ALEXNET_JAX_TEST_CACHE=off)")
    salt = float(np.random.default_rng().integers(1, 2**30))
    x = jnp.linspace(0, 1, 4096, dtype=jnp.float32).reshape(64, 64)

    def program(x):
        return jnp.tanh(x @ x.T * salt) @ x

    with CacheUse() as first:
        compiled = jax.jit(program)(x)
    jax.clear_caches()  # what a new process starts with: nothing compiled in memory
    with CacheUse() as second:
        loaded = jax.jit(program)(x)
    assert (first.hits, first.misses) == (0, 1)
    assert (second.hits, second.misses) == (1, 0)
    np.testing.assert_array_equal(compiled, loaded)
    assert second.summary() == {
        "folder": jax.config.jax_compilation_cache_dir,
        "programs_loaded": 1,
        "programs_compiled": 0,
    }
    # Outside its `with`, a CacheUse counts nothing more.
    jax.clear_caches()
    jax.jit(program)(x)
    assert (second.hits, second.misses) == (1, 0)


def test_a_cut_short_cache_entry_warns_and_the_program_is_compiled_again(tmp_path):
    # JAX writes each entry in place, so a process killed while writing one leaves it cut short
    # (README: What a run leaves behind): later runs warn and compile around it, same results.
    env = dict(
        os.environ, **{VARIABLE: str(tmp_path), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    )
    program = "jax.jit(lambda x: jnp.sin(x) @ x.T + 3.25)(jnp.ones((64, 64)))"
    script = f"import jax, jax.numpy as jnp; print(float({program}[0, 0]).hex())"

    def run():
        return subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )

    first = run()
    entries = list(tmp_path.glob("*-cache"))
    assert entries
    for entry in entries:
        with entry.open("r+b") as f:
            f.truncate(entry.stat().st_size // 2)
    second = run()
    assert second.stdout == first.stdout
    assert "Error reading persistent compilation cache entry" in second.stderr
