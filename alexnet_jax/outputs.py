"""Output paths, checked before the work that fills them.

A command that evaluates, trains or exports for minutes and then cannot write its result loses
that work: `--json`, `--out` and `--results` are checked first, by creating (and deleting) a
temporary file where the result will go. Nothing else is created: the folders a path names are
made when the result is written.
"""

import json
import sys
import tempfile
from pathlib import Path

from alexnet_jax.errors import UserError


def check_file(path: str | None, option: str) -> None:
    """Refuse an output file that could not be written: a folder, or a place that refuses.
    Nothing to check when `path` is empty or "-" (stdout), as for `write_json`."""
    if not path or path == "-":
        return
    target = Path(path)
    if target.is_dir():
        raise UserError(f"{option} {path} is a folder: name a file, such as {target / 'out.json'}")
    _check_writable(target.parent, f"{option} {path}")


def check_folder(path: str, option: str) -> None:
    """Refuse an output folder that could not be written: a file, or a place that refuses."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise UserError(f"{option} {path} is a file: name a folder")
    _check_writable(target, f"{option} {path}")


def write_json(document: dict, path: str | None, quiet: bool = False) -> None:
    """`document` as JSON: to stdout alone when `path` is "-", else to the file `path` (its
    folders made), whole or not at all (a temporary file renamed into place), saying so unless
    `quiet`. Nothing when `path` is empty."""
    if not path:
        return
    text = json.dumps(document, indent=2) + "\n"
    if path == "-":
        sys.stdout.write(text)
        return
    target = Path(path)
    temporary = target.with_name(f".{target.name}.partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(text)
        temporary.replace(target)
    except OSError as e:  # a disk that filled since the check: the old file, if any, is whole
        temporary.unlink(missing_ok=True)
        fix = "free disk space or name another place"
        raise UserError(f"cannot write {path} ({e.strerror or e}): {fix}") from e
    if not quiet:
        print(f"wrote {path}")


def _check_writable(folder: Path, what: str) -> None:
    existing = folder
    while not existing.exists():  # the folders to be made; the root always exists
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what} lies under {existing}, which is a file: name another place")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise UserError(
            f"{what} cannot be written ({existing}: {e.strerror or e}): name another place"
        ) from e
