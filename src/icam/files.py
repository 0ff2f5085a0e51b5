"""Files written so that no one sees half of one, and folders held while a process writes into them."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

LOCK = ".lock"  # held while a process writes into a folder (a run, an explanation)


def write_atomically(path: Path, write: Callable[[Path], object], suffix: str = ".tmp") -> Path:
    """``write(temporary)`` beside ``path``, then renamed into place: never half a file. When the
    write fails (a full disk) the temporary file goes too, and an OSError names ``path``."""
    temporary = path.with_name(f".{path.name}{suffix}")
    try:
        write(temporary)
        temporary.replace(path)
    except BaseException as e:
        temporary.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename != str(path):  # e.g. numpy's "4096 requested and 468 written"
            raise OSError(e.errno, e.strerror or f"could not be written ({e}; is the disk full?)", str(path)) from e
        raise
    return path


def write_json(path: Path, record: dict) -> Path:
    return write_atomically(path, lambda temporary: temporary.write_text(json.dumps(record, indent=2)))


@contextlib.contextmanager
def folder_lock(folder: Path, busy: str) -> Iterator[None]:
    """Hold ``folder`` while this process writes into it: a second process is refused at once
    with ``busy`` (a FileExistsError), instead of interleaving its files with ours. The lock file
    goes with the holder (released and removed at the end, by the OS when the process dies)."""
    path = Path(folder) / LOCK
    while True:
        handle = path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise FileExistsError(busy) from None
        with contextlib.suppress(FileNotFoundError):  # locked the file still at the path: ours
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                break
        handle.close()  # a holder removed it as we opened it: take the new one
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # before the lock goes: a waiter then retries on a new file
        handle.close()
