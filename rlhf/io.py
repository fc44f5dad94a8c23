"""Atomic writes: a reader sees the old file or the new one (or the old set of files or the new set), never half
of either."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, TextIO

from rlhf.checkpoint_files import is_disk_full
from rlhf.errors import DataError, RLHFError


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
        return RLHFError(f"no space left on device writing {path}")
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
