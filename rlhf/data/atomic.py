"""Write a file so that readers see the old content or the new one, never half of the new one."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator, TextIO

from rlhf.errors import DataError


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[TextIO]:
    """Yield a text file that replaces `path` only when the block ends without an exception.

    The temporary file lives in the same directory, so `os.replace` is a rename on one file system and is atomic;
    on an exception it is removed and a file already at `path` is left untouched.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise DataError("output directory does not exist", file=str(path))
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_jsonl_atomically(path: str | os.PathLike, rows) -> int:
    """Write JSON-ready `rows` as JSON Lines through `atomic_writer`; return how many were written."""
    count = 0
    with atomic_writer(path) as file:
        for row in rows:
            file.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count
