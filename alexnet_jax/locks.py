"""One writer at a time: an operating-system lock on a file that names its holder.

A training holds its run directory (`rundir.hold`, on <run>/train.lock); a command that writes
a folder or a file (sweep, seeds, export, keras_io) holds it with `hold_output`, on a hidden
`.NAME.lock` beside it, from before it checks what is there until its result is in place. A
second writer is refused at once, in one line naming the holder. The lock is the kernel's,
held by the open file: a killed holder leaves no stale lock, only its file, which the next
writer takes over. A holder removes the file when it lets go.
"""

import contextlib
import datetime
import fcntl
import os
import socket
from pathlib import Path

from alexnet_jax.errors import UserError

RUN_LOCK = "train.lock"  # a training's hold on its run directory (rundir.hold)

WAITING = "a process that has not yet said which"


class Lock:
    """An exclusive `flock` on a file, which records who holds it and for what (`purpose`:
    "training", "sweep", ...; `place` names the folder in errors).

    Its holder removes the file when it releases it, so a file that another process opened just
    before is no longer the lock: `acquire` takes a lock only on the file the path names.
    """

    def __init__(self, path: Path, purpose: str = "training", place: str | None = None):
        self.path = Path(path)
        self.purpose = purpose
        self.place = place or str(self.path.parent)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> str | None:
        """Take the lock: None, or a description of its holder when another process has it."""
        missing_folder_tries = 3
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except FileNotFoundError as e:
                # Its folder removed by a holder that had made it, as it let go: made again.
                missing_folder_tries -= 1
                if missing_folder_tries < 0:
                    raise UserError(f"cannot write to {self.place}: {e.strerror}") from e
                self.make_folder()
                continue
            except OSError as e:
                raise UserError(f"cannot write to {self.place}: {e.strerror}") from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return self.holder(self.path)
            except OSError as e:  # a filesystem without locks (ENOLCK, EOPNOTSUPP): go on unlocked
                os.close(fd)
                print(
                    f"warning: cannot lock {self.path} ({e.strerror}): a second {self.purpose} "
                    f"in {self.place} would not be refused",
                    flush=True,
                )
                return None
            if self.names(fd):
                break
            os.close(fd)  # its holder removed it as we took it: the next one is the lock
        started = datetime.datetime.now().isoformat(timespec="seconds")
        holder = f"pid {os.getpid()} on host {socket.gethostname()} since {started}"
        os.ftruncate(fd, 0)
        os.write(fd, f"{holder}\n{self.purpose}\n".encode())
        self._fd = fd
        return None

    def make_folder(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot write to {self.place}: {e.strerror}") from e

    @classmethod
    def held_by_another(cls, path: Path) -> str | None:
        """Who holds the lock on `path`, or None when no process does; takes no lock and
        creates nothing (a shared lock, let go at once, only asks)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:  # no lock file, or none readable: `acquire` will tell
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return cls.holder(path)
        except OSError:  # a filesystem without locks: `acquire` warns
            return None
        finally:
            os.close(fd)  # and with it the shared lock
        return None

    @staticmethod
    def holder(path: Path) -> str:
        """Which process holds the lock on `path` (its first line): pid, host, since when."""
        lines = _read_lines(path)
        return lines[0] if lines else WAITING

    @staticmethod
    def purpose_of(path: Path) -> str | None:
        """What the holder of the lock on `path` holds it for, when it has said so."""
        lines = _read_lines(path)
        return lines[1] if len(lines) > 1 else None

    def names(self, fd: int) -> bool:
        """Whether the path still names the open file `fd`."""
        try:
            return os.path.samestat(os.fstat(fd), os.stat(self.path))
        except FileNotFoundError:
            return False

    def release(self) -> None:
        """Remove the file, then let go of the lock: a finished holder leaves no lock file."""
        if self._fd is not None:
            try:
                self.path.unlink()
            except OSError:  # a folder that allows no removal: emptied, as a sign it is free
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


def _read_lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError):
        return []


def output_lock_path(path: str | Path) -> Path:
    """The lock file of the output `path`: hidden beside it, so that the folder's or the file's
    own checks see nothing of it. Every spelling of one place (relative, absolute, through a
    symbolic link) gets the same one."""
    target = Path(os.path.realpath(path))
    return target.with_name(f".{target.name}.lock")


@contextlib.contextmanager
def hold_output(path: str | Path, purpose: str, option: str):
    """Hold the output `path` (a folder or a file) for one command, or refuse it now.

    Take it before checking what `path` holds and before any data is read: then the checks
    stay true until the result is in place. A second writer is refused in one line naming the
    holder and the option to change (`option`, "--out"). At the end the lock file goes, with
    the folders made for it and `path` itself when it was made here and is an empty folder (a
    command that failed before writing anything leaves nothing).
    """
    lock_path = output_lock_path(path)
    if lock_path.parent.is_dir() and not os.access(lock_path.parent, os.W_OK):
        # A writable folder in one that is not (`--out .` in a shared parent): no room for the
        # lock beside it. Go on, as on a filesystem without locks.
        print(
            f"warning: cannot lock {path} ({lock_path.parent} cannot be written): a second "
            f"{purpose} into it would not be refused",
            flush=True,
        )
        yield
        return
    made = missing_folders(lock_path.parent)
    lock = Lock(lock_path, purpose, place=str(Path(path).parent))
    lock.make_folder()
    holder = lock.acquire()
    if holder is not None:
        remove_empty(made)
        theirs = Lock.purpose_of(lock_path) or "command"
        raise UserError(
            f"{path} is in use by another {theirs} ({holder}): wait for it to end, or pass "
            f"another {option}"
        )
    target = Path(os.path.realpath(path))
    if not target.exists():  # made by the command: removed at the end when still empty
        made.insert(0, target)
    try:
        yield
    finally:
        lock.release()
        remove_empty(made)


def missing_folders(path: Path) -> list[Path]:
    """`path` and the folders above it that do not exist yet, deepest first."""
    return [folder for folder in (path, *path.parents) if not folder.exists()]


def remove_empty(folders: list[Path]) -> None:
    """Remove `folders`, deepest first, up to the first that is not an empty folder (another
    command's output or lock file in it, a result written)."""
    for folder in folders:
        try:
            folder.rmdir()
        except FileNotFoundError:  # never made (an output the command did not write)
            continue
        except OSError:
            return
