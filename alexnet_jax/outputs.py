"""Output paths, checked before the work that fills them.

A command that evaluates, trains or exports for minutes and then cannot write its result loses
that work: `--json`, `--out` and `--results` are checked first, by creating (and deleting) a
temporary file where the result will go. Nothing else is created: the folders a path names are
made when the result is written.
"""

import errno
import json
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

from alexnet_jax.errors import UserError


def check_file(path: str | None, option: str, fix: str = "name another place") -> None:
    """Refuse an output file that could not be written: a folder, or a place that refuses
    (`fix` says what to do then). Nothing to check when `path` is empty or "-" (stdout), as for
    `write_json`."""
    if not path or path == "-":
        return
    target = Path(path)
    if target.is_dir():
        raise UserError(f"{option} {path} is a folder: name a file, such as {target / 'out.json'}")
    _check_writable(target.parent, f"{option} {path}", fix)


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
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text(target, text)
    if not quiet:
        print(f"wrote {path}")


def write_text(path: Path, text: str) -> None:
    """`text` into the file `path`, whole or not at all (`replace_whole`); a failed write is
    one line."""
    try:
        replace_whole(path, text)
    except OSError as e:
        raise write_error(str(path), e) from e


def replace_whole(path: Path, text: str) -> None:
    """`text` into the file `path`: written beside it and renamed into place, so that a failed
    write (a full disk) leaves the file that was there, and a reader sees the old file or the
    new one. The temporary file is this call's own: two processes writing one path (two
    `report`s of a run) each rename a whole file, the later one winning."""
    temporary = temporary_beside(path)
    try:
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def copy_file(source: Path, path: Path) -> None:
    """A copy of the file `source` at `path`, whole or not at all, as `replace_whole` writes; a
    failed write is one line."""
    temporary = temporary_beside(path)
    try:
        shutil.copyfile(source, temporary)
        temporary.replace(path)
    except OSError as e:
        temporary.unlink(missing_ok=True)
        raise write_error(str(path), e) from e
    except BaseException:  # Ctrl-C
        temporary.unlink(missing_ok=True)
        raise


def publish_new(temporary: Path, path: Path) -> None:
    """Put the finished file `temporary` at `path` without ever replacing a file there: a hard
    link, which fails with FileExistsError when `path` exists (another program wrote it while
    this one worked); the caller removes `temporary`. On a filesystem without hard links, a
    check and a rename, which a file that comes in between them would not survive."""
    try:
        os.link(temporary, path)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        if path.exists():
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from e
        temporary.replace(path)


def temporary_beside(path: Path) -> Path:
    """A name beside `path` for a temporary file of this call's own (hidden, unique)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.partial")


def disk_full(error: OSError) -> bool:
    """Whether a write failed for want of disk space (or of the user's quota of it)."""
    return error.errno in (errno.ENOSPC, errno.EDQUOT)


def write_error(what: str, error: OSError) -> UserError:
    """The one line for a write that failed: what could not be written, why, what to do."""
    why = error.strerror or str(error)
    if disk_full(error):
        return UserError(f"could not write {what} ({why}): free disk space and run it again")
    return UserError(f"could not write {what} ({why}): make that place writable and run it again")


def _check_writable(folder: Path, what: str, fix: str = "name another place") -> None:
    existing = folder
    while not existing.exists():  # the folders to be made; the root always exists
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what} lies under {existing}, which is a file: {fix}")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise UserError(f"{what} cannot be written ({existing}: {e.strerror or e}): {fix}") from e


def listed(names: list[str], shown: int = 3) -> str:
    """The first `shown` of `names` for a one-line message, and how many more there are."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
