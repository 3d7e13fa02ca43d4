"""Exit statuses and one-line error messages of the ``routevit`` commands.

Every command ends with one of these statuses, as each command's ``--help`` says:

* 0: done;
* 1: the run failed (a non-finite loss, an error inside routevit, torch or a library);
* 2: bad input: a recipe, data folder, checkpoint, image or flag that is not what the command
  expects (:func:`is_bad_input`);
* 128 + N: stopped by signal N (SIGINT: 130, SIGTERM: 143).

What went wrong is one line on stderr, ``routevit CMD: error: ...``, that says what was
expected and what came; no Python traceback unless ``--debug``, and no terminal escape codes
(some libraries colour their messages).
"""

from __future__ import annotations

import linecache
import os
import re
import shutil
import signal
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

OK, FAILED, BAD_INPUT = 0, 1, 2
_PACKAGE = Path(__file__).resolve().parent

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# A DataLoader worker's exception is re-raised with the worker's traceback as its message.
_WORKER = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.")

# ValueError covers routevit's own input errors (recipes, CheckpointMismatchError,
# UnsafeCheckpointError, NotAStateDictError); the OS errors are paths that are not there or not
# what was expected. Other modules add theirs with register_bad_input (e.g. BadImageError).
_BAD_INPUT: list[type[BaseException]] = [
    ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError,
]  # fmt: skip


class Stopped(BaseException):
    """A termination signal arrived while a command ran (see :func:`signals_stop`); like
    ``KeyboardInterrupt`` it is not an ``Exception``, so nothing on the way catches it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


def register_bad_input(*types: type[BaseException]) -> None:
    """Count ``types`` as bad input (exit status 2) as well."""
    _BAD_INPUT.extend(t for t in types if t not in _BAD_INPUT)


def _raised_by_routevit(err: BaseException) -> bool:
    """True when routevit's own code raised ``err`` with a ``raise`` statement (a check of what
    it was given), not Python or a library in the middle of a computation."""
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    path = Path(tb.tb_frame.f_code.co_filename).resolve()
    if _PACKAGE not in path.parents:
        return False
    return linecache.getline(str(path), tb.tb_lineno).strip().startswith("raise")


def is_bad_input(err: BaseException) -> bool:
    """True for an error about what the user gave (status 2), False for a failed run (status 1).

    Bad input: the registered types (ValueError, missing or wrong paths, unreadable images) and
    the TypeErrors routevit raises itself when given the wrong kind of thing (e.g. a vanilla
    model to draw routes of); a TypeError from inside Python or torch is a failed run."""
    return isinstance(err, tuple(_BAD_INPUT)) or (isinstance(err, TypeError) and _raised_by_routevit(err))


def exit_status(err: BaseException) -> int:
    """The status a command ends with after ``err``."""
    if isinstance(err, KeyboardInterrupt):
        return 128 + signal.SIGINT
    if isinstance(err, Stopped):
        return 128 + err.signum
    if isinstance(err, SystemExit):
        return err.code if isinstance(err.code, int) else FAILED
    return BAD_INPUT if is_bad_input(err) else FAILED


def one_line(err: BaseException) -> str:
    """``err``'s message on one line, without terminal escape codes; for an exception re-raised
    from a DataLoader worker, the worker's original message."""
    text = _ANSI.sub("", str(err))
    if _WORKER.match(text):
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        text = re.sub(r"^[\w.]+(Error|Exception): ", "", lines[-1].strip()) if lines else text
    if isinstance(err, KeyError) and text:
        text = f"missing key {text}"
    return " ".join(text.split()) or type(err).__name__


def report(command: str, err: BaseException, debug: bool = False) -> int:
    """Print ``err`` as one line on stderr (after its traceback with ``debug``) and return the
    exit status. ``command`` is e.g. ``"train"``."""
    status = exit_status(err)
    if debug:
        traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
    prefix = f"routevit {command}"
    if isinstance(err, (KeyboardInterrupt, Stopped)):
        signum = status - 128
        print(f"{prefix}: stopped by signal {signum} ({signal.Signals(signum).name})", file=sys.stderr)
    elif status == BAD_INPUT:
        print(f"{prefix}: error: {one_line(err)}", file=sys.stderr)
    else:
        hint = "" if debug else " (--debug shows the traceback)"
        print(f"{prefix}: failed: {type(err).__name__}: {one_line(err)}{hint}", file=sys.stderr)
    sys.stderr.flush()
    return status


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signum)


@contextmanager
def signals_stop() -> Iterator[None]:
    """SIGTERM (and SIGHUP) raise :class:`Stopped` inside the block, so that a command ends with
    128 + N after its ``finally`` clauses ran (the trainer installs its own handlers while it
    trains, which save a checkpoint first). Only in the main thread; restored on exit."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    # a signal the caller ignores (nohup) or handles stays theirs
    wanted = [s for s in wanted if signal.getsignal(s) is signal.SIG_DFL]
    previous = {s: signal.signal(s, _raise_stopped) for s in wanted}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def removed_if_left_empty(folder: str | Path) -> Iterator[None]:
    """A ``folder`` that does not exist before the block and holds no file after it (whatever
    the outcome: a run refused for bad input creates it, then writes nothing) is removed, so
    that a failed command leaves nothing behind. Only rank 0 of a torchrun job removes it."""
    folder = Path(folder)
    existed = folder.exists()
    try:
        yield
    finally:
        left = folder.is_dir() and not any(p.is_file() or p.is_symlink() for p in folder.rglob("*"))
        if not existed and left and os.environ.get("RANK", "0") == "0":
            shutil.rmtree(folder, ignore_errors=True)
