"""Getting a dataset onto this machine: find what a data dir holds, and prepare what it lacks.

    python -m alexnet_jax.prepare mnist cifar10 [--data-dir DIR] [--install] [--from DIR]

A dataset that is not prepared is downloaded and prepared by tensorflow-datasets. Reading needs
no TensorFlow, but TFDS 4.9.10's preparation of MNIST and CIFAR-10 does (it extracts the
archives, reads the raw files and encodes the PNGs with TensorFlow), so it is an install extra,
`prepare`, which `--install` (what the make targets pass) installs when it is missing.

A preparation that TFDS did not finish never counts: TFDS writes into a temporary folder and
renames it last, and a version folder that exists but lacks files or records (an interrupted
copy) is reported with what to do, before anything reads it.
"""

import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import tensorflow_datasets as tfds
from array_record.python.array_record_module import ArrayRecordReader
from tensorflow_datasets.core import constants

from alexnet_jax.errors import UserError, cli, first_line

PROJECT = "alexnet-jax"
# What TFDS's preparation of these datasets imports beyond reading (the `prepare` extra).
PREPARE_MODULES = ("tensorflow", "importlib_resources")
# Measured on 2026-11-26: tensorflow-cpu 2.21.0 and the packages it added to this project's venv.
EXTRA_SIZE = "about 310 MB to download, 1.4 GB installed"
INCOMPLETE_PREFIX = constants.INCOMPLETE_PREFIX  # TFDS's temporary folders: incomplete.XXXXXX_<v>
OFFLINE_HINT = (
    "or, offline, pass --data-dir (make: DATA_DIR=) to a prepared copy, or copy one in with "
    "--from (make: COPY_DATA_FROM=)"
)


@dataclass(frozen=True)
class Found:
    """What a data dir holds of one version of a dataset."""

    state: str  # "prepared", "missing" or "incomplete"
    problem: str = ""  # why a version folder that exists does not count as prepared
    leftovers: tuple[str, ...] = ()  # temporary folders of preparations that never finished


def find(name: str, version: str, data_dir: str) -> Found:
    """Whether `data_dir` holds a complete `name:version`: every record file with its records.

    Cheap (file footers only); the records' contents are checked when they are read.
    """
    folder = Path(data_dir) / name / version
    leftovers = tuple(
        str(p) for p in sorted(folder.parent.glob(f"{INCOMPLETE_PREFIX}*_{version}")) if p.is_dir()
    )
    if not folder.exists():
        return Found("missing", leftovers=leftovers)
    lacking = [f for f in ("dataset_info.json", "features.json") if not (folder / f).is_file()]
    if lacking:  # TFDS writes them last
        return Found("incomplete", f"it has no {' or '.join(lacking)}", leftovers)
    builder = open_builder(name, version, data_dir)
    if not builder.is_prepared():
        return Found("incomplete", "TFDS does not take it for a prepared dataset", leftovers)
    for split in builder.info.splits.values():
        for path, expected in zip(split.filepaths, split.shard_lengths, strict=True):
            problem = record_file_problem(Path(path), expected)
            if problem:
                return Found("incomplete", f"{Path(path).name} {problem}", leftovers)
    return Found("prepared", leftovers=leftovers)


def record_file_problem(path: Path, expected: int) -> str | None:
    """Why an ArrayRecord file does not hold `expected` records by its footer, or None."""
    if not path.is_file():
        return "is missing"
    try:
        reader = ArrayRecordReader(str(path))
        try:
            records = reader.num_records() if reader.ok() else 0  # truncated: no footer
        finally:
            reader.close()
    except Exception as e:  # a damaged footer raises RuntimeError
        return f"is unreadable ({first_line(e)})"
    return None if records == expected else f"holds {records} of {expected} records"


def open_builder(name: str, version: str, data_dir: str):
    """TFDS's builder of `name:version` in `data_dir`, reading ArrayRecord files."""
    versioned = f"{name}:{version}"
    try:
        return tfds.builder(versioned, data_dir=data_dir, file_format="array_record")
    except Exception as e:  # TFDS raises many kinds here (bad JSON, unreadable dir, ...)
        raise UserError(
            f"cannot open {versioned} in {data_dir}: {first_line(e)}; delete "
            f"{Path(data_dir) / name / version} and prepare it again, or pass --data-dir to a "
            "good copy"
        ) from e


def next_step(
    found: Found,
    versioned: str,
    data_dir: str,
    *,
    download: bool = True,
    has_tensorflow: bool = False,
    install: bool = False,
    copy_from: str | None = None,
    processes: int = 1,
) -> str:
    """What to do about a dataset found in `found.state`: "use", "copy", "prepare" (download
    and prepare), or "install" (the `prepare` extra, then "prepare"); raises the UserError that
    says what to do when none of these may happen here."""
    folder = f"{data_dir}/{versioned.replace(':', '/')}"
    if found.state == "prepared":
        return "use"
    if found.state == "incomplete":
        raise UserError(
            f"{versioned} in {data_dir} is incomplete ({found.problem}), as an interrupted copy "
            f"leaves it: delete {folder} and run the command again to prepare it anew"
        )
    if copy_from:
        return "copy"
    where = f"{versioned} is not prepared in {data_dir}"
    # The command that prepares it where this run looks for it.
    prepare = f"python -m alexnet_jax.prepare {versioned.split(':')[0]} --data-dir {data_dir}"
    if not download:
        # Every command reads this, eval and report too, which take no --config options.
        raise UserError(
            f"{where}: pass --data-dir to a prepared copy, or download and prepare it there "
            f"with `{prepare} --install`"
        )
    if processes > 1:
        raise UserError(
            f"{where}: prepare it first with `{prepare}` (the {processes} processes of "
            "this run would each prepare it), or pass --data-dir to a prepared copy"
        )
    if has_tensorflow:
        return "prepare"
    if install:
        return "install"
    raise UserError(
        f"{where}, and preparing it needs TensorFlow ({EXTRA_SIZE}), which is not installed: "
        f"run `{prepare} --install` (the make targets do), or pass --data-dir to a prepared copy"
    )


def ensure_prepared(
    name: str,
    version: str,
    data_dir: str,
    *,
    download: bool = True,
    install: bool = False,
    copy_from: str | None = None,
    processes: int = 1,
):
    """TFDS's builder of `name:version` in `data_dir`, once the dataset is prepared there.

    A missing dataset is copied from `copy_from` (a prepared data dir) when given, else
    downloaded and prepared when `download` allows, after installing the `prepare` extra when
    `install` allows; anything else ends with one line saying what to do.
    """
    versioned = f"{name}:{version}"
    if Path(data_dir).exists() and not Path(data_dir).is_dir():
        raise UserError(
            f"the data dir {data_dir} is a file: pass --data-dir the folder that holds the "
            "datasets (TFDS's data dir, with mnist/ and cifar10/ in it)"
        )
    found = find(name, version, data_dir)
    step = next_step(
        found,
        versioned,
        data_dir,
        download=download,
        has_tensorflow=tensorflow_installed(),
        install=install,
        copy_from=copy_from,
        processes=processes,
    )
    if step == "use":
        return open_builder(name, version, data_dir)
    if found.leftovers:
        print(
            f"note: {', '.join(found.leftovers)} is left from a preparation that never "
            "finished; it is not used, and can be deleted while no other preparation runs",
            flush=True,
        )
    if step == "copy":
        copy_prepared(name, version, copy_from, data_dir)
    else:
        if step == "install":
            print(
                f"{versioned} is not prepared in {data_dir}; downloading and preparing it needs "
                f"TensorFlow, which this environment lacks: installing the `prepare` extra "
                f"({EXTRA_SIZE}) with pip",
                flush=True,
            )
            install_extra("prepare")
        download_and_prepare(name, version, data_dir)
    found = find(name, version, data_dir)
    if found.state != "prepared":  # only a bug in TFDS or here would get this far
        raise UserError(f"{versioned} in {data_dir} is still {found.state} ({found.problem})")
    return open_builder(name, version, data_dir)


def tensorflow_installed() -> bool:
    return all(importlib.util.find_spec(module) is not None for module in PREPARE_MODULES)


def extra_requirements(extra: str) -> list[str]:
    """The requirements of one of this project's install extras, from its installed metadata."""
    try:
        requires = importlib.metadata.requires(PROJECT) or []
    except importlib.metadata.PackageNotFoundError as e:
        raise UserError(
            f"{PROJECT} is not installed (run from a source folder?): install it with "
            f"`pip install -e '.[{extra}]'`"
        ) from e
    marker = f'extra == "{extra}"'
    return [r.split(";")[0].strip() for r in requires if marker in r.partition(";")[2]]


def install_extra(extra: str) -> None:
    """pip-install an extra's requirements into this interpreter's environment."""
    requirements = extra_requirements(extra)
    command = [sys.executable, "-m", "pip", "install", *requirements]
    status = subprocess.run(command).returncode
    if status != 0:
        raise UserError(
            f"installing the `{extra}` extra failed (`{' '.join(command[2:])}` exited with "
            f"{status}, see above): check the network and run the same command again, "
            + OFFLINE_HINT
        )
    importlib.invalidate_caches()  # so that this process finds what pip just installed


def download_and_prepare(name: str, version: str, data_dir: str) -> None:
    """TFDS's own download (checksums checked) and preparation as ArrayRecord files."""
    versioned = f"{name}:{version}"
    builder = open_builder(name, version, data_dir)
    urls = sorted(builder.url_infos)
    if urls and (problem := unreachable(urls[0])):
        raise UserError(
            f"cannot download {versioned}: {problem}; check the network and run the same "
            "command again, " + OFFLINE_HINT
        )
    print(
        f"downloading {versioned} ({download_size(builder)}) and preparing it in "
        f"{builder.data_path}",
        flush=True,
    )
    start = time.perf_counter()
    try:
        builder.download_and_prepare()
    except KeyboardInterrupt:
        error = UserError(
            f"interrupted while preparing {versioned}: it was not kept (TFDS prepares it in a "
            "temporary folder); run the same command again"
        )
        error.exit_code = 130
        raise error from None
    except Exception as e:  # requests, TFDS and the extractors raise many kinds
        raise UserError(
            f"downloading or preparing {versioned} failed ({first_line(e)}); it was not kept: "
            "check the network and run the same command again, " + OFFLINE_HINT
        ) from e
    print(f"prepared {versioned} in {time.perf_counter() - start:.0f} s", flush=True)


def unreachable(url: str, timeout: float = 15) -> str | None:
    """Why `url`'s server cannot be reached (through the proxy the environment names), or None.

    Any answer counts as reachable. TFDS itself retries a failing download for minutes.
    """
    import requests

    try:
        requests.head(url, timeout=timeout, allow_redirects=False)
    except requests.RequestException as e:
        return f"{urlsplit(url).netloc} is not reachable ({type(e).__name__})"
    return None


def download_size(builder) -> str:
    """What TFDS will download for `builder`, from its registered checksums."""
    try:
        size = sum(info.size for info in builder.url_infos.values())
    except Exception:  # no registered checksums for this builder
        return "size unknown"
    return f"{size / 1e6:.1f} MB"


def copy_prepared(name: str, version: str, source_dir: str, data_dir: str) -> None:
    """Copy a complete `name:version` from another data dir, never leaving a partial copy.

    The copy goes to a temporary folder next to the target (named as TFDS names its own), and
    is renamed to the version folder only once every file is there whole.
    """
    versioned = f"{name}:{version}"
    source = Path(source_dir).expanduser() / name / version
    found = find(name, version, str(Path(source_dir).expanduser()))
    if found.state != "prepared":
        detail = f": {found.problem}" if found.problem else ""
        raise UserError(
            f"cannot copy {versioned} from {source_dir}: it is {found.state} there{detail}"
        )
    target = Path(data_dir) / name / version
    temporary = target.parent / f"{INCOMPLETE_PREFIX}{uuid.uuid4().hex[:6].upper()}_{version}"
    start = time.perf_counter()
    try:
        temporary.mkdir(parents=True)
        for original in source.iterdir():  # contents only: a read-only source stays read-only
            copied = temporary / original.name
            shutil.copyfile(original, copied)
            if copied.stat().st_size != original.stat().st_size:
                raise UserError(f"copying {original} to {copied} gave a different size")
        temporary.rename(target)
    except OSError as e:
        if target.is_dir() and find(name, version, data_dir).state == "prepared":
            # Another process (a second `make train-*` with COPY_DATA_FROM) copied it first.
            print(f"{versioned} was put in {data_dir} meanwhile by another process: using it")
            return
        raise UserError(
            f"cannot copy {versioned} into {data_dir} ({e.strerror or e}): free disk space, or "
            "pass a --data-dir that can be written"
        ) from e
    finally:
        if temporary.exists():
            shutil.rmtree(temporary)
    size = sum(f.stat().st_size for f in target.iterdir())
    print(
        f"copied {versioned} from {source} to {target} ({size / 1e6:.0f} MB, "
        f"{time.perf_counter() - start:.1f} s)",
        flush=True,
    )


@cli
def main(argv=None):
    import argparse

    from alexnet_jax.data import default_data_dir, spec

    parser = argparse.ArgumentParser(
        description="Prepare datasets that the data dir lacks; quiet when they are prepared."
    )
    parser.add_argument("datasets", nargs="+", metavar="DATASET", help="mnist and/or cifar10")
    parser.add_argument("--data-dir", help="TFDS data dir (default: $TFDS_DATA_DIR or TFDS's own)")
    parser.add_argument(
        "--install",
        action="store_true",
        help="install TensorFlow (the `prepare` extra) with pip when preparing needs it",
    )
    parser.add_argument(
        "--from",
        dest="copy_from",
        metavar="DIR",
        help="copy a missing dataset from DIR, a prepared data dir, instead of downloading it",
    )
    args = parser.parse_args(argv)
    data_dir = str(Path(args.data_dir or default_data_dir()).expanduser())
    for name in args.datasets:
        ensure_prepared(
            name,
            spec(name).version,
            data_dir,
            install=args.install,
            copy_from=args.copy_from,
        )


if __name__ == "__main__":
    main()
