"""Atomic writes: a reader sees the old file or the new one, never half of either. A write that finds the disk full
is one line naming what it was writing (`disk_full_is_one_line`), which every atomic write here goes through."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, TextIO

from rlhf.errors import DataError, RLHFError

# How the writers we call say that the disk is full, besides an OSError's errno: safetensors' SafetensorError and
# torch.save's zip writer ("unexpected pos ... vs ...", "file write failed") carry it in their text alone.
DISK_FULL_WORDS = ("No space left on device", "Disk quota exceeded")
TORCH_ZIP_WRITER_WORDS = ("unexpected pos", "file write failed")


class DiskFullError(RLHFError):
    """A write that ran out of space, named by what it was writing; `cause` is the writer's own error."""

    def __init__(self, path: str | os.PathLike, cause: BaseException):
        self.path, self.cause = Path(path), cause
        super().__init__(f"no space left on device writing {path} ({disk_full_detail(cause)}); free space and "
                         f"run again (a stage with --resume true continues from its last checkpoint)")


def is_disk_full(error: BaseException) -> bool:
    """A write that failed for want of space, as the writers report it: an OSError (ENOSPC, EDQUOT), the
    RuntimeError of torch.save's zip writer, or any other error that says so (safetensors')."""
    if isinstance(error, DiskFullError):
        return True
    if isinstance(error, RLHFError):
        return False  # already a message for the user
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(error)
    if isinstance(error, RuntimeError) and any(words in text for words in TORCH_ZIP_WRITER_WORDS):
        return True
    return any(words in text for words in DISK_FULL_WORDS)


def disk_full_detail(error: BaseException) -> str:
    """The writer's own words for a full disk, on one short line."""
    return " ".join(str(getattr(error, "cause", error)).split())[:160]


@contextlib.contextmanager
def disk_full_is_one_line(path: str | os.PathLike) -> Iterator[None]:
    """A write in the block that runs out of space becomes a DiskFullError naming `path`, the one line the user
    sees; an error already meant for the user (an inner write's DiskFullError) passes as it is."""
    try:
        yield
    except RLHFError:
        raise
    except BaseException as error:
        if not is_disk_full(error):
            raise
        raise DiskFullError(path, error) from None


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "w") -> Iterator[TextIO]:
    """Yield a file (text, or bytes with mode "wb") that replaces `path` only when the block ends without an exception.

    The temporary file lives in the same directory, so `os.replace` is a rename on one file system and is atomic;
    on an exception it is removed and a file already at `path` is left untouched.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise DataError("output directory does not exist", file=str(path))
    with disk_full_is_one_line(path):
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            text = {"encoding": "utf-8", "newline": "\n"} if "b" not in mode else {}
            with os.fdopen(handle, mode, **text) as file:
                yield file
                file.flush()
                os.fsync(file.fileno())
                # mkstemp makes the file private (0600); a written file gets what the user's umask gives a new
                # one, so that a team's shared registry and runs can be read by colleagues.
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
    with disk_full_is_one_line(path):
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
