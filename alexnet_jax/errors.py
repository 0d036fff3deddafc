"""User-facing errors: one line saying what is wrong and what to do."""

import errno
import functools
import os
import signal
import sys


class UserError(Exception):
    """A problem the user can fix (bad option, missing data, bad checkpoint): one line."""


def cli(main):
    """Wrap an entry point so that a UserError prints `error: ...` and exits with status 2.

    (Or with the error's own `exit_code`, as an interrupted run does; Ctrl-C outside training's
    own handling exits with 130, the shell's status for it, without a traceback. Running out of
    device memory, which a batch or image too large for the device causes, is one line too,
    with status 1; checkpoints already written are whole, as after any failure. So is a disk
    that fills.)
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        # argparse names the program by sys.argv[0], which `python -m alexnet_jax.train` sets to
        # the file's path ("usage: train.py"): name the command as it is typed instead.
        launched = getattr(sys.modules.get("__main__"), "__spec__", None)
        if main.__module__ == "__main__" and launched is not None:
            sys.argv[0] = f"python -m {launched.name}"
        if not args and "argv" not in kwargs:  # the command line: the shell's words
            sys.argv[1:] = [expand_home(word) for word in sys.argv[1:]]
        try:
            if signal.getsignal(signal.SIGINT) is _stopped_while_starting:
                signal.signal(signal.SIGINT, signal.default_int_handler)  # the command's own
            return main(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(getattr(e, "exit_code", 2))
        except KeyboardInterrupt:  # Ctrl-C before training installs its own handler, or twice
            print("error: stopped by SIGINT", file=sys.stderr)
            # At once: a normal exit waits for the computation in flight on the devices (all of
            # an evaluation). What the command had begun to write was cleaned up on the way
            # here, and a checkpoint cut short is left as a kill leaves it: never in place.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # A disk that filled while a command wrote: its writes are atomic or removed.
            where = f" writing {e.filename}" if e.filename else ""
            print(
                f"error: no space left on the disk{where}: free disk space and run the command "
                "again",
                file=sys.stderr,
            )
            sys.exit(1)
        except Exception as e:
            if not out_of_memory(e):
                raise
            print(
                f"error: the devices ran out of memory ({first_line(e)}): use smaller batches "
                "(--config.batch_size, --config.eval_batch_size, or the command's --batch-size) "
                "or a smaller --config.image_size",
                file=sys.stderr,
            )
            sys.exit(1)

    return wrapper


def stop_quietly_while_starting() -> None:
    """Make Ctrl-C during a command's first seconds, while it imports JAX, exit with one line.

    Python raises KeyboardInterrupt inside whichever import runs: a traceback, or, in one of
    JAX's garbage-collection callbacks, a printed message and no stop at all. Nothing has been
    written yet, so exiting at once loses nothing; `cli` puts Python's handler back when the
    command starts. A Ctrl-C that is ignored (a background job) stays ignored.
    """
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _stopped_while_starting)


def _stopped_while_starting(signum, frame):
    os.write(2, b"error: stopped by SIGINT\n")
    os._exit(130)


def expand_home(word: str) -> str:
    """`--workdir=~/runs` as `--workdir=/home/me/runs`: the shell expands a ~ that begins a word
    (`--workdir ~/runs`), not one after an option's `=`, which made a folder named ~."""
    option, equals, value = word.partition("=")
    if option.startswith("--") and equals and (value == "~" or value.startswith("~/")):
        return f"{option}={os.path.expanduser(value)}"
    return word


def out_of_memory(error: BaseException) -> bool:
    """Whether `error` is XLA's report that an allocation on a device (or the host, for the CPU)
    failed. Told by its type's name and status, so that this module needs no JAX."""
    kind = type(error).__name__
    return kind in ("JaxRuntimeError", "XlaRuntimeError") and "RESOURCE_EXHAUSTED" in str(error)


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type when it has none), for a one-line error."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]
