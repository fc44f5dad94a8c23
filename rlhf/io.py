"""Atomic writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, TextIO

from rlhf.errors import DataError


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "w") -> Iterator[TextIO]:
    """Yield a file (text, or bytes with mode "wb") that replaces `path` only when the block ends without an exception.

    The temporary file lives in the same directory, so `os.replace` is a rename on one file system and is atomic;
    on an exception it is removed and a file already at `path` is left untouched.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise DataError("output directory does not exist", file=str(path))
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        text = {"encoding": "utf-8", "newline": "\n"} if "b" not in mode else {}
        with os.fdopen(handle, mode, **text) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
            # mkstemp makes the file private (0600); a written file gets what the user's umask gives a new one,
            # so that a team's shared registry and runs can be read by colleagues.
            os.fchmod(file.fileno(), 0o666 & ~current_umask())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as file:
        file.write(text)


def atomic_write_json(path: str | os.PathLike, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def write_jsonl_atomically(path: str | os.PathLike, rows: Iterable[Any]) -> int:
    """Write JSON-ready `rows` as JSON Lines through `atomic_writer`; return how many were written."""
    count = 0
    with atomic_writer(path) as file:
        for row in rows:
            file.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging directory beside `path`; on success it replaces `path` in one rename.

    Readers see the old directory or the new one, never a half-written one (save interrupted, disk full). An
    exception leaves `path` as it was (the old directory, or nothing) and removes the staging directory.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DataError("exists and is not a directory", file=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes it private (0700); the umask's mode instead
        if path.exists():
            retired = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.replace(path, retired / "old")
            os.replace(staging, path)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
