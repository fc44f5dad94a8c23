"""Atomic writes: a reader sees the old file or the new one (or the old set of files or the new set), never half
of either. A write that finds the disk full is one line naming what it was writing (`disk_full_is_one_line`), which
every atomic write here goes through."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

from rlhf.errors import DataError, RLHFError

# How the writers we call say that the disk is full, besides an OSError's errno: safetensors' SafetensorError and
# torch.save's zip writer ("unexpected pos ... vs ...", "file write failed") carry it in their text alone.
DISK_FULL_WORDS = ("No space left on device", "Disk quota exceeded")
TORCH_ZIP_WRITER_WORDS = ("unexpected pos", "file write failed")


class DiskFullError(RLHFError):
    """A write that ran out of space, named by what it was writing; `cause` is the writer's own error."""

    def __init__(self, path: str | os.PathLike, cause: BaseException):
        self.path, self.cause = Path(path), cause
        super().__init__(
            f"no space left on device writing {path} ({disk_full_detail(cause)}); free space and "
            f"run again (a stage with --resume true continues from its last checkpoint)"
        )


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


def jsonl_lines(rows: Iterable[Any]) -> Iterator[str]:
    """JSON-ready `rows` as lines of JSON Lines."""
    for row in rows:
        yield json.dumps(row, ensure_ascii=False) + "\n"


def write_jsonl_atomically(path: str | os.PathLike, rows: Iterable[Any]) -> int:
    """Write JSON-ready `rows` as JSON Lines through `atomic_writer`; return how many were written."""
    count = 0
    with atomic_writer(path) as file:
        for line in jsonl_lines(rows):
            file.write(line)
            count += 1
    return count


def check_output_file(path: str | os.PathLike) -> None:
    """Refuse, before any work is done, an output path that is a directory (os.replace cannot put a file there)."""
    if Path(path).is_dir():
        raise DataError("is a directory; name a file to write", file=str(path))


def write_files_together(files: Mapping[str | os.PathLike, Iterable[str]]) -> None:
    """Write several files as one: each in full beside its path and flushed to disk, then each renamed into place;
    should a rename fail, the files already renamed get their old contents back.

    Readers see the old set or the new set, never a new file beside another's old one (rankings and their
    quarantine, labeling tasks and their config). A write that fails (a full disk, a read-only directory) is a
    one-line RLHFError naming the file, and leaves every file as it was.
    """
    staged: dict[Path, Path] = {}
    replaced: list[tuple[Path, Path | None]] = []  # (path, a second name of its old file, or None if it had none)
    path = None
    try:
        for path, lines in files.items():
            path = Path(path)
            check_output_file(path)
            staged[path] = path.with_name(f".{path.name}.{os.getpid()}.new")
            with atomic_writer(staged[path]) as file:
                file.writelines(lines)
        for path, staging in staged.items():
            replaced.append((path, _second_name(path)))
            os.replace(staging, path)
    except BaseException as error:
        _put_back(replaced)
        if isinstance(error, DiskFullError):  # named by its staging file: name the file the user asked for
            raise DiskFullError(path, error.cause) from None
        if isinstance(error, OSError):
            raise write_failure(path, error) from None
        raise
    finally:
        for leftover in [*staged.values(), *(old_file for _, old_file in replaced if old_file)]:
            leftover.unlink(missing_ok=True)


def _put_back(replaced: list[tuple[Path, Path | None]]) -> None:
    """Undo renames: each path gets its old file back, or is removed if it had none."""
    for path, old_file in reversed(replaced):
        with contextlib.suppress(OSError):  # nothing more can be done about the disk here; the error says why
            if old_file is None:
                path.unlink(missing_ok=True)
            else:
                os.replace(old_file, path)


def _second_name(path: Path) -> Path | None:
    """A hard link to the file at `path` (a copy where links are not supported), so that it can be put back."""
    if not path.exists():
        return None
    second = path.with_name(f".{path.name}.{os.getpid()}.old")
    second.unlink(missing_ok=True)
    try:
        os.link(path, second)
    except OSError:
        shutil.copy2(path, second)
    return second


def write_failure(path: str | os.PathLike, error: OSError) -> RLHFError:
    """The one-line error for a write to `path` that failed."""
    if is_disk_full(error):
        return DiskFullError(path, error)
    return RLHFError(f"{path}: cannot be written ({error.strerror or type(error).__name__})")


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
