"""A disk that fills under one rank of a launcher run, at the worst moment for the others; and, in this process,
under the text files that rlhf.io writes (`writes_fail`).

`install` writes a sitecustomize module that every Python process of the run loads (its folder goes first on
PYTHONPATH). The rank that writes the file named `failing` inside a folder matching `inside` fails part-way,
with ENOSPC, as a full disk under one node would. The rank that writes `watching` into the same folder holds that
write until the partial file appears (it is still to write after the other failed), then watches the folder for a
second and creates the marker file if the folder vanishes under it: a failed rank removed what others write.
"""

from __future__ import annotations

import os
from pathlib import Path

HOOK = """
import errno, os, time
import torch
real_save = torch.save

def save(obj, f, *args, **kwargs):
    path = str(f)
    name, folder = os.path.basename(path), os.path.dirname(path)
    if INSIDE in path and FAILING in name:
        with open(f, "wb") as handle:
            handle.write(b"PK" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    if INSIDE in path and WATCHING in name:
        while os.path.isdir(folder) and not any(FAILING in entry for entry in os.listdir(folder)):
            time.sleep(0.01)
        for _ in range(100):
            if not os.path.isdir(folder):
                open(MARKER, "w").close()
                break
            time.sleep(0.01)
    return real_save(obj, f, *args, **kwargs)
torch.save = save
"""


def install(tmp_path: Path, env: dict, *, inside: str, failing: str, watching: str) -> tuple[dict, Path]:
    """The environment `env` with the hook on its PYTHONPATH, and the marker file that must not appear."""
    hook, marker = tmp_path / "full_disk_hook", tmp_path / "removed_under_another_ranks_write"
    hook.mkdir()
    settings = "".join(
        f"{key} = {value!r}\n"
        for key, value in (("INSIDE", inside), ("FAILING", failing), ("WATCHING", watching), ("MARKER", str(marker)))
    )
    (hook / "sitecustomize.py").write_text(settings + HOOK)
    python_path = os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")]))
    return {**env, "PYTHONPATH": python_path}, marker


def writes_fail(monkeypatch, fragment: str, error: int) -> None:
    """In this process, writes into a file whose path holds `fragment` fail part-way with OSError `error` (ENOSPC:
    as on a full disk). rlhf.io opens its temporary files with os.fdopen, so the failure is met where it writes."""
    real_fdopen = os.fdopen

    class Failing:
        def __init__(self, file):
            self.file = file

        def write(self, text):
            self.file.write(text[: len(text) // 2])
            raise OSError(error, os.strerror(error))

        def writelines(self, lines):
            for line in lines:
                self.write(line)

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.file.__exit__(*exc)

    def fdopen(fd, *args, **kwargs):
        file = real_fdopen(fd, *args, **kwargs)
        return Failing(file) if fragment in os.readlink(f"/proc/self/fd/{fd}") else file

    monkeypatch.setattr(os, "fdopen", fdopen)
