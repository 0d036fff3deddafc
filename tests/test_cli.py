"""The command line shared by train, seeds, tta, sweep and bench: --config.FIELD options."""

import errno
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alexnet_jax import bench
from alexnet_jax.cli import command_parser, config_from_command_line, overrides_from
from alexnet_jax.config import load_config
from alexnet_jax.errors import UserError, cli

from conftest import ROOT

QUICK = str(ROOT / "experiments" / "quick.py")


def test_both_forms_of_a_config_option_are_read():
    parser = command_parser("test")
    args, rest = parser.parse_known_args(
        [
            "--config",
            QUICK,
            "--config.batch_size",
            "64",
            "--config.flip=true",
            "--config.seed",
            "-3",
        ]
    )
    assert overrides_from(rest) == ["batch_size=64", "flip=true", "seed=-3"]
    config = config_from_command_line(args.config, rest, "/data")
    assert (config.batch_size, config.flip, config.seed, config.data_dir) == (64, True, -3, "/data")


@pytest.mark.parametrize(
    "rest, message",
    [
        (["--config.batch_size"], "--config.batch_size needs a value"),
        (["--bogus"], "unknown option --bogus"),
        (["64"], "unknown option 64"),
    ],
)
def test_bad_options_say_what_is_wrong(rest, message):
    with pytest.raises(UserError, match=message):
        overrides_from(rest)


def test_bench_refuses_overrides_of_what_it_sets_itself(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--config.batch_size", "64"])
    assert exit_info.value.code == 2
    assert "use --batch-size instead" in capsys.readouterr().err


def test_a_typo_in_an_experiment_file_names_its_line(tmp_path):
    experiment = tmp_path / "typo.py"
    experiment.write_text(
        "from alexnet_jax.config import default_config\n\n\n"
        "def get_config():\n"
        "    config = default_config()\n"
        "    config.num_epoch = 3\n"
        "    return config\n"
    )
    with pytest.raises(UserError, match=r"line 6: 'num_epoch' is not a config field: did you mean"):
        load_config(experiment)


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("config.json", '{"dataset": "mnist"}', r"config.json is not a Python file \(.py\): pass"),
        ("folder", None, r"folder is a folder: pass an experiment file"),
        ("none.py", "def get_config():\n    return None\n", r"returned a NoneType, not an"),
        ("plain.py", "def get_config():\n    return {'dataset': 'mnist'}\n", r"returned a dict"),
        (
            "partial.py",
            "import ml_collections\n\n\ndef get_config():\n"
            "    return ml_collections.ConfigDict({'dataset': 'mnist', 'batch_size': 8})\n",
            r"get_config\(\) lacks .*affine_rotation.*: start it from alexnet_jax.config.default",
        ),
    ],
)
def test_what_is_not_an_experiment_file_is_refused_in_one_line(tmp_path, name, text, message):
    path = tmp_path / name
    if text is None:
        path.mkdir()
    else:
        path.write_text(text)
    with pytest.raises(UserError, match=message):
        config_from_command_line(str(path), ["--config.num_epochs=1"], None)


def test_an_error_inside_get_config_is_one_line(tmp_path):
    experiment = tmp_path / "boom.py"
    experiment.write_text("def get_config():\n    return 1 / 0\n")
    with pytest.raises(UserError, match=r"line 2: ZeroDivisionError: division by zero$"):
        load_config(experiment)


def test_running_out_of_device_memory_is_one_line_saying_what_to_lower(tmp_path):
    # A real allocation failure of XLA (2 TiB on the host CPU), raised in an entry point.
    program = (
        "import jax, jax.numpy as jnp\n"
        "from alexnet_jax.errors import cli\n"
        "cli(lambda: jax.jit(lambda: jnp.ones((2**41,), jnp.uint8))().block_until_ready())()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1, done.stderr[-2000:]
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: the devices ran out of memory (RESOURCE_EXHAUSTED: ")
    assert "--config.batch_size" in line and "--config.image_size" in line


def test_a_full_disk_is_one_line_naming_the_file(capsys):
    def write():
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/export/weights.npz")

    with pytest.raises(SystemExit) as exit_info:
        cli(write)()
    assert exit_info.value.code == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        "error: no space left on the disk writing /runs/x/export/weights.npz: free disk space "
        "and run the command again"
    )
    with pytest.raises(FileNotFoundError):  # other errors of the system keep their traceback
        cli(lambda: open("/nonexistent/file"))()


def test_a_home_folder_after_an_option_s_equals_sign_is_expanded(monkeypatch):
    # The shell leaves `--workdir=~/runs` as it is: train made a folder named ~.
    home = os.path.expanduser("~")
    typed = ["train", "--workdir=~/runs", "--config.data_dir=~", "--out", "~x", "a=~/b"]
    monkeypatch.setattr(sys, "argv", list(typed))
    assert cli(lambda: list(sys.argv))() == [
        "train", f"--workdir={home}/runs", f"--config.data_dir={home}", "--out", "~x", "a=~/b"
    ]  # fmt: skip
    monkeypatch.setattr(sys, "argv", list(typed))
    cli(lambda argv=None: None)(["--workdir=~/runs"])  # a command called with its own argv
    assert sys.argv == typed


def test_ctrl_c_during_a_long_evaluation_ends_the_command_at_once():
    # An evaluation is one call to the devices: Ctrl-C waited for all of it, then the exit did.
    program = (
        "import signal\n"  # Python's Ctrl-C, which a process started in the background lacks
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "import jax, jax.numpy as jnp\n"
        "from alexnet_jax.errors import cli\n"
        "from alexnet_jax.evaluation import wait_for\n"
        "def evaluate():\n"
        "    endless = lambda x: jax.lax.fori_loop(0, 10**9, lambda i, y: jnp.tanh(y @ y), x)\n"
        "    logits = jax.jit(endless)(jnp.ones((256, 256)))\n"
        "    print('evaluating', flush=True)\n"
        "    wait_for(logits)\n"
        "cli(evaluate)()\n"
    )

    def evaluating(process):
        assert process.stdout.readline() == "evaluating\n"
        time.sleep(0.5)

    returncode, err = interrupted([sys.executable, "-c", program], evaluating)
    assert returncode == 130 and err == "error: stopped by SIGINT\n", err[-2000:]


def interrupted(command: list[str], wait_until) -> tuple[int, str]:
    """Start `command`, send it SIGINT once `wait_until(process)` returns: its status and
    standard error."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(process)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, err


def test_ctrl_c_while_a_command_imports_jax_is_one_line(tmp_path):
    # Python raised KeyboardInterrupt inside the import that ran: a traceback, or none and no
    # stop at all when it fell in one of JAX's garbage-collection callbacks.
    command = [sys.executable, "-m", "alexnet_jax.eval", "--ckpt", str(tmp_path / "none")]
    # Python's Ctrl-C, which a process started in the background lacks, then the command in
    # the same process (a preexec_fn would fork this multithreaded process)
    restored = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    restored += f"os.execv(sys.executable, {command!r})"

    def jax_loading(process):
        maps = Path(f"/proc/{process.pid}/maps")
        while process.poll() is None and "jaxlib/_jax" not in maps.read_text():
            time.sleep(0.001)  # until JAX's library is loaded: its import, and others, go on

    returncode, err = interrupted([sys.executable, "-c", restored], jax_loading)
    assert returncode == 130 and err == "error: stopped by SIGINT\n", err[-2000:]


def test_other_errors_of_xla_keep_their_traceback():
    class JaxRuntimeError(Exception):
        pass

    with pytest.raises(JaxRuntimeError, match="INTERNAL"):
        cli(lambda: (_ for _ in ()).throw(JaxRuntimeError("INTERNAL: something else")))()


@pytest.mark.parametrize("seed", [2**32, -1, 2**63])
def test_a_seed_outside_32_bits_is_refused(seed):
    # jax.random.PRNGKey keeps 32 bits: 2**32 would repeat seed 0's run, -1 seed 2**32 - 1's.
    from alexnet_jax.config import validate

    with pytest.raises(UserError, match=r"seed=.* must be from 0 to 2\*\*32 - 1 \(4294967295\)"):
        validate(config_from_command_line(QUICK, [f"--config.seed={seed}"], None))


def test_the_seeds_at_the_ends_of_32_bits_are_taken():
    from alexnet_jax.config import validate

    for seed in (0, 2**32 - 1):
        config = config_from_command_line(QUICK, [f"--config.seed={seed}"], None)
        validate(config)
        assert config.seed == seed


def test_seeds_checks_every_seed_before_the_first_trains(tmp_path):
    from alexnet_jax import seeds
    from alexnet_jax.config import load_config

    config = load_config(QUICK)
    with pytest.raises(UserError, match=r"seed=4294967296 must be from 0 to 2\*\*32 - 1"):
        seeds.run_seeds(config, [0, 2**32], tmp_path)
    assert list(tmp_path.iterdir()) == []  # seed 0 did not start


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--batch-size", "0", "--batch-size=0 must be at least 1"),
        ("--batch-size", "-3", "--batch-size=-3 must be at least 1"),
        ("--shift", "-1", "--shift=-1 must be at least 0 (pixels)"),
    ],
)
def test_eval_refuses_bad_numbers_before_reading_anything(option, value, message, capsys):
    from alexnet_jax import eval as eval_command

    with pytest.raises(SystemExit) as exit_info:
        eval_command.main(["--ckpt", "no-such-run", option, value])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_command_option_written_as_a_config_field_names_the_option():
    with pytest.raises(
        UserError, match=r"'workdir': it is an option of the command: pass --workdir"
    ):
        config_from_command_line(QUICK, ["--config.workdir=runs"], None)


@pytest.mark.parametrize("command", ["eval", "prepare"])
def test_usage_names_the_command_as_it_is_typed(command):
    done = subprocess.run(
        [sys.executable, "-m", f"alexnet_jax.{command}", "--help"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: python -m alexnet_jax.{command} "), done.stdout[:200]


@pytest.mark.parametrize(
    "target, variables, option, value",
    [
        ("eval", {"CKPT": "runs/wörk dir ü/mnist"}, "--ckpt", "runs/wörk dir ü/mnist"),
        ("eval", {"CKPT": "runs/mnist", "DATA_DIR": "my data"}, "--data-dir", "my data"),
        ("train-mnist", {"WORKDIR": "my runs"}, "--workdir", "my runs"),
        ("quick", {"WORKDIR": "my runs"}, "--workdir", "my runs/quick"),
        ("prepare-data", {"COPY_DATA_FROM": "/mnt/a copy"}, "--from", "/mnt/a copy"),
        ("report", {"WORKDIR": "my runs"}, "--workdir", "my runs"),
    ],
)
def test_make_targets_pass_paths_with_spaces_as_one_word(target, variables, option, value):
    # `make eval CKPT="runs/my run/mnist"` passed `runs/my` and `run/mnist`.
    done = subprocess.run(
        ["make", "-n", "-o", "install", target, *(f"{k}={v}" for k, v in variables.items())],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    commands = [shlex.split(line) for line in done.stdout.splitlines() if "alexnet_jax" in line]
    words = [word for command in commands for word in command]
    assert words[words.index(option) + 1] == value, done.stdout
