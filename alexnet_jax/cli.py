"""The command line of the commands that take an experiment: train, seeds, tta, sweep, bench.

Each takes `--config FILE` (an experiment, see `experiments/`) and any number of
`--config.FIELD=VALUE` or `--config.FIELD VALUE` options, which override the file's fields
(parsed by the field's type, see `config.apply_overrides`). `train` also takes the options of
several processes.
"""

import argparse

import ml_collections

from alexnet_jax.config import apply_overrides, load_config
from alexnet_jax.errors import UserError

OVERRIDE_PREFIX = "--config."


def command_parser(
    description: str, config_required: bool = True, data_dir: bool = True
) -> argparse.ArgumentParser:
    """The parser of a command that runs an experiment: --config and --data-dir; any
    --config.FIELD options are left over for `overrides_from`."""
    parser = argparse.ArgumentParser(
        description=description.rstrip(":"),  # a docstring's first line may lead into an example
        epilog="Any config field can be set with --config.FIELD=VALUE (or --config.FIELD VALUE).",
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        required=config_required,
        help="experiment file, e.g. experiments/mnist.py",
    )
    if data_dir:
        parser.add_argument(
            "--data-dir", help="TFDS data dir (default: $TFDS_DATA_DIR or TFDS's own)"
        )
    return parser


def overrides_from(rest: list[str]) -> list[str]:
    """`FIELD=VALUE` strings of what argparse left over: `--config.FIELD=VALUE` or
    `--config.FIELD VALUE`; anything else is an error."""
    overrides, args = [], iter(rest)
    for arg in args:
        if not arg.startswith(OVERRIDE_PREFIX):
            raise UserError(f"unknown option {arg}: see --help")
        field = arg.removeprefix(OVERRIDE_PREFIX)
        if "=" not in field:
            value = next(args, None)
            if value is None:
                raise UserError(f"{arg} needs a value: write {arg}=VALUE or {arg} VALUE")
            field = f"{field}={value}"
        overrides.append(field)
    return overrides


def config_from_command_line(
    path: str, rest: list[str], data_dir: str | None
) -> ml_collections.ConfigDict:
    """The experiment file's config with the command's `--config.FIELD` options applied."""
    overrides = overrides_from(rest)
    config = load_config(path)
    apply_overrides(config, overrides)
    if data_dir:
        config.data_dir = data_dir
    return config


def add_process_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a run over several processes (README: Scaling out)."""
    group = parser.add_argument_group("several processes (see README: Scaling out)")
    group.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0")
    group.add_argument("--num-processes", type=int, metavar="N")
    group.add_argument("--process-id", type=int, metavar="I", help="0 .. N-1")
    group.add_argument(
        "--distributed",
        action="store_true",
        help="take the above from the cluster (SLURM, Open MPI, Kubernetes, Cloud TPU)",
    )
    group.add_argument(
        "--coordinator-timeout",
        type=int,
        default=300,
        metavar="SECONDS",
        help="how long to wait for all processes to join (default 300)",
    )
