"""One run at a time in a directory: an OS lock on a file inside it, held for the whole run.

    <run_dir>/.run.lock       the pipeline's, while it runs
    <output_dir>/.run.lock    a stage's (global rank 0 takes it for the whole job), while it runs

The lock is `flock`'s, which the kernel drops when its process ends, however it ends: a kill -9 never leaves a
stale lock to clean up. The holder writes its PID and host into the file once it has the lock, and a second run
that finds the directory taken refuses in one line naming them. A stage that the pipeline starts locks its own
output_dir (run_dir/<stage>), another file than the pipeline's, so the two never conflict.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from rlhf.errors import RLHFError
from rlhf.run_files import RUN_LOCK

# What flock says on a file system that keeps no locks (some network mounts): the run goes on, unguarded.
LOCKS_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


class DirectoryInUse(RLHFError):
    """Another process holds the directory's lock."""


@contextlib.contextmanager
def holding(directory: str | os.PathLike, setting: str) -> Iterator[None]:
    """Hold `directory`'s lock for the block, creating the directory if need be; refuse at once, naming the
    holder, when another process holds it. `setting` is the key that chose the directory (run_dir, output_dir)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / RUN_LOCK
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in LOCKS_UNSUPPORTED:
                print(
                    f"warning: cannot lock {path} ({os.strerror(error.errno)}): nothing stops a second run from "
                    f"writing into {directory} at the same time",
                    file=sys.stderr,
                    flush=True,
                )
            elif error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise DirectoryInUse(
                    f"{directory} is in use by another run ({holder(path)}); wait for it to end, "
                    f"or give this run another {setting}"
                ) from None
            else:
                raise
        # The file is never removed: a lock on a file that another process has just unlinked would guard nothing.
        os.ftruncate(descriptor, 0)
        os.pwrite(
            descriptor,
            json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            ).encode()
            + b"\n",
            0,
        )
        yield
    finally:
        os.close(descriptor)  # and with it the lock


def holder(path: Path) -> str:
    """Who holds the lock at `path`, as its holder wrote it."""
    try:
        found = json.loads(path.read_text())
        return f"pid {found['pid']} on host {found['host']}, since {found['since']}"
    except (OSError, ValueError, KeyError, TypeError):  # taken a moment ago, not yet written
        return "a process that has just started"
